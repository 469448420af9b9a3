//! MQTT as state without I/O: what one connection's protocol decides, given packets,
//! deliveries and answers, with time passed in. Nothing here touches a socket, a clock of
//! its own, the runtime or storage, so every rule is a plain unit test.
//!
//! - [`message`]: the routed message and the per-subscriber delivery.
//! - [`handshake`]: CONNECT as a value, answered with the negotiated session or a reason
//!   code.
//! - [`session`]: a connected client's session: QoS flows both ways, the in-flight window
//!   ([`in_flight`]), topic aliases, and what it asks of the broker.
//! - [`catch_up`]: a persistent session's durable queue read back in order, live
//!   deliveries skipped while it is.
//! - [`outgoing`]: the packets a session hands its connection to write.
//! - [`close`]: how the broker ends a connection, and the client's protocol violations.

pub(crate) mod catch_up;
pub(crate) mod close;
pub(crate) mod handshake;
pub(crate) mod in_flight;
pub(crate) mod message;
pub(crate) mod outgoing;
pub(crate) mod session;

pub(crate) use close::{Close, Violation};
pub(crate) use message::{now_ms, Delivery, Message, SessionId, PREFETCH_DISTANCE};
