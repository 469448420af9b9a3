//! The acknowledgements a connection owes its client for QoS > 0 publishes, in the order the
//! publishes arrived [MQTT-4.6.0-2].
//!
//! Each one waits for the router's answer, then for the durable writes the message caused.
//! They resolve in order anyway (one router, one writer), so only the oldest is polled, and
//! every acknowledgement ready at that moment is taken in one go: a burst of answers becomes
//! one write of PUBACKs, not one write each. A plain queue instead of a `FuturesOrdered` of
//! boxed futures: no allocation per publish besides the router's reply channel.

use std::collections::VecDeque;
use std::future::Future;
use std::task::{Context, Poll};

use tern_codec::{QoS, ReasonCode};
use tern_storage::Durable;
use tokio::sync::oneshot;

use crate::router::Routed;

/// One acknowledgement: which packet, and what its reason code waits on.
struct PendingAck {
    packet_id: u16,
    qos: QoS,
    state: AckState,
}

enum AckState {
    /// Decided without the router (refusals, sync requests).
    Ready(ReasonCode),
    /// Waiting for the router's answer.
    Routed(oneshot::Receiver<Routed>),
    /// Routed; waiting for the message's durable writes to be synced.
    Durable { matched: bool, durable: Durable },
}

/// An acknowledgement ready to be sent: (packet id, QoS, reason code).
pub type Ack = (u16, QoS, ReasonCode);

#[derive(Default)]
pub struct AckQueue {
    pending: VecDeque<PendingAck>,
    /// Entries still in [`AckState::Routed`].
    unanswered: usize,
}

impl AckQueue {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether a publish sent to the router's queue has not been seen answered yet (or
    /// its answer has not been looked at: acknowledgements are looked at in order).
    pub fn awaits_router(&self) -> bool {
        self.unanswered > 0
    }

    /// An acknowledgement known now (it still waits behind older ones).
    pub fn push_ready(&mut self, packet_id: u16, qos: QoS, reason: ReasonCode) {
        self.push(packet_id, qos, AckState::Ready(reason));
    }

    /// An acknowledgement decided by the router's answer on `routed`.
    pub fn push_routed(&mut self, packet_id: u16, qos: QoS, routed: oneshot::Receiver<Routed>) {
        self.unanswered += 1;
        self.push(packet_id, qos, AckState::Routed(routed));
    }

    /// An acknowledgement decided by a router answer already in hand (the publish was
    /// routed on the connection's own task: `RouterHandle::try_publish`).
    pub fn push_answered(&mut self, packet_id: u16, qos: QoS, routed: Routed) {
        self.push(packet_id, qos, AckState::answered(routed));
    }

    fn push(&mut self, packet_id: u16, qos: QoS, state: AckState) {
        self.pending.push_back(PendingAck {
            packet_id,
            qos,
            state,
        });
    }

