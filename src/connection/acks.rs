//! The acknowledgements a connection owes its client for QoS > 0 publishes, in the order the
//! publishes arrived [MQTT-4.6.0-2].
//!
//! The router answers a publish at once (it runs on the connection's task); what an
//! acknowledgement may still wait for is the durable writes the message caused. Those
//! resolve in order anyway (one writer), so only the oldest is polled, and every
//! acknowledgement ready at that moment is taken in one go: a burst of answers becomes one
//! write of PUBACKs, not one write each.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tern_codec::{QoS, ReasonCode};
use tern_storage::{Durable, StorageError};

use crate::protocol::close::NOT_STORED;
use crate::router::Routed;

/// One acknowledgement: which packet, and what its reason code waits on.
struct PendingAck<D> {
    packet_id: u16,
    qos: QoS,
    state: AckState<D>,
}

enum AckState<D> {
    /// Decided: refused, answered without routing (`$sync`), or its writes are durable.
    Ready(ReasonCode),
    /// Routed; waiting for the message's durable writes to be synced.
    Durable { matched: bool, durable: D },
}

/// An acknowledgement ready to be sent: (packet id, QoS, reason code).
pub(crate) type Ack = (u16, QoS, ReasonCode);

/// `D` is what an acknowledgement waits for: the writer's [`Durable`] (tests use their
/// own futures, resolved when they choose).
pub(crate) struct AckQueue<D = Durable> {
    pending: VecDeque<PendingAck<D>>,
}

impl<D> Default for AckQueue<D> {
    fn default() -> Self {
        AckQueue {
            pending: VecDeque::new(),
        }
    }
}

impl<D: Future<Output = Result<(), StorageError>> + Unpin> AckQueue<D> {
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// An acknowledgement known now (it still waits behind older ones).
    pub(crate) fn push_ready(&mut self, packet_id: u16, qos: QoS, reason: ReasonCode) {
        self.push(packet_id, qos, AckState::Ready(reason));
    }

    /// An acknowledgement decided by the router's answer, once `durable` resolves.
    pub(crate) fn push_routed(&mut self, packet_id: u16, qos: QoS, routed: Routed, durable: D) {
        let state = match routed.refused {
            Some(reason) => AckState::Ready(reason),
            None => AckState::Durable {
                matched: routed.matched,
                durable,
            },
        };
        self.push(packet_id, qos, state);
    }

    fn push(&mut self, packet_id: u16, qos: QoS, state: AckState<D>) {
        self.pending.push_back(PendingAck {
            packet_id,
            qos,
            state,
        });
    }

    /// Moves every acknowledgement that is ready, oldest first, into `done`, stopping at the
    /// first that is not (whose waker is then registered). `Ready` once at least one moved.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>, done: &mut Vec<Ack>) -> Poll<()> {
        let before = done.len();
        while let Some(front) = self.pending.front_mut() {
            match poll_state(&mut front.state, cx) {
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
    pub(crate) fn take_ready(&mut self, done: &mut Vec<Ack>) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let _ = self.poll_ready(&mut cx, done);
    }
}

/// The reason code of one acknowledgement, once it is decided.
fn poll_state<D: Future<Output = Result<(), StorageError>> + Unpin>(
    state: &mut AckState<D>,
    cx: &mut Context<'_>,
) -> Poll<ReasonCode> {
    match state {
        AckState::Ready(reason) => Poll::Ready(*reason),
        AckState::Durable { matched, durable } => match Pin::new(durable).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                tracing::error!("durable write failed, publish refused: {e}");
                Poll::Ready(NOT_STORED)
            }
            Poll::Ready(Ok(())) if *matched => Poll::Ready(ReasonCode::Success),
            Poll::Ready(Ok(())) => Poll::Ready(ReasonCode::NoMatchingSubscribers),
        },
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    /// A write that resolves when the test sends its result.
    struct Write(oneshot::Receiver<Result<(), StorageError>>);

    impl Future for Write {
        type Output = Result<(), StorageError>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            Pin::new(&mut self.0)
                .poll(cx)
                .map(|result| result.unwrap_or(Err(StorageError::Closed)))
        }
    }

    fn write() -> (oneshot::Sender<Result<(), StorageError>>, Write) {
        let (tx, rx) = oneshot::channel();
        (tx, Write(rx))
    }

    fn routed(matched: bool, refused: Option<ReasonCode>) -> Routed {
        Routed { matched, refused }
    }

    #[test]
    fn acknowledgements_leave_in_arrival_order_whatever_resolves_first() {
        let mut queue = AckQueue::default();
        let (first_tx, first) = write();
        let (second_tx, second) = write();
        queue.push_routed(1, QoS::AtLeastOnce, routed(true, None), first);
        queue.push_ready(2, QoS::AtLeastOnce, ReasonCode::NotAuthorized);
        queue.push_routed(3, QoS::ExactlyOnce, routed(false, None), second);
        let mut done = Vec::new();
        // The third is durable first: nothing may overtake the first.
        assert!(second_tx.send(Ok(())).is_ok());
        queue.take_ready(&mut done);
        assert!(done.is_empty());
        assert!(first_tx.send(Ok(())).is_ok());
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
    fn refusals_and_failed_writes_give_their_reason_codes() {
        let mut queue = AckQueue::default();
        let (_, never) = write();
        let (failed_tx, failed) = write();
        queue.push_routed(
            7,
            QoS::AtLeastOnce,
            routed(false, Some(ReasonCode::QuotaExceeded)),
            never,
        );
        queue.push_routed(8, QoS::AtLeastOnce, routed(true, None), failed);
        assert!(failed_tx.send(Err(StorageError::Closed)).is_ok());
        let mut done = Vec::new();
        queue.take_ready(&mut done);
        assert_eq!(
            done,
            vec![
                (7, QoS::AtLeastOnce, ReasonCode::QuotaExceeded),
                (8, QoS::AtLeastOnce, ReasonCode::ImplementationSpecificError),
            ]
        );
    }

    #[tokio::test]
    async fn a_pending_acknowledgement_wakes_the_connection_when_durable() {
        let mut queue = AckQueue::default();
        let (tx, rx) = write();
        queue.push_routed(9, QoS::AtLeastOnce, routed(true, None), rx);
        let answer = tokio::spawn(async move {
            tokio::task::yield_now().await;
            let _ = tx.send(Ok(()));
        });
        let mut done = Vec::new();
        std::future::poll_fn(|cx| queue.poll_ready(cx, &mut done)).await;
        assert_eq!(done, vec![(9, QoS::AtLeastOnce, ReasonCode::Success)]);
        answer.await.expect("answer task");
    }
}
