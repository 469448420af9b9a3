//! The load scenarios, each a library function returning a [`Report`](crate::Report):
//!
//! - [`fan_in`]: N publishers at full speed into one subscriber on one topic.
//! - [`pairs`]: N publisher/subscriber pairs on distinct topics.
//! - [`fan_out`]: one publisher, N subscribers on the same topic.
//! - [`latency`]: a paced publish rate into one subscriber, for latency percentiles.
//! - [`broadcast_dm()`]: DM latency between two users, without and then during system
//!   broadcasts to thousands of connected users (its own [`BroadcastDmReport`]).

pub mod broadcast_dm;
mod fan_in;
mod fan_out;
mod latency;
mod pairs;

pub use broadcast_dm::{broadcast_dm, BroadcastDmConfig, BroadcastDmReport, PhaseReport};
pub use fan_in::fan_in;
pub use fan_out::fan_out;
pub use latency::latency;
pub use pairs::pairs;
