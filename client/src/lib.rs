//! `tern-client`: a Rust client of tern's chat conventions (`docs/chat.md`) over MQTT 5.
//!
//! It logs in (password or token), sends DMs and group messages with a message id and
//! resends them under that id across reconnects until the broker acknowledges them (or
//! `resend_for` passes), receives the user's inbox in seq order with gaps filled by
//! `$sync` and duplicates dropped, keeps a cursor file so a restarted app resumes where it
//! was, and reports read positions, receipts, presence and recalls as typed [`Event`]s.
//!
//! ```no_run
//! use tern_client::{Client, Config, Event};
//!
//! # async fn example() -> Result<(), tern_client::Error> {
//! let config = Config::new("chat.example.com", 1883, "alice", "password or JWT", "alice-phone")
//!     .cursor_file("/var/lib/myapp/alice.cursor");
//! let (client, mut events) = Client::connect(config)?;
//! client.watch_presence("bob").await?;
//! let sent = client.send_dm("bob", "hello").await?;
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message { seq, from, payload, conversation, .. } => {
//!             println!("{from} in {conversation:?}: {payload:?}");
//!             client.read_dm(&from, seq).await?;
//!         }
//!         Event::SendState { local_id, state, .. } if local_id == sent => {
//!             println!("hello is {state:?}");
//!         }
//!         Event::Presence { user, online, .. } => println!("{user} online: {online}"),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Map
//!
//! - [`config`]: what to connect to and the bounds of the client's queues.
//! - [`events`]: the [`Event`]s and the parsing of the broker's topics and payloads.
//! - [`outbox`]: the resend state machine for everything published at QoS 1 (no I/O).
//!   Its docs say why the library, not rumqttc, resends across reconnects.
//! - [`inbox`]: the seq tracker: ordering, duplicates, gaps, `$sync` (no I/O).
//! - [`cursor`]: the cursor file, written atomically.
//! - `client`: the async driver on rumqttc's v5 client: [`Client`], [`Events`].
//!
//! The two state machines take `now` as an argument and are driven entirely by their
//! inputs: their unit tests are the specification of the behaviour. The driver is thin:
//! it moves rumqttc events in and publishes out.
//!
//! # Guarantees and limits
//!
//! - Every message gets [`SendState::Sending`], then [`SendState::Sent`] or
//!   [`SendState::Failed`]; all its attempts carry the same `msgid`, so the broker stores
//!   it once. The outbox lives in memory: messages unacknowledged when the process dies are
//!   neither resent nor reported.
//! - Inbox entries reach the app once each, in seq order. The cursor records what was
//!   handed to [`Events`], at most every `cursor_interval` and at disconnect: after a
//!   crash, the entries since the last write come again (the app keys by seq or id).

pub mod config;
pub mod cursor;
pub mod events;
pub mod inbox;
pub mod outbox;

mod client;

pub use client::{Client, Error, Events};
pub use config::{Config, ConfigError};
pub use cursor::CursorError;
pub use events::{Conversation, Event, SendState};
pub use outbox::{LocalId, OutboxFull, Request};

pub(crate) use events::topic_level_error;
