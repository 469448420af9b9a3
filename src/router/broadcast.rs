//! System broadcasts, fanned out apart from the router so that they cannot hold up chat.
//!
//! Measured before this existed (`tern-bench broadcast-dm`, 19,000 connections): handing one
//! broadcast to every connection at once woke 19,000 connection tasks together, and every
//! direct message arriving meanwhile waited behind them in the runtime's queue (DM p99 from
//! 0.3 ms to 21 ms at one broadcast a second). Three rules keep chat ahead:
//!
//! - the router only matches a broadcast and hands the list of lanes to a fan-out task;
//! - the fan-out task wakes connections in chunks of [`FANOUT_CHUNK`] and yields between
//!   chunks, so that whatever else became runnable (a DM, the router) runs in between;
//! - at most [`MAX_BROADCASTS_IN_FLIGHT`] broadcasts are being fanned out at a time: an
//!   operator publishing faster waits for a permit (its connection stops reading), so
//!   broadcasts never pile up in the router's command queue in front of chat.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use crate::mailbox::{BroadcastLane, Refused};
use crate::message::Delivery;
use crate::metrics::{DropReason, Metrics};

/// Connections woken per step of a fan-out.
pub const FANOUT_CHUNK: usize = 16;
/// Broadcasts fanned out at the same time (the operator's connection waits for a permit).
pub const MAX_BROADCASTS_IN_FLIGHT: usize = 2;

/// Delivers one broadcast to every lane, chunk by chunk; the permit is released at the end.
/// A full lane drops the broadcast for that connection (counted in `metrics`).
pub fn spawn_fan_out(
    lanes: Vec<(BroadcastLane, Delivery)>,
    permit: Option<OwnedSemaphorePermit>,
    metrics: Arc<Metrics>,
) {
    tokio::spawn(async move {
        let mut lanes = lanes.into_iter().peekable();
        while lanes.peek().is_some() {
            for (lane, delivery) in lanes.by_ref().take(FANOUT_CHUNK) {
                if let Err(Refused::Full) = lane.deliver(delivery) {
                    metrics.dropped(DropReason::BroadcastLaneFull);
                }
            }
            tokio::task::yield_now().await;
        }
        drop(permit);
    });
}
