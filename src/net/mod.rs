//! The network side of the broker, below any connection's protocol: listeners and their
//! admission limits, the transports MQTT runs over, the token bucket behind the rate
//! limits, and the parking lot where idle connections wait without a task.
//!
//! - [`listener`]: bound sockets and their accept loops, which hand admitted sockets to a
//!   callback (nothing here knows what a connection does).
//! - [`admission`]: connection limits at accept, and the [`admission::Permits`] a
//!   connection holds.
//! - [`transport`]: TCP, TLS, WebSocket and WSS byte streams.
//! - [`rate`]: the token bucket.
//! - [`parking`]: where idle connections wait, watched by one task.

pub(crate) mod admission;
pub(crate) mod listener;
pub(crate) mod parking;
pub(crate) mod rate;
pub mod transport;
