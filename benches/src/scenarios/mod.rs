//! The load scenarios, each a library function returning a [`Report`](crate::Report):
//!
//! - [`fan_in`]: N publishers at full speed into one subscriber on one topic.
//! - [`pairs`]: N publisher/subscriber pairs on distinct topics.
//! - [`fan_out`]: one publisher, N subscribers on the same topic.
//! - [`latency`]: a paced publish rate into one subscriber, for latency percentiles.
//! - [`broadcast_dm()`]: DM latency between two users, without and then during system
//!   broadcasts to thousands of connected users (its own [`BroadcastDmReport`]).
//!
//! And the scenarios of the side-by-side comparison (`tern-compare`), each with a report of
//! its own:
//!
//! - [`connections()`]: N idle clients: connect rate and broker memory per connection.
//! - [`retained()`]: R retained topics, then timed subscriptions matching few and many.
//! - [`durable`]: steps of QoS 1 to offline persistent sessions, restart and drain.
//! - [`group()`]: one publisher to a tern group whose members are mostly offline.
//! - [`dm_offline`]: many senders' durable DMs to offline receivers.
//! - [`chat()`]: a chat workload (DMs, groups, read receipts, presence, flapping devices).

pub mod broadcast_dm;
pub mod chat;
pub mod connections;
pub mod dm_offline;
pub mod durable;
mod fan_in;
mod fan_out;
pub mod group;
mod latency;
mod pairs;
pub mod retained;

pub use broadcast_dm::{broadcast_dm, BroadcastDmConfig, BroadcastDmReport, PhaseReport};
pub use connections::{connections, ConnectionsConfig, ConnectionsReport, Credentials};
pub use fan_in::fan_in;
pub use fan_out::fan_out;
pub use group::{group, GroupConfig, GroupOutcome};
pub use latency::latency;
pub use pairs::pairs;
pub use retained::{retained, RetainedConfig, RetainedReport};
