//! What the client sends: bytes read into the read buffer, decoded in place (payloads stay
//! slices of it) and handed to the session, within the listener's inbound budget (messages
//! and bytes per second: over it, the socket is not read until the budget recovers, so
//! TCP pushes back on the client).

use bytes::BytesMut;
use tern_codec::{decode, Packet};
use tokio::time::Instant;

use super::park::is_heartbeat;
use super::{Connection, ConnectionError, State};
use crate::config::ListenerKind;
use crate::metrics::Metrics;
use crate::net::listener::Endpoint;
use crate::net::rate::TokenBucket;
use crate::protocol::now_ms;
use std::sync::Arc;

/// What one read asks the socket for at most.
pub(super) const READ_BUFFER: usize = 4 * 1024;

/// The listener's per-connection inbound limits (messages and bytes per second).
pub(super) struct InboundBudget {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// Counts each pause once in the metrics.
    paused: bool,
    /// Complete packets were left in the read buffer for the message rate: they are
    /// decoded once it allows, whether or not more input comes.
    pub(super) held: bool,
    metrics: Arc<Metrics>,
    listener: ListenerKind,
}

impl InboundBudget {
    /// `None` when the listener sets no inbound limits.
    pub(super) fn new(endpoint: &Endpoint, metrics: &Arc<Metrics>) -> Option<Box<InboundBudget>> {
        let now = Instant::now();
        let limits = &endpoint.limits;
        let budget = InboundBudget {
            messages: TokenBucket::new(limits.max_inbound_messages_per_sec.into(), now),
            bytes: TokenBucket::new(limits.max_inbound_bytes_per_sec, now),
            paused: false,
            held: false,
            metrics: metrics.clone(),
            listener: endpoint.kind,
        };
        (budget.messages.is_some() || budget.bytes.is_some()).then(|| Box::new(budget))
    }

    /// When reading may resume, if the connection is over its budget.
    pub(super) fn paused_until(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let wait = [&mut self.messages, &mut self.bytes]
            .into_iter()
            .flatten()
            .filter_map(|bucket| bucket.wait(0.0, now))
            .max();
        if wait.is_some() && !self.paused {
            self.metrics.inbound_paused(self.listener);
        }
        self.paused = wait.is_some();
        Some(now + wait?)
    }

    /// Whether the message rate allows another PUBLISH now.
    fn message_allowed(&mut self) -> bool {
        self.messages
            .as_mut()
            .is_none_or(|m| m.wait(0.0, Instant::now()).is_none())
    }
}

impl Connection {
    /// `n` bytes were read into the read buffer: decode them. Returns true once the client
    /// said DISCONNECT.
    pub(super) async fn read_done(&mut self, n: usize) -> Result<bool, ConnectionError> {
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        self.mark_read();
        if is_heartbeat(&self.buffers().rbuf) {
            // A device's keepalive: it goes back to sleep, and so can this connection once
            // it has answered (a resumed one otherwise works on for `idle_park_ms` first,
            // in case a conversation follows).
            self.state = State::Settling;
        }
        self.buffers().traffic.read(n);
        if let Some(bytes) = self.budget_mut().and_then(|b| b.bytes.as_mut()) {
            bytes.spend(n as u64);
        }
        let disconnected = self.take_input().await?;
        if self.buffers().rbuf.is_empty() {
            // Idle again: hold no read buffer while waiting (most of a chat connection's
            // life). Decoded payloads keep their own reference.
            self.buffers().rbuf = BytesMut::new();
        }
        Ok(disconnected)
    }

    /// Decodes what the read buffer holds; once the client said DISCONNECT, handles and
    /// writes what came before it and returns true.
    pub(super) async fn take_input(&mut self) -> Result<bool, ConnectionError> {
        if !self.handle_input().await? {
            return Ok(false);
        }
        self.process_effects().await?;
        self.flush().await?;
        Ok(true)
    }

    /// Decodes every whole frame in the read buffer into the session. Returns true once the
    /// client said DISCONNECT.
    async fn handle_input(&mut self) -> Result<bool, ConnectionError> {
        let max = self.ctx.limits.max_packet_size;
        let now = now_ms();
        if let Some(budget) = self.budget_mut() {
            budget.held = false;
        }
        loop {
            if self.session.inbound_full() {
                // The rest stays buffered until acknowledgements free the window.
                return Ok(false);
            }
            let input_left = self.buffers.as_ref().is_some_and(|b| !b.rbuf.is_empty());
            if let Some(budget) = self.budget_mut() {
                if !budget.message_allowed() {
                    // Over the listener's message rate: the rest waits (see `work`).
                    budget.held = input_left;
                    return Ok(false);
                }
            }
            let protocol = self.session.params().protocol;
            let packet = match decode(&mut self.buffers().rbuf, protocol, max) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(false),
                Err(e) => {
                    self.server_disconnect(e.reason_code(), "malformed packet")
                        .await;
                    return Err(e.into());
                }
            };
            let is_disconnect = matches!(packet, Packet::Disconnect(_));
            if matches!(packet, Packet::Publish(_)) {
                self.buffers().traffic.publish_received();
                if let Some(messages) = self.budget_mut().and_then(|b| b.messages.as_mut()) {
                    messages.spend(1);
                }
            }
            if let Err(violation) = self.session.handle_packet(packet, now) {
                let close = crate::protocol::Close::from(violation);
                self.server_disconnect(close.code, &close.reason).await;
                return Err(violation.into());
            }
            if is_disconnect {
                // Nothing after DISCONNECT counts [MQTT-3.14.4-1].
                return Ok(true);
            }
        }
    }
}
