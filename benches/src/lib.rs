//! # tern-bench: load tools for tern
//!
//! A load generator written directly on `tern-codec` over tokio sockets (so the tool is not
//! the bottleneck): one task per client, batched writes, pipelined publishing with a QoS 1
//! window. The `tern-bench` binary (`src/bin/`) runs the [`scenarios`]; they are also
//! library functions returning a [`Report`], used by `tests/smoke.rs`. Criterion
//! benchmarks live in `benches/`.

pub mod broker;
pub mod client;
pub mod cluster;
pub mod compare;
pub mod error;
pub mod failover;
pub mod run;
pub mod scenarios;
pub mod stats;

pub use error::{Error, Result};
pub use run::Options;
pub use scenarios::{BroadcastDmConfig, BroadcastDmReport};
pub use stats::{LatencySummary, Report};