    /// Moves every acknowledgement that is ready, oldest first, into `done`, stopping at the
    /// first that is not (whose waker is then registered). `Ready` once at least one moved.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>, done: &mut Vec<Ack>) -> Poll<()> {
        let before = done.len();
        while let Some(front) = self.pending.front_mut() {
            let was_routed = matches!(front.state, AckState::Routed(_));
            let poll = poll_state(&mut front.state, cx);
            let answered = match poll {
                Poll::Ready(_) => true,
                Poll::Pending => !matches!(front.state, AckState::Routed(_)),
            };
            if was_routed && answered {
                self.unanswered -= 1;
            }
            match poll {
                Poll::Ready(reason) => {
                    done.push((front.packet_id, front.qos, reason));
                    self.pending.pop_front();
                }
                Poll::Pending => break,
            }
        }
        if done.len() > before {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// What is ready right now, without waiting (and without registering a waker that
    /// matters: the next `poll_ready` from the connection's loop registers its own).
    pub fn take_ready(&mut self, done: &mut Vec<Ack>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = self.poll_ready(&mut cx, done);
    }
}

impl AckState {
    /// Where the router's answer leaves an acknowledgement.
    fn answered(routed: Routed) -> AckState {
        match routed.refused {
            Some(reason) => AckState::Ready(reason),
            None => AckState::Durable {
                matched: routed.matched,
                durable: routed.durable,
            },
        }
    }
}

/// Advances one acknowledgement as far as it goes without waiting.
fn poll_state(state: &mut AckState, cx: &mut Context<'_>) -> Poll<ReasonCode> {
    loop {
        match state {
            AckState::Ready(reason) => return Poll::Ready(*reason),
            AckState::Routed(rx) => {
                let routed = match std::pin::Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    // The router is gone without answering.
                    Poll::Ready(Err(_)) => return Poll::Ready(ReasonCode::ServerUnavailable),
                    Poll::Ready(Ok(routed)) => routed,
                };
                *state = AckState::answered(routed);
            }
            AckState::Durable { matched, durable } => {
                return match std::pin::Pin::new(durable).poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => {
                        tracing::error!("durable write failed, publish refused: {e}");
                        Poll::Ready(ReasonCode::ImplementationSpecificError)
                    }
                    Poll::Ready(Ok(())) if *matched => Poll::Ready(ReasonCode::Success),
                    Poll::Ready(Ok(())) => Poll::Ready(ReasonCode::NoMatchingSubscribers),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(matched: bool, refused: Option<ReasonCode>) -> Routed {
        Routed {
            matched,
            durable: Durable::ready(),
            refused,
        }
    }

    #[test]
    fn acknowledgements_leave_in_arrival_order_whatever_resolves_first() {
        let mut queue = AckQueue::default();
        let (first_tx, first) = oneshot::channel();
        let (second_tx, second) = oneshot::channel();
        queue.push_routed(1, QoS::AtLeastOnce, first);
        queue.push_ready(2, QoS::AtLeastOnce, ReasonCode::NotAuthorized);
        queue.push_routed(3, QoS::ExactlyOnce, second);
        let mut done = Vec::new();
        // The third is answered first: nothing may overtake the first.
        assert!(second_tx.send(routed(false, None)).is_ok());
        queue.take_ready(&mut done);
        assert!(done.is_empty());
        assert!(first_tx.send(routed(true, None)).is_ok());
        queue.take_ready(&mut done);
        assert_eq!(
            done,
            vec![
                (1, QoS::AtLeastOnce, ReasonCode::Success),
                (2, QoS::AtLeastOnce, ReasonCode::NotAuthorized),
                (3, QoS::ExactlyOnce, ReasonCode::NoMatchingSubscribers),
            ]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn awaits_the_router_until_every_routed_answer_is_seen() {
        let mut queue = AckQueue::default();
        assert!(!queue.awaits_router());
        let (first_tx, first) = oneshot::channel();
        let (_, gone) = oneshot::channel::<Routed>();
        let (third_tx, third) = oneshot::channel();
        queue.push_routed(1, QoS::AtLeastOnce, first);
        queue.push_routed(2, QoS::AtLeastOnce, gone);
        queue.push_routed(3, QoS::AtLeastOnce, third);
        // An answer in hand (routed on the connection's task) awaits nothing.
        queue.push_answered(4, QoS::AtLeastOnce, routed(true, None));
        let mut done = Vec::new();
        // The third is answered, but its answer is looked at only after the first's.
        assert!(third_tx.send(routed(true, None)).is_ok());
        queue.take_ready(&mut done);
        assert!(done.is_empty());
        assert!(queue.awaits_router());
        assert!(first_tx.send(routed(true, None)).is_ok());
        queue.take_ready(&mut done);
        assert_eq!(done.len(), 4, "the vanished router's answer counts as seen");
        assert!(!queue.awaits_router());
    }

    #[test]
    fn refusals_and_a_vanished_router_give_their_reason_codes() {
        let mut queue = AckQueue::default();
        let (refused_tx, refused) = oneshot::channel();
        let (_, gone) = oneshot::channel::<Routed>();
        queue.push_routed(7, QoS::AtLeastOnce, refused);
        queue.push_routed(8, QoS::AtLeastOnce, gone);
        assert!(refused_tx
            .send(routed(false, Some(ReasonCode::QuotaExceeded)))
            .is_ok());
        let mut done = Vec::new();
        queue.take_ready(&mut done);
        assert_eq!(
            done,
            vec![
                (7, QoS::AtLeastOnce, ReasonCode::QuotaExceeded),
                (8, QoS::AtLeastOnce, ReasonCode::ServerUnavailable),
            ]
        );
    }

    #[tokio::test]
    async fn a_pending_acknowledgement_wakes_the_connection_when_answered() {
        let mut queue = AckQueue::default();
        let (tx, rx) = oneshot::channel();
        queue.push_routed(9, QoS::AtLeastOnce, rx);
        let answer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(routed(true, None));
        });
        let mut done = Vec::new();
        std::future::poll_fn(|cx| queue.poll_ready(cx, &mut done)).await;
        assert_eq!(done, vec![(9, QoS::AtLeastOnce, ReasonCode::Success)]);
        answer.await.expect("answer task");
    }
}
