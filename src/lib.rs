//! # tern: an MQTT broker for instant messaging
//!
//! The broker library behind the `tern` binary. The wire format lives in the `tern-codec`
//! crate, durable state in `tern-storage`. The broker itself (sessions, routing, the IM layer)
//! is built on top of them; see the issues in the tracker for what lands when.
//!
//! - [`cli`]: the command line of the `tern` binary.

pub mod cli;
