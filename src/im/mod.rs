//! The IM layer: users, their devices and inboxes, direct and group messages, sync.
//!
//! MQTT carries the bytes; this layer gives topics their chat meaning (see [`topics`] for
//! the scheme). The parts, each without I/O so they are tested alone:
//!
//! - [`auth`]: who a connecting client is (argon2id-checked user names, anonymous policy);
//! - [`topics`]: every rule a topic's name carries (`dm/`, `group/`, `inbox/`,
//!   `broadcast/`, `$sync`, `$SYS`);
//! - [`acl`]: who may publish and subscribe where (nobody reads another user's inbox,
//!   nobody but the broker writes into one), and where a will may go;
//! - [`directory`]: operator changes to users and groups, and the in-memory group table;
//! - [`dedup`]: the (sender, msgid) window that drops a client's resends;
//! - [`ids`]: time-ordered message ids, so retention by age is one range deletion;
//! - [`inbox`]: the stored form of a chat message and each recipient's copy of it;
//! - [`sync`]: what a `$sync` request replays;
//! - [`reads`]: read positions, receipts and chat settings;
//! - [`recall`]: what recalling a message changes;
//! - [`presence`]: when a user's presence changes, debounced.
//!
//! The router (`router::chat`) turns a chat publish into inbox entries: the payload is
//! stored once under its message id, and each recipient user gets an entry in their inbox
//! log under the next per-user sequence number, and a delivery on their inbox topic with
//! user properties `seq`, `id` and `from`. The chat conventions clients follow are in
//! docs/chat.md.

pub mod acl;
pub mod auth;
pub mod dedup;
pub mod directory;
pub mod ids;
pub mod inbox;
pub mod presence;
pub mod reads;
pub mod recall;
pub mod sync;
pub mod topics;
