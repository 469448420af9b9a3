//! System broadcasts, fanned out apart from the router so that they cannot hold up chat.
//!
//! Handing one broadcast to every connection at once would wake every connection task
//! together, and each direct message arriving meanwhile would wait behind all of them in
//! the runtime's queue. Three rules keep chat ahead:
//!
//! - the router only matches a broadcast; a fan-out task hands it to the connections;
//! - the fan-out task wakes connections in chunks of [`FANOUT_CHUNK`] and yields between
//!   chunks, so that whatever else became runnable (a DM) runs in between;
//! - at most [`MAX_BROADCASTS_IN_FLIGHT`] broadcasts are being fanned out at a time: an
//!   operator publishing faster waits for a permit (its connection stops reading), so
//!   broadcasts never pile up in front of chat.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::mailbox::{BroadcastLane, NotDelivered};
use crate::metrics::{DropReason, Metrics};
use crate::protocol::Delivery;

/// Connections woken per step of a fan-out.
pub(super) const FANOUT_CHUNK: usize = 16;
/// Broadcasts fanned out at the same time (the operator's connection waits for a permit).
pub(crate) const MAX_BROADCASTS_IN_FLIGHT: usize = 2;

/// One broadcast on its way to every connection subscribed to it.
pub(crate) struct FanOut {
    pub(super) lanes: Vec<(BroadcastLane, Delivery)>,
    /// Released once every lane has it (`None` for an operator's will).
    pub(super) permit: Option<OwnedSemaphorePermit>,
}

impl FanOut {
    /// Delivers the broadcast to every lane, chunk by chunk, on a task of its own. A full
    /// lane drops the broadcast for that connection (counted in `metrics`).
    pub(super) fn spawn(self, metrics: Arc<Metrics>) {
        let FanOut { lanes, permit } = self;
        tokio::spawn(async move {
            let mut lanes = lanes.into_iter().peekable();
            while lanes.peek().is_some() {
                for (lane, delivery) in lanes.by_ref().take(FANOUT_CHUNK) {
                    if let Err(NotDelivered::Full) = lane.deliver(delivery) {
                        metrics.dropped(DropReason::BroadcastLaneFull);
                    }
                }
                tokio::task::yield_now().await;
            }
            drop(permit);
        });
    }
}
