//! Drives one client connection: socket I/O, the CONNECT handshake, keepalive, and the glue
//! between the session state machine (`session.rs`), the router and storage.
//!
//! The task reads frames into one buffer and decodes them in place (payloads stay slices of
//! it), feeds them to the [`Session`], and writes what the session wants sent. Deliveries
//! come from the router over a bounded channel. For a persistent session, QoS > 0 messages
//! also sit in its durable queue: after a reconnect, or when the channel overflowed, the
//! connection reads them back from storage in pages ("backlog") before taking live
//! deliveries again, so order is kept and memory stays bounded.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arcstr::ArcStr;
use bytes::BytesMut;
use rustc_hash::FxHashSet;
use tern_codec::{
    decode, ByteString, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, Protocol,
    QoS, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use tern_storage::{Op, QueueState, StorageError, Store, Writer};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::ack_queue::{Ack, AckQueue};
use crate::config::{limit_u32, Config, ListenerKind};
use crate::im::acl::{check_filter, FilterDecision};
use crate::im::auth::{authenticate, AuthError, Credentials, Identity};
use crate::im::inbox::{for_recipient, parse_sync_request, sync_end};
use crate::im::topics::{classify, Address};
use crate::listener::{Endpoint, Permits};
use crate::mailbox::{Mail, Mailbox, BROADCAST_LANE};
use crate::message::{now_ms, Delivery, Message, PREFETCH_DISTANCE};
use crate::metrics::{DropReason, LatencyTally, Metrics, PublishRefusal, RefuseReason, Traffic};
use crate::outgoing::Transmit;
use crate::parking::{Parked, ParkingLot};
use crate::rate::TokenBucket;
use crate::router::{
    Attached, ChatPublish, CloseReason, Command, ConnId, ConnectRequest, RouterHandle, WillRequest,
};
use crate::session::{Close, Effect, Session, SessionLimits, SessionParams};
use crate::transport::{upgrade, Stream};

/// What every connection shares.
pub struct Context {
    pub config: Config,
    pub router: RouterHandle,
    pub writer: Writer,
    /// Permits for system broadcasts being fanned out (`router::MAX_BROADCASTS_IN_FLIGHT`).
    pub broadcasts: Arc<tokio::sync::Semaphore>,
    /// The broker's counters (see `crate::metrics`).
    pub metrics: Arc<Metrics>,
    /// Where idle connections wait without a task (see `crate::parking`).
    pub lot: ParkingLot,
    /// When the broker started: connections keep their times as ms since then.
    pub started: Instant,
    /// What every session may do, from `[limits]`.
    pub session_limits: Arc<SessionLimits>,
}

impl Context {
    /// The part of `[limits]` that sessions enforce themselves.
    pub fn session_limits(limits: &crate::config::Limits) -> SessionLimits {
        SessionLimits {
            receive_maximum_in: limits.max_inflight,
            topic_alias_maximum_in: limits.max_topic_aliases,
            max_queued_messages: limit_u32(limits.max_queued_messages),
            max_queued_bytes: limit_u32(limits.max_queued_bytes),
            max_topic_levels: limit_u32(limits.max_topic_levels),
        }
    }

    /// `at` in ms since the broker started (0 for an earlier instant).
    pub fn millis_since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }
}

/// Why a connection ended, for the log.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet: {0}")]
    Decode(#[from] DecodeError),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("handshake: {0}")]
    Handshake(std::io::Error),
    #[error("first packet was {0}, not CONNECT")]
    NotConnect(&'static str),
    #[error("CONNECT refused: {0:?}")]
    Refused(ReasonCode),
    #[error("closed by the broker: {} ({:?})", .0.why, .0.reason)]
    Closed(Close),
    #[error("closed by the broker: {} ({:?})", .0.why, .0.code)]
    ClosedBy(CloseReason),
    #[error("the broker is stopping")]
    RouterGone,
    #[error("storage: {0}")]
    Storage(String),
}

impl From<crate::router::RouterGone> for ConnectionError {
    fn from(_: crate::router::RouterGone) -> Self {
        ConnectionError::RouterGone
    }
}

/// Retained messages a subscription's matches are written in batches of, while the rest are
/// still being encoded.
const RETAINED_WRITE_BATCH: usize = 256;

const READ_BUFFER: usize = 4 * 1024;
/// First write buffer of a busy connection (it grows as needed; an idle one holds none).
const WRITE_BUFFER: usize = 4 * 1024;
/// First read buffer of a connection, for its CONNECT.
const CONNECT_BUFFER: usize = 512;
/// The least time a peer gets to accept written bytes before it is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Storage pages read per backlog refill.
const BACKLOG_PAGE: usize = 256;

/// A socket the listener accepted, handed to [`serve`] in one box: an async fn keeps its
/// arguments for its whole life, and this one lives as long as the connection.
pub struct Accepted {
    /// Non-blocking, not registered with the runtime's I/O driver.
    pub stream: std::net::TcpStream,
    pub endpoint: Arc<Endpoint>,
    pub ctx: Arc<Context>,
    /// The connection's places under the connection limits, held until it ends, and its
    /// peer's address.
    pub permits: Permits,
}

/// Serves one accepted socket until it closes: the listener's handshakes (TLS, WebSocket)
/// and the CONNECT must both arrive within `limits.connect_timeout_secs`.
pub async fn serve(accepted: Box<Accepted>) {
    let _ = accepted.stream.set_nodelay(true);
    let peer = accepted.permits.peer();
    let ctx = accepted.ctx.clone();
    // The task's size is that of its largest state, for the connection's whole life:
    // so everything before CONNACK (TLS and WebSocket handshakes, CONNECT, login, the
    // router call) runs in a box freed once the connection is accepted.
    let result = match Box::pin(accept(accepted)).await {
        Ok(connection) => connection.run().await,
        Err(e) => Err(e),
    };
    let refused = match &result {
        Err(ConnectionError::ConnectTimeout(_)) => Some(RefuseReason::ConnectTimeout),
        Err(ConnectionError::Handshake(_) | ConnectionError::NotConnect(_)) => {
            Some(RefuseReason::Protocol)
        }
        Err(ConnectionError::Refused(code)) => Some(RefuseReason::from_connack(*code)),
        _ => None,
    };
    if let Some(reason) = refused {
        ctx.metrics.connect_refused(reason);
    }
    log_end(peer, &result);
}

/// The most a parked connection's socket is read for a heartbeat answered in place
/// ([`Parked::answer_in_place`]): a few PINGREQs, 2 bytes each.
const HEARTBEAT_READ: usize = 32;

/// As many PINGRESPs (0xD0 0x00) as PINGREQs fit in [`HEARTBEAT_READ`].
const PINGRESPS: [u8; HEARTBEAT_READ] = {
    let mut answer = [0u8; HEARTBEAT_READ];
    let mut i = 0;
    while i < HEARTBEAT_READ {
        answer[i] = 0xD0;
        i += 2;
    }
    answer
};

/// Whether the input waiting is PINGREQs and nothing else (a PINGREQ is always the two
/// bytes 0xC0 0x00).
fn is_heartbeat(input: &[u8]) -> bool {
    !input.is_empty() && input.len() % 2 == 0 && input.chunks(2).all(|p| p == [0xC0, 0x00])
}

fn log_end(peer: SocketAddr, result: &Result<(), ConnectionError>) {
    match result {
        Ok(()) => {}
        Err(e @ (ConnectionError::ConnectTimeout(_) | ConnectionError::Handshake(_))) => {
            tracing::debug!(%peer, "connection ended before CONNECT: {e}")
        }
        Err(e) => tracing::debug!(%peer, "connection ended: {e}"),
    }
}

/// From the accepted socket to CONNACK: the upgrade, CONNECT, and [`Connection::handshake`].
async fn accept(accepted: Box<Accepted>) -> Result<Box<Connection>, ConnectionError> {
    let Accepted {
        stream,
        endpoint,
        ctx,
        permits,
    } = *accepted;
    let max_packet = ctx.config.limits.max_packet_size as usize;
    let timeout = Duration::from_secs(ctx.config.limits.connect_timeout_secs);
    let deadline = Instant::now() + timeout;
    let mut stream = if endpoint.upgrade.is_plain() {
        Stream::detached(stream)
    } else {
        let stream = TcpStream::from_std(stream)?;
        // Boxed: the TLS and WebSocket handshake state is several KB, which plain TCP
        // connections need not allocate.
        let handshake = Box::pin(upgrade(stream, &endpoint.upgrade));
        match tokio::time::timeout_at(deadline, handshake).await {
            Err(_) => return Err(ConnectionError::ConnectTimeout(timeout)),
            Ok(result) => result.map_err(ConnectionError::Handshake)?,
        }
    };
    // Most CONNECTs are well under this; a larger one grows the buffer.
    let mut rbuf = BytesMut::new();
    let connect =
        match tokio::time::timeout_at(deadline, read_connect(&mut stream, &mut rbuf, max_packet))
            .await
        {
            Err(_) => return Err(ConnectionError::ConnectTimeout(timeout)),
            Ok(Err(ConnectionError::Decode(DecodeError::UnsupportedProtocolVersion(level)))) => {
                // The spec's answer to an unknown level is a 3.1.1-format CONNACK 0x01
                // [MQTT-3.1.2-2]; MQTT 5 clients read the same byte as 0x84's older form.
                let nack = ConnAck {
                    session_present: false,
                    code: ReasonCode::UnsupportedProtocolVersion,
                    properties: Properties::default(),
                };
                let _ = write_packets(&mut stream, Protocol::V311, [Packet::ConnAck(nack)]).await;
                return Err(DecodeError::UnsupportedProtocolVersion(level).into());
            }
            Ok(result) => result?,
        };
    Connection::handshake(
        connect,
        Link {
            stream,
            endpoint,
            permits,
        },
        rbuf,
        ctx,
    )
    .await
}

async fn read_connect(
    stream: &mut Stream,
    rbuf: &mut BytesMut,
    max_packet: usize,
) -> Result<Box<Connect>, ConnectionError> {
    loop {
        // CONNECT carries its own protocol level; the one passed here is not used for it.
        if let Some(packet) = decode(rbuf, Protocol::V5, max_packet)? {
            return match packet {
                Packet::Connect(connect) => Ok(connect),
                other => Err(ConnectionError::NotConnect(other.name())),
            };
        }
        if stream.read(rbuf, CONNECT_BUFFER).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

async fn write_packets(
    stream: &mut Stream,
    protocol: Protocol,
    packets: impl IntoIterator<Item = Packet>,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    for packet in packets {
        packet
            .encode(protocol, &mut buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    }
    stream.write_all(&buf).await
}

/// The deliveries one wakeup takes: the time, read once for them, and their
/// publish-to-deliver latencies, added to the metrics together at the end.
struct Batch {
    at: std::time::Instant,
    ms: u64,
    latencies: LatencyTally,
}

impl Batch {
    fn start() -> Batch {
        Batch {
            at: std::time::Instant::now(),
            ms: now_ms(),
            latencies: LatencyTally::default(),
        }
    }
}

/// Reading the durable queue of a persistent session, from `next` up to `upto`.
struct Backlog {
    upto: u64,
}

/// The socket of a connection and where it came from.
struct Link {
    stream: Stream,
    endpoint: Arc<Endpoint>,
    permits: Permits,
}

/// The listener's per-connection inbound limits (messages and bytes per second).
struct InboundBudget {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// Counts each pause once in the metrics.
    paused: bool,
    /// Complete packets were left in the read buffer for the message rate: they are
    /// decoded once it allows, whether or not more input comes.
    held: bool,
    metrics: Arc<Metrics>,
    listener: ListenerKind,
}

impl InboundBudget {
    fn new(endpoint: &Endpoint, metrics: &Arc<Metrics>) -> Option<Box<InboundBudget>> {
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
    fn paused_until(&mut self) -> Option<Instant> {
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
}

/// What woke an idle connection (see [`Connection::serve`]).
enum Event {
    Mail(Mail),
    Read(std::io::Result<usize>),
    /// The inbound rate limit's pause is over.
    Resume,
    AcksDone,
    /// The keepalive deadline, or the time to see whether the connection can park.
    Timer,
}

/// Why [`Connection::serve`] returned.
enum Stop {
    /// The client said DISCONNECT.
    Disconnected,
    /// Idle: the connection goes to the parking lot, its task ends.
    Park,
}

/// Where [`Connection::settle`] left the connection.
enum Settled {
    /// Waiting for the next event.
    Idle,
    /// More to do before waiting (a backlog page or a resync was taken in).
    Again,
    /// The client said DISCONNECT.
    Disconnected,
}

struct Connection {
    ctx: Arc<Context>,
    /// The socket; detached from the runtime while the connection is parked.
    stream: Stream,
    /// The listener that accepted it (for the logs).
    listener: ListenerKind,
    /// Its places under the listener's limits, and where it comes from.
    permits: Permits,
    /// What only a working connection needs: `None` while parked (see [`Io`]).
    io: Option<Box<Io>>,
    client_id: ArcStr,
    conn_id: ConnId,
    session: Session,
    /// How long the client may be silent: 1.5 times its keep alive, in ms (`None`: no
    /// limit). A u32, not a `Duration`: every idle connection carries it.
    keep_alive_ms: Option<NonZeroU32>,
    /// When the client last sent something (or reading last resumed after a pause), in
    /// eighths of a second since `ctx.started`, rounded up (see [`ReadClock`]).
    last_read: ReadClock,
    /// Something happened since the timer was last armed: not idle, do not park.
    busy: bool,
    /// Parks at its first idle moment, without waiting `idle_park_ms`: a new connection
    /// (typically quiet for a while), or a parked one woken only by a heartbeat.
    park_at_once: bool,
    /// The socket is in the parking lot's epoll set from an earlier park (see
    /// `crate::parking::Sockets`).
    in_lot_set: bool,
    /// What the router hands this connection: chat deliveries, broadcasts, a close order.
    mailbox: Mailbox,
    /// The router's close order has been taken: the connection is ending.
    closing: bool,
    /// A command this connection put in the router's queue may not have been handled
    /// yet, and no answer will tell (a QoS 0 publish): its publishes keep to the queue
    /// (see `RouterHandle::try_publish`) until an answered command follows it.
    queue_unconfirmed: bool,
    /// The authenticated user (see `crate::im::auth::Identity`; kept as its parts, so
    /// that the flag packs with the connection's other flags).
    user: ArcStr,
    /// May publish to `broadcast/...`.
    operator: bool,
    /// What few connections carry (`None` when all of it is empty).
    extras: Option<Box<Extras>>,
    /// One past the highest durable queue position handed to the session.
    next_stored: u64,
    /// DISCONNECT received: the will is not published (unless 0x04 asked for it).
    clean_exit: bool,
}

/// A time since the broker started, in eighths of a second rounded up: 4 bytes that hold
/// 17 years, after which it reads as unknown (keepalive is then not enforced, rather than
/// enforced on everyone at once). Every connection carries its last input's time; the
/// parking lot checks keepalive deadlines every 250 ms anyway, so a deadline that comes
/// up to 125 ms late (never early) changes nothing a client can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReadClock(u32);

impl ReadClock {
    const TICK_MS: u64 = 125;

    fn at(ms_since_start: u64) -> ReadClock {
        let ticks = ms_since_start.div_ceil(Self::TICK_MS);
        ReadClock(u32::try_from(ticks).unwrap_or(u32::MAX))
    }

    /// `None` once the clock has reached its end.
    fn since_start(self) -> Option<Duration> {
        (self.0 != u32::MAX).then(|| Duration::from_millis(u64::from(self.0) * Self::TICK_MS))
    }
}

/// The state of a connection that most connections never have, boxed: 72 bytes every
/// idle connection would otherwise carry.
#[derive(Default)]
struct Extras {
    /// A resumed session's durable queue, still to be read.
    backlog: Option<Backlog>,
    /// Positions the previous connection sent unacknowledged: resent with DUP.
    sent_before: FxHashSet<u64>,
    will: Option<WillRequest>,
    /// The Session Expiry Interval a v5 DISCONNECT set.
    expiry_override: Option<u32>,
    /// `None` when the listener sets no inbound rate limits.
    budget: Option<Box<InboundBudget>>,
}

impl Extras {
    fn is_empty(&self) -> bool {
        self.backlog.is_none()
            && self.budget.is_none()
            && self.sent_before.is_empty()
            && self.will.is_none()
            && self.expiry_override.is_none()
    }

    /// What `Connection::extras` holds: nothing (no allocation) when there is nothing.
    fn boxed_unless_empty(self) -> Option<Box<Extras>> {
        (!self.is_empty()).then(|| Box::new(self))
    }
}

/// The buffers and counters of a connection at work. All of them are empty when it parks,
/// so a parked connection drops them (160 bytes) and a woken one allocates them again.
#[derive(Default)]
struct Io {
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Traffic counted since it was last added to `ctx.metrics` (once per loop iteration).
    traffic: Traffic,
    /// PUBLISH packets encoded into `wbuf` and not yet written.
    publishes_queued: u64,
    acks: AckQueue,
    /// Acknowledgements taken from `acks`, on their way to the session (kept for its capacity).
    acks_done: Vec<Ack>,
}

impl Parked for Connection {
    fn poll_wake(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.mailbox.poll_waiting(cx)
    }

    fn socket(&self) -> Option<RawFd> {
        // Only plain TCP parks (see `park_after`), detached from the runtime.
        self.stream.detached_fd()
    }

    fn answer_in_place(&mut self) -> bool {
        // Under an inbound rate limit, reading is the connection's own loop's business.
        if self.budget().is_some() {
            return false;
        }
        let mut input = [0u8; HEARTBEAT_READ];
        let n = match self.stream.read_detached(&mut input) {
            Ok(Some(n)) if n > 0 => n,
            // Nothing after all: stay parked.
            Ok(None) => return true,
            // End of stream or an error: the connection finds it again and ends.
            Ok(Some(_)) | Err(_) => return false,
        };
        self.mark_read();
        self.ctx.metrics.add_received(0, n as u64);
        let input = &input[..n];
        // Less than the buffer: all the socket had (a full buffer could be a longer packet
        // that merely starts with PINGREQs).
        if n < HEARTBEAT_READ && is_heartbeat(input) {
            let answer = &PINGRESPS[..n];
            let written = self.stream.write_detached(answer).unwrap_or(0);
            self.ctx.metrics.add_sent(0, written as u64);
            self.ctx.metrics.heartbeats_in_place((n / 2) as u64);
            if written == n {
                return true;
            }
            // The socket is full or failing: the connection writes the rest, or finds the
            // error.
            self.io().wbuf.extend_from_slice(&answer[written..]);
            return false;
        }
        // Anything else is the connection's work: it starts from what was read.
        self.io().rbuf.extend_from_slice(input);
        false
    }

    fn in_lot_set(&self) -> bool {
        self.in_lot_set
    }

    fn set_in_lot_set(&mut self, in_set: bool) {
        self.in_lot_set = in_set;
    }

    fn deadline(&self) -> Option<Instant> {
        self.keepalive_deadline()
    }

    fn resume(self: Box<Self>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            let peer = self.permits.peer();
            let result = self.run().await;
            log_end(peer, &result);
        })
    }
}

impl Connection {
    /// Validates CONNECT, attaches the session through the router and sends CONNACK.
    async fn handshake(
        connect: Box<Connect>,
        link: Link,
        rbuf: BytesMut,
        ctx: Arc<Context>,
    ) -> Result<Box<Connection>, ConnectionError> {
        let Link {
            mut stream,
            endpoint,
            permits,
        } = link;
        let peer = permits.peer();
        let limits = &ctx.config.limits;
        let protocol = connect.protocol;
        let props = &connect.properties;
        let refuse = |code: ReasonCode| ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        };
        let refusal =
            if connect.client_id.is_empty() && protocol == Protocol::V311 && !connect.clean_start {
                // 3.1.1: an empty client ID needs a clean session [MQTT-3.1.3-8].
                Some(ReasonCode::ClientIdentifierNotValid)
            } else if props.authentication_method.is_some() {
                Some(ReasonCode::BadAuthenticationMethod)
            } else {
                None
            };
        if let Some(code) = refusal {
            write_packets(&mut stream, protocol, [Packet::ConnAck(refuse(code))]).await?;
            return Err(ConnectionError::Refused(code));
        }

        let mut connack_props = Properties::default();
        // One `ArcStr` that the router's session shares (a `Bytes` copy would be two
        // allocations once cloned). Copied either way: the decoded string is a slice of
        // the read buffer, and keeping it for the connection's life would keep the whole
        // buffer allocated.
        let client_id: ArcStr = if connect.client_id.is_empty() {
            let id = format!("tern-{:016x}", rand_id());
            if protocol == Protocol::V5 {
                connack_props.assigned_client_identifier = Some(ByteString::from(id.as_str()));
            }
            ArcStr::from(id)
        } else {
            ArcStr::from(&*connect.client_id)
        };
        let identity = match login(&ctx, &endpoint, &connect, &client_id).await {
            Ok(identity) => identity.sharing_name_with(&client_id),
            Err(e) => {
                let code = match e {
                    AuthError::BadCredentials => ReasonCode::BadUserNameOrPassword,
                    AuthError::NotAuthorized => ReasonCode::NotAuthorized,
                    AuthError::Storage(_) => ReasonCode::ServerUnavailable,
                };
                tracing::info!(client_id = %client_id, user = ?connect.username, %peer, listener = %endpoint.kind, "login refused: {e}");
                write_packets(&mut stream, protocol, [Packet::ConnAck(refuse(code))]).await?;
                return Err(ConnectionError::Refused(code));
            }
        };
        let expiry_secs = match protocol {
            Protocol::V5 => {
                let asked = props.session_expiry_interval.unwrap_or(0);
                let granted = asked.min(limits.max_session_expiry_secs);
                if granted != asked {
                    connack_props.session_expiry_interval = Some(granted);
                }
                granted
            }
            Protocol::V311 if connect.clean_start => 0,
            Protocol::V311 => limits.max_session_expiry_secs,
        };
        let mut keep_alive = connect.keep_alive;
        if limits.max_keepalive_secs > 0
            && protocol == Protocol::V5
            && (keep_alive == 0 || keep_alive > limits.max_keepalive_secs)
        {
            keep_alive = limits.max_keepalive_secs;
            connack_props.server_keep_alive = Some(keep_alive);
        }

        if let Some(will) = &connect.will {
            // A will is published by the broker with no chat routing: it may not forge an
            // inbox entry, a DM, a group message, or (without the role) a broadcast.
            let allowed = match classify(&will.topic) {
                Address::Plain => true,
                Address::Broadcast => identity.operator,
                _ => false,
            };
            if !allowed {
                tracing::info!(client_id = %client_id, topic = %will.topic, "will topic refused");
                let code = ReasonCode::NotAuthorized;
                write_packets(&mut stream, protocol, [Packet::ConnAck(refuse(code))]).await?;
                return Err(ConnectionError::Refused(code));
            }
        }
        let (postbox, mailbox) =
            crate::mailbox::mailbox(limits.outbound_channel_capacity, BROADCAST_LANE);
        let attached: Result<Attached, ReasonCode> = ctx
            .router
            .call(|reply| Command::Connect {
                request: ConnectRequest {
                    client_id: client_id.clone(),
                    user: identity.user.clone(),
                    clean_start: connect.clean_start,
                    expiry_secs,
                    protocol,
                    postbox,
                },
                reply,
            })
            .await?;
        let attached = match attached {
            Ok(attached) => attached,
            Err(code) => {
                write_packets(&mut stream, protocol, [Packet::ConnAck(refuse(code))]).await?;
                return Err(ConnectionError::Refused(code));
            }
        };
        let persistent = expiry_secs > 0 || attached.backlog_upto.is_some();

        let params = SessionParams {
            protocol,
            id: attached.session,
            receive_maximum_out: props
                .receive_maximum
                .unwrap_or(u16::MAX)
                .min(limits.max_inflight),
            max_packet_size_out: props.maximum_packet_size.unwrap_or(u32::MAX),
            topic_alias_maximum_out: props.topic_alias_maximum.unwrap_or(0),
            expiry_was_zero: props.session_expiry_interval.unwrap_or(0) == 0,
            persistent,
            limits: ctx.session_limits.clone(),
        };
        let mut session = Session::new(params);
        if attached.session_present && persistent {
            let id = client_id.to_string();
            let ids = read_store(&ctx, move |store| store.inbound_qos2(&id)).await?;
            session.restore_inbound_qos2(ids);
        }

        if protocol == Protocol::V5 {
            if props.request_response_information == Some(1) {
                // A topic prefix of the client's own for request/response: responders
                // publish under it, the client subscribes to it.
                connack_props.response_information =
                    Some(ByteString::from(format!("response/{client_id}")));
            }
            connack_props.receive_maximum = Some(limits.max_inflight);
            connack_props.maximum_packet_size = Some(limits.max_packet_size);
            connack_props.topic_alias_maximum = Some(limits.max_topic_aliases);
        }
        let connack = ConnAck {
            session_present: attached.session_present,
            code: ReasonCode::Success,
            properties: connack_props,
        };
        let will = connect.will.as_ref().map(|will| {
            let mut properties = will.properties.clone();
            let delay_secs = properties.will_delay_interval.take().unwrap_or(0);
            let expiry = properties.message_expiry_interval.take();
            let message = Message {
                // Copied out of the read buffer, like the client id.
                topic: ByteString::from(will.topic.to_string()),
                payload: bytes::Bytes::copy_from_slice(&will.payload),
                qos: will.qos,
                retain: will.retain,
                properties,
                expires_at_ms: expiry.map(|secs| now_ms().saturating_add(u64::from(secs) * 1000)),
                origin: Some(attached.session),
                received_at: None,
            };
            WillRequest {
                message: Arc::new(message),
                delay_secs,
            }
        });
        tracing::info!(
            client_id = %client_id,
            user = %identity.user,
            %peer,
            listener = %endpoint.kind,
            ?protocol,
            session_present = attached.session_present,
            persistent,
            "client connected"
        );
        // Boxed: moved by value into `run`'s future, the connection's ~800 bytes were
        // stored twice in every task (a moved-from local keeps its slot in the async
        // state machine). Measured: a 3,216-byte task before, 1,600 bytes plus this box
        // (816) after.
        let mut connection = Box::new(Connection {
            ctx: ctx.clone(),
            stream,
            permits,
            listener: endpoint.kind,
            io: Some(Box::new(Io {
                rbuf: if rbuf.is_empty() {
                    BytesMut::new()
                } else {
                    rbuf
                },
                // Allocated by the first packet written, released when idle (see `flush`).
                ..Io::default()
            })),
            client_id,
            conn_id: attached.conn,
            session,
            // 1.5 times 65,535 s is 98 million ms: a u32 holds it.
            keep_alive_ms: NonZeroU32::new(u32::from(keep_alive) * 1500),
            last_read: ReadClock::at(ctx.millis_since_start(Instant::now())),
            busy: false,
            park_at_once: true,
            in_lot_set: false,
            mailbox,
            closing: false,
            queue_unconfirmed: false,
            user: attached.user,
            operator: identity.operator,
            extras: Extras {
                backlog: attached.backlog_upto.map(|upto| Backlog { upto }),
                sent_before: attached.sent.into_iter().collect(),
                will,
                expiry_override: None,
                budget: InboundBudget::new(&endpoint, &ctx.metrics),
            }
            .boxed_unless_empty(),
            next_stored: 0,
            clean_exit: false,
        });
        connection.queue_packet(Packet::ConnAck(connack));
        Ok(connection)
    }

    /// The working buffers, allocated again after the connection was parked.
    fn io(&mut self) -> &mut Io {
        self.io.get_or_insert_with(Box::default)
    }

    fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// The listener's inbound rate limits, if it sets any.
    fn budget(&self) -> Option<&InboundBudget> {
        self.extras.as_ref()?.budget.as_deref()
    }

    fn budget_mut(&mut self) -> Option<&mut InboundBudget> {
        self.extras.as_mut()?.budget.as_deref_mut()
    }

    /// The durable queue still to be read, if any.
    fn backlog(&self) -> Option<&Backlog> {
        self.extras.as_ref()?.backlog.as_ref()
    }

    fn set_backlog(&mut self, backlog: Option<Backlog>) {
        if backlog.is_some() || self.extras.is_some() {
            self.extras().backlog = backlog;
        }
        self.drop_empty_extras();
    }

    fn drop_empty_extras(&mut self) {
        if self.extras.as_ref().is_some_and(|extras| extras.is_empty()) {
            self.extras = None;
        }
    }

    /// Whether the previous connection sent the message at queue position `seq` (it goes
    /// out again with DUP set); asked once per position.
    fn sent_before(&mut self, seq: u64) -> bool {
        let Some(extras) = &mut self.extras else {
            return false;
        };
        let sent = extras.sent_before.remove(&seq);
        if sent && extras.sent_before.is_empty() {
            // Its table's capacity goes too, with the box if nothing else is in it.
            extras.sent_before = FxHashSet::default();
            self.drop_empty_extras();
        }
        sent
    }

    fn queue_packet(&mut self, packet: impl Into<Transmit>) {
        let packet = packet.into();
        if packet.is_publish() {
            self.io().publishes_queued += 1;
        }
        if self.io().wbuf.capacity() == 0 {
            // One allocation for a burst of packets rather than one per growth step.
            self.io().wbuf.reserve(WRITE_BUFFER);
        }
        if let Err(e) = packet.encode(self.session.params().protocol, &mut self.io().wbuf) {
            tracing::warn!(client_id = %self.client_id, "cannot encode {}: {e}", packet.name());
        }
    }

    async fn run(mut self: Box<Self>) -> Result<(), ConnectionError> {
        let result = match self.serve().await {
            Ok(Stop::Park) => {
                self.park_at_once = false;
                // Empty (see `can_park`) but for counts not yet added to the metrics.
                if let Some(mut io) = self.io.take() {
                    io.traffic.flush(&self.ctx.metrics);
                }
                self.session.release_idle_memory();
                self.mailbox.release_idle_memory();
                // The lot watches the socket from here: the runtime's registration goes.
                match self.stream.detach() {
                    Ok(()) => {
                        let lot = self.ctx.lot.clone();
                        return match lot.park(self) {
                            Ok(()) => Ok(()),
                            // The lot stopped meanwhile (the broker is stopping): serve on
                            // here (the first read registers the socket again).
                            Err(parked) => {
                                parked.resume().await;
                                Ok(())
                            }
                        };
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Ok(Stop::Disconnected) => Ok(()),
            Err(e) => Err(e),
        };
        // Boxed, like every rare path (see `serve`).
        Box::pin(self.ended(&result)).await;
        result
    }

    /// How long this connection stays quiet before it parks; `None` when it does not park.
    fn park_after(&self) -> Option<Duration> {
        let ms = self.ctx.config.limits.idle_park_ms;
        (ms > 0 && self.stream.is_tcp() && !self.ctx.lot.is_closed())
            .then(|| Duration::from_millis(ms))
    }

    /// Whether the connection can wait in the parking lot: nothing under way that the lot
    /// does not watch (it watches the mailbox, the socket and the keepalive deadline).
    fn can_park(&self) -> bool {
        let io_idle = self.io.as_ref().is_none_or(|io| {
            io.rbuf.is_empty()
                && io.wbuf.is_empty()
                && io.acks.is_empty()
                && io.acks_done.is_empty()
                && io.publishes_queued == 0
        });
        !self.closing && io_idle && self.backlog().is_none() && self.mailbox.is_idle()
    }

    /// When the client has been silent too long (1.5 times its keep alive, counted from
    /// its last input); `None` without a keep alive.
    fn keepalive_deadline(&self) -> Option<Instant> {
        self.keep_alive()
            .zip(self.last_read.since_start())
            .map(|(limit, since_start)| self.ctx.started + since_start + limit)
    }

    /// The keepalive clock starts again from now.
    fn mark_read(&mut self) {
        self.last_read = ReadClock::at(self.ctx.millis_since_start(Instant::now()));
    }

    /// How long the client may be silent (1.5 times its keep alive).
    fn keep_alive(&self) -> Option<Duration> {
        self.keep_alive_ms
            .map(|ms| Duration::from_millis(u64::from(ms.get())))
    }

    /// The timer's next deadline: the keepalive deadline, or sooner the next look at
    /// whether to park.
    fn next_timer(&self, now: Instant, park_after: Option<Duration>) -> Instant {
        let keepalive = self.keepalive_deadline();
        let park = park_after.map(|after| now + after);
        match (keepalive, park) {
            (Some(keepalive), Some(park)) => keepalive.min(park),
            (keepalive, park) => keepalive.or(park).unwrap_or(now + WRITE_TIMEOUT),
        }
    }

    /// Logs the end and tells the router, with the will unless the client said goodbye
    /// properly.
    async fn ended(&mut self, result: &Result<(), ConnectionError>) {
        let how = match result {
            Ok(()) => "DISCONNECT".to_string(),
            Err(e) => e.to_string(),
        };
        tracing::info!(
            client_id = %self.client_id,
            user = %self.user,
            peer = %self.permits.peer(),
            listener = %self.listener,
            "client disconnected: {how}"
        );
        let will = if self.clean_exit {
            None
        } else {
            self.extras.as_mut().and_then(|extras| extras.will.take())
        };
        let _ = self
            .ctx
            .router
            .send(Command::Disconnected {
                session: self.session.params().id,
                conn: self.conn_id,
                will,
                expiry_secs: self
                    .extras
                    .as_ref()
                    .and_then(|extras| extras.expiry_override),
                sent: self.session.in_flight_seqs(),
            })
            .await;
    }

    /// The connection's life after CONNACK. Most of it is spent idle, waiting in the
    /// `select!` below, and a task's size is that of its largest state: so the waiting
    /// holds only small futures, and the work on each event (decoding, the router, the
    /// store, writing) runs in a boxed future that exists only while it runs. One
    /// allocation per event, next to a system call per event; it keeps the idle task
    /// about 1 KB smaller.
    ///
    /// It returns [`Stop::Park`] once the connection is idle and may wait in the parking
    /// lot: at once the first time (a new connection, typically with nothing to do for a
    /// while) and after a heartbeat, otherwise once woken from there, after one to two
    /// `idle_park_ms` of quiet (the timer looks every `idle_park_ms` whether anything
    /// happened since its last look).
    async fn serve(&mut self) -> Result<Stop, ConnectionError> {
        let park_after = self.park_after();
        // One timer for the keepalive deadline and for parking, armed for the nearer and
        // moved on only when it fires: one timer operation per period rather than two per
        // loop iteration. Never polled (so never registered) without either.
        let timer = tokio::time::sleep_until(self.next_timer(Instant::now(), park_after));
        tokio::pin!(timer);
        // Packets a client sent right behind its CONNECT, in the same read.
        if !self.io().rbuf.is_empty() && Box::pin(self.take_input()).await? {
            return Ok(Stop::Disconnected);
        }
        loop {
            match Box::pin(self.settle()).await? {
                Settled::Disconnected => return Ok(Stop::Disconnected),
                Settled::Again => continue,
                Settled::Idle => {}
            }
            let paused_until = self.budget_mut().and_then(|b| b.paused_until());
            if paused_until.is_some() {
                // Not reading is the broker's choice: it does not count against keepalive.
                self.mark_read();
            } else if self.budget().is_some_and(|b| b.held) {
                // The rate allows again already (it did between the decoding and now):
                // no pause will end to decode what was held back, so decode it now.
                if Box::pin(self.take_input()).await? {
                    return Ok(Stop::Disconnected);
                }
                continue;
            } else if self.park_at_once && park_after.is_some() && self.can_park() {
                return Ok(Stop::Park);
            }
            // Boxed (when there is a pause at all): a Sleep is 100-odd bytes.
            let pause = paused_until.map(|at| Box::pin(tokio::time::sleep_until(at)));
            let take_live = self.backlog().is_none() && self.session.has_room();
            let io: &mut Io = self.io.get_or_insert_with(Box::default);
            let event = tokio::select! {
                mail = self.mailbox.next(take_live), if !self.closing => Event::Mail(mail),
                read = self.stream.read(&mut io.rbuf, READ_BUFFER), if !self.session.inbound_full() && pause.is_none() => Event::Read(read),
                // Over the listener's inbound rate: the socket is not read meanwhile. Then
                // the packets already read but left undecoded go first.
                () = async { if let Some(pause) = pause { pause.await } }, if paused_until.is_some() => Event::Resume,
                () = std::future::poll_fn(|cx| io.acks.poll_ready(cx, &mut io.acks_done)), if !io.acks.is_empty() => Event::AcksDone,
                () = &mut timer, if self.keep_alive_ms.is_some() || park_after.is_some() => Event::Timer,
            };
            if !matches!(event, Event::Timer) {
                self.busy = true;
            }
            match event {
                Event::Mail(Mail::Close(reason)) => {
                    self.closing = true;
                    Box::pin(self.server_disconnect(reason.code, &reason.why)).await;
                    return Err(ConnectionError::ClosedBy(reason));
                }
                Event::Mail(Mail::Chat) => {
                    // One clock reading for the batch (a fan-out hands each connection
                    // many messages at once), and everything waiting taken in one go:
                    // fewer wakeups, larger writes.
                    let mut batch = Batch::start();
                    while self.session.has_room() {
                        match self.mailbox.pop_chat() {
                            Some(delivery) => self.deliver_live(delivery, &mut batch),
                            None => break,
                        }
                    }
                    self.ctx.metrics.add_publish_to_deliver(batch.latencies);
                }
                // Only while no chat message waits: a DM overtakes broadcasts.
                Event::Mail(Mail::Broadcast(delivery)) => {
                    let mut batch = Batch::start();
                    self.deliver_live(delivery, &mut batch);
                    self.ctx.metrics.add_publish_to_deliver(batch.latencies);
                }
                Event::Read(read) => {
                    let n = read?;
                    if n == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                    self.mark_read();
                    if is_heartbeat(&self.io().rbuf) {
                        // A device's keepalive: it goes back to sleep, and so can this
                        // connection once it has answered (a resumed one otherwise works
                        // on for `idle_park_ms` first, in case a conversation follows).
                        self.park_at_once = true;
                    }
                    self.io().traffic.read(n);
                    if let Some(budget) = self.budget_mut() {
                        if let Some(bytes) = &mut budget.bytes {
                            bytes.spend(n as u64);
                        }
                    }
                    if Box::pin(self.take_input()).await? {
                        return Ok(Stop::Disconnected);
                    }
                    if self.io().rbuf.is_empty() {
                        // Idle again: hold no read buffer while waiting (most of a chat
                        // connection's life). Decoded payloads keep their own reference.
                        self.io().rbuf = BytesMut::new();
                    }
                }
                Event::Resume => {
                    if !self.io().rbuf.is_empty() && Box::pin(self.take_input()).await? {
                        return Ok(Stop::Disconnected);
                    }
                }
                Event::AcksDone => {
                    if self.acks_done() && Box::pin(self.take_input()).await? {
                        return Ok(Stop::Disconnected);
                    }
                }
                Event::Timer => {
                    let now = Instant::now();
                    if self.keepalive_deadline().is_some_and(|at| at <= now) {
                        Box::pin(
                            self.server_disconnect(
                                ReasonCode::KeepAliveTimeout,
                                "keepalive timeout",
                            ),
                        )
                        .await;
                        return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
                    }
                    if park_after.is_some()
                        && !self.busy
                        && paused_until.is_none()
                        && self.can_park()
                    {
                        return Ok(Stop::Park);
                    }
                    self.busy = false;
                    timer.as_mut().reset(self.next_timer(now, park_after));
                }
            }
        }
    }

    /// The work between two waits: acknowledgements answered meanwhile, the session's
    /// effects, the write, and the next page of the backlog or a resync.
    async fn settle(&mut self) -> Result<Settled, ConnectionError> {
        // Acknowledgements answered meanwhile go out in the same write as the rest.
        if !self.io().acks.is_empty() {
            let io = self.io();
            io.acks.take_ready(&mut io.acks_done);
            if self.acks_done() && self.take_input().await? {
                return Ok(Settled::Disconnected);
            }
        }
        self.process_effects().await?;
        self.flush().await?;
        if self.backlog().is_some()
            && self.session.has_room()
            && self.session.queued() < BACKLOG_PAGE
        {
            Box::pin(self.refill_backlog()).await?;
            return Ok(Settled::Again);
        }
        if self.backlog().is_none() && self.mailbox.lagged() && self.mailbox.chat_is_empty() {
            Box::pin(self.resync()).await?;
            return Ok(Settled::Again);
        }
        Ok(Settled::Idle)
    }

    /// Decodes what the read buffer holds; once the client said DISCONNECT, handles and
    /// writes what came before it and returns true.
    async fn take_input(&mut self) -> Result<bool, ConnectionError> {
        if !self.handle_input().await? {
            return Ok(false);
        }
        self.process_effects().await?;
        self.flush().await?;
        Ok(true)
    }

    /// Hands the acknowledgements taken from `acks` to the session. Returns true when that
    /// reopened its inbound window: the read buffer may hold publishes to decode now.
    fn acks_done(&mut self) -> bool {
        if self.io().acks_done.is_empty() {
            return false;
        }
        let was_full = self.session.inbound_full();
        let io: &mut Io = self.io.get_or_insert_with(Box::default);
        for (packet_id, qos, reason) in io.acks_done.drain(..) {
            self.session.publish_done(packet_id, qos, reason);
        }
        was_full
    }

    /// Decodes every whole frame in the read buffer. Returns true once the client said
    /// DISCONNECT.
    async fn handle_input(&mut self) -> Result<bool, ConnectionError> {
        let max = self.ctx.config.limits.max_packet_size as usize;
        let now = now_ms();
        if let Some(budget) = self.budget_mut() {
            budget.held = false;
        }
        loop {
            if self.session.inbound_full() {
                // The rest stays buffered until acknowledgements free the window.
                return Ok(false);
            }
            let input_left = self.io.as_ref().is_some_and(|io| !io.rbuf.is_empty());
            if let Some(budget) = self.budget_mut() {
                if budget
                    .messages
                    .as_mut()
                    .is_some_and(|m| m.wait(0.0, Instant::now()).is_some())
                {
                    // Over the listener's message rate: the rest waits (see `serve`).
                    budget.held = input_left;
                    return Ok(false);
                }
            }
            let protocol = self.session.params().protocol;
            let packet = match decode(&mut self.io().rbuf, protocol, max) {
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
                self.io().traffic.publish_received();
            }
            if let (Packet::Publish(_), Some(budget)) = (&packet, self.budget_mut()) {
                if let Some(messages) = &mut budget.messages {
                    messages.spend(1);
                }
            }
            if let Err(close) = self.session.handle_packet(packet, now) {
                self.server_disconnect(close.reason, close.why).await;
                return Err(ConnectionError::Closed(close));
            }
            if is_disconnect {
                // Nothing after DISCONNECT counts [MQTT-3.14.4-1].
                return Ok(true);
            }
        }
    }

    fn deliver_live(&mut self, mut delivery: Delivery, batch: &mut Batch) {
        if let Some(at) = delivery.message.received_at {
            self.ctx.metrics.tally_publish_to_deliver(
                &mut batch.latencies,
                batch.at.saturating_duration_since(at),
            );
        }
        if let Some(seq) = delivery.seq {
            if seq < self.next_stored {
                // Already read from storage while catching up.
                return;
            }
            if self.mailbox.lagged() {
                // Behind: it is in storage and comes back in order with the resync.
                return;
            }
            self.next_stored = seq + 1;
            delivery.dup = self.sent_before(seq);
        }
        let stored = delivery.seq;
        if self.session.deliver(delivery, batch.ms).is_err() {
            match stored {
                Some(seq) => {
                    // In storage: read it back once the queue has room.
                    self.next_stored = seq;
                    self.mailbox.set_lagged();
                }
                None => self.ctx.metrics.dropped(DropReason::QueueFull),
            }
        }
    }

    async fn refill_backlog(&mut self) -> Result<(), ConnectionError> {
        let Some(upto) = self.backlog().map(|backlog| backlog.upto) else {
            return Ok(());
        };
        let id = self.client_id.to_string();
        let from = self.next_stored;
        let page = read_store(&self.ctx, move |store| store.queue(&id, from, BACKLOG_PAGE)).await?;
        let complete = page.len() < BACKLOG_PAGE;
        for (seq, queued) in page {
            if seq >= upto {
                self.set_backlog(None);
                break;
            }
            self.next_stored = seq + 1;
            if queued.message_ref.is_some() {
                // Its chat message was deleted by retention (im.inbox_max_age_secs).
                tracing::debug!(client_id = %self.client_id, seq, "queued chat message expired");
                self.dequeue(seq).await;
                continue;
            }
            match Delivery::from_queued(seq, queued) {
                Ok(mut delivery) => {
                    delivery.dup = self.sent_before(seq);
                    if self.session.deliver(delivery, now_ms()).is_err() {
                        // Cannot happen while pages are smaller than the queue's room; if
                        // it does, read this entry again next time.
                        self.next_stored = seq;
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::warn!(client_id = %self.client_id, seq, "skipping damaged queued message: {e}");
                    self.dequeue(seq).await;
                }
            }
        }
        if complete || self.next_stored >= upto {
            self.set_backlog(None);
            self.next_stored = self.next_stored.max(upto);
        }
        Ok(())
    }

    async fn resync(&mut self) -> Result<(), ConnectionError> {
        let (session, conn) = (self.session.params().id, self.conn_id);
        let upto = self
            .ctx
            .router
            .call(|reply| Command::Resync {
                session,
                conn,
                reply,
            })
            .await?;
        // An answer: everything this connection queued before it has been handled.
        self.queue_unconfirmed = false;
        self.set_backlog(Some(Backlog { upto }));
        Ok(())
    }

    async fn dequeue(&self, seq: u64) {
        if self.persistent() {
            let op = Op::Dequeue {
                client_id: self.client_id.to_string(),
                seq,
            };
            self.ctx.writer.submit_detached(vec![op]).await;
        }
    }

    async fn process_effects(&mut self) -> Result<(), ConnectionError> {
        let mut ops = Vec::new();
        while let Some(effect) = self.session.poll_effect() {
            match effect {
                Effect::Publish { message, ack } => self.publish(message, ack).await?,
                // Boxed, like the other rare paths: their futures would otherwise be part
                // of every connection task's size (see `serve`).
                Effect::Subscribe(subscribe) => {
                    // It may write (retained messages go out a batch at a time): what the
                    // effects before it stored goes to the storage writer first, as before
                    // any write.
                    if !ops.is_empty() {
                        self.ctx
                            .writer
                            .submit_detached(std::mem::take(&mut ops))
                            .await;
                    }
                    Box::pin(self.subscribe(subscribe)).await?
                }
                Effect::Unsubscribe(unsubscribe) => Box::pin(self.unsubscribe(unsubscribe)).await?,
                Effect::Dequeue(seq) if self.persistent() => ops.push(Op::Dequeue {
                    client_id: self.client_id.to_string(),
                    seq,
                }),
                Effect::Released(seq) if self.persistent() => ops.push(Op::SetQueueState {
                    client_id: self.client_id.to_string(),
                    seq,
                    state: QueueState::Released,
                }),
                Effect::InboundQos2Released(packet_id) if self.persistent() => {
                    ops.push(Op::DeleteInboundQos2 {
                        client_id: self.client_id.to_string(),
                        packet_id,
                    })
                }
                Effect::Dequeue(_) | Effect::Released(_) | Effect::InboundQos2Released(_) => {}
                Effect::Disconnect {
                    publish_will,
                    session_expiry,
                } => {
                    self.clean_exit = !publish_will;
                    if session_expiry.is_some() {
                        self.extras().expiry_override = session_expiry;
                    }
                }
            }
        }
        while let Some(packet) = self.session.poll_transmit() {
            self.queue_packet(packet);
        }
        if !ops.is_empty() {
            self.ctx.writer.submit_detached(ops).await;
        }
        self.mailbox.set_in_flight(self.session.in_flight());
        Ok(())
    }

    async fn subscribe(&mut self, subscribe: Subscribe) -> Result<(), ConnectionError> {
        let packet_id = subscribe.packet_id;
        let session = self.session.params().id;
        let (subscribe, refused) = self.apply_acl(subscribe);
        let mut reply = if subscribe.filters.is_empty() {
            crate::router::SubscribeReply {
                reasons: Vec::new(),
                retained: Vec::new(),
            }
        } else {
            let reply = self
                .ctx
                .router
                .call(|reply| Command::Subscribe {
                    session,
                    subscribe,
                    reply,
                })
                .await?;
            self.queue_unconfirmed = false;
            reply
        };
        for index in refused {
            reply.reasons.insert(index, ReasonCode::NotAuthorized);
        }
        self.queue_packet(Packet::SubAck(SubAck {
            packet_id,
            properties: Properties::default(),
            reasons: reply.reasons,
        }));
        // A filter can match thousands of retained messages, each in memory of its own
        // (message, topic, payload) and, in a large store, none of it in cache: the loads
        // for the messages a few places ahead are started while this one is encoded, so
        // that their cache misses overlap instead of following one another.
        //
        // They are written a batch at a time as they are encoded (the SUBACK with the first),
        // so that the client reads while the rest is encoded rather than after.
        let now = now_ms();
        let mut retained = reply.retained.into_iter();
        let mut batch = 0;
        while let Some(delivery) = retained.next() {
            let ahead = retained.as_slice();
            if let Some(later) = ahead.get(2 * PREFETCH_DISTANCE - 1) {
                later.message.prefetch();
            }
            if let Some(next) = ahead.get(PREFETCH_DISTANCE - 1) {
                next.message.prefetch_contents();
            }
            // Retained messages beyond the queue bound are not sent.
            let _ = self.session.deliver(delivery, now);
            batch += 1;
            if batch == RETAINED_WRITE_BATCH && !retained.as_slice().is_empty() {
                batch = 0;
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, mut unsubscribe: Unsubscribe) -> Result<(), ConnectionError> {
        let packet_id = unsubscribe.packet_id;
        let session = self.session.params().id;
        self.narrow_unsubscribe(&mut unsubscribe);
        let reasons = self
            .ctx
            .router
            .call(|reply| Command::Unsubscribe {
                session,
                unsubscribe,
                reply,
            })
            .await?;
        self.queue_unconfirmed = false;
        self.queue_packet(Packet::UnsubAck(UnsubAck {
            packet_id,
            properties: Properties::default(),
            reasons,
        }));
        Ok(())
    }

    /// The inbox rule on a SUBSCRIBE: filters narrowed to the user's own inbox, refused
    /// ones taken out. Returns what goes to the router and the indexes of refused filters
    /// (ascending), whose SUBACK reason is "not authorized".
    fn apply_acl(&self, mut subscribe: Subscribe) -> (Subscribe, Vec<usize>) {
        let mut refused = Vec::new();
        let filters = std::mem::take(&mut subscribe.filters);
        for (index, (filter, options)) in filters.into_iter().enumerate() {
            match check_filter(&self.user, &filter) {
                FilterDecision::Allow => subscribe.filters.push((filter, options)),
                FilterDecision::Narrow(narrowed) => {
                    tracing::debug!(user = %self.user, %filter, %narrowed, "filter narrowed to the user's inbox");
                    subscribe
                        .filters
                        .push((ByteString::from(narrowed), options));
                }
                FilterDecision::Refuse => {
                    tracing::info!(client_id = %self.client_id, user = %self.user, %filter, "subscription to another user's inbox refused");
                    refused.push(index);
                }
            }
        }
        (subscribe, refused)
    }

    /// Unsubscribing names the filter as subscribed: narrowed the same way.
    fn narrow_unsubscribe(&self, unsubscribe: &mut Unsubscribe) {
        for filter in &mut unsubscribe.filters {
            if let FilterDecision::Narrow(narrowed) = check_filter(&self.user, filter) {
                *filter = ByteString::from(narrowed);
            }
        }
    }

    /// Routes a client's PUBLISH by what its topic addresses (see `im::topics`).
    async fn publish(
        &mut self,
        message: Arc<Message>,
        ack: Option<(u16, QoS)>,
    ) -> Result<(), ConnectionError> {
        let refusal = match classify(&message.topic) {
            Address::Plain => None,
            Address::Direct { .. } | Address::Group { .. } => {
                return Box::pin(self.publish_chat(message, ack)).await;
            }
            Address::Sync => {
                Box::pin(self.sync(&message)).await?;
                if let Some((packet_id, qos)) = ack {
                    self.io()
                        .acks
                        .push_ready(packet_id, qos, ReasonCode::Success);
                }
                return Ok(());
            }
            Address::Broadcast if self.operator => {
                return Box::pin(self.publish_broadcast(message, ack)).await;
            }
            Address::Broadcast => Some((
                ReasonCode::NotAuthorized,
                "broadcast needs the operator role",
            )),
            Address::Inbox => Some((
                ReasonCode::NotAuthorized,
                "only the broker publishes into inboxes",
            )),
            Address::Malformed => Some((
                ReasonCode::TopicNameInvalid,
                "dm/{user} and group/{gid} take exactly one more level",
            )),
        };
        if let Some((reason, why)) = refusal {
            // 3.1.1 acknowledgements carry no reason: the message is dropped, logged and
            // counted, and acknowledged as usual.
            self.ctx.metrics.publish_refused(match reason {
                ReasonCode::TopicNameInvalid => PublishRefusal::TopicInvalid,
                _ => PublishRefusal::NotAuthorized,
            });
            tracing::info!(client_id = %self.client_id, user = %self.user, topic = %message.topic, "publish refused: {why}");
            if let Some((packet_id, qos)) = ack {
                self.io().acks.push_ready(packet_id, qos, reason);
            }
            return Ok(());
        }
        let inbound_qos2 = self.inbound_qos2(ack);
        // Routed on this task if none of this connection's earlier commands can still be
        // waiting in the router's queue (it would overtake them).
        let in_order = !self.queue_unconfirmed && !self.io().acks.awaits_router();
        if let Some(routed) = in_order
            .then(|| {
                self.ctx
                    .router
                    .try_publish(&message, &inbound_qos2, ack.is_some())
            })
            .flatten()
        {
            if let Some((packet_id, qos)) = ack {
                self.io().acks.push_answered(packet_id, qos, routed);
            }
            return Ok(());
        }
        self.route(ack, |reply| Command::Publish {
            message,
            inbound_qos2,
            reply,
        })
        .await
    }

    /// The session outlives this connection (see `SessionParams::persistent`).
    fn persistent(&self) -> bool {
        self.session.params().persistent
    }

    /// The "already received" marker a persistent session's inbound QoS 2 publish writes
    /// with the message.
    fn inbound_qos2(&self, ack: Option<(u16, QoS)>) -> Option<(ArcStr, u16)> {
        ack.filter(|(_, qos)| self.persistent() && *qos == QoS::ExactlyOnce)
            .map(|(packet_id, _)| (self.client_id.clone(), packet_id))
    }

    /// Sends a publish's router command; for QoS > 0 (`ack`), queues its acknowledgement,
    /// which goes out in order once the router answered and the writes are durable.
    async fn route(
        &mut self,
        ack: Option<(u16, QoS)>,
        command: impl FnOnce(Option<oneshot::Sender<crate::router::Routed>>) -> Command,
    ) -> Result<(), ConnectionError> {
        let Some((packet_id, qos)) = ack else {
            self.ctx.router.send(command(None)).await?;
            self.queue_unconfirmed = true;
            return Ok(());
        };
        let (reply, routed) = oneshot::channel();
        self.ctx.router.send(command(Some(reply))).await?;
        // Answered in order: once this one is, so is everything sent before it (until
        // then `acks` counts it as awaiting the router).
        self.queue_unconfirmed = false;
        // Acknowledged in order, once routed and durable; meanwhile the connection keeps
        // reading.
        self.io().acks.push_routed(packet_id, qos, routed);
        Ok(())
    }

    /// An operator's broadcast: waits for a fan-out permit first, so an operator publishing
    /// faster than broadcasts reach every connection is slowed down (this connection stops
    /// reading) instead of filling the router's queue in front of chat.
    async fn publish_broadcast(
        &mut self,
        message: Arc<Message>,
        ack: Option<(u16, QoS)>,
    ) -> Result<(), ConnectionError> {
        let permit = self
            .ctx
            .broadcasts
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ConnectionError::RouterGone)?;
        let inbound_qos2 = self.inbound_qos2(ack);
        self.route(ack, |reply| Command::Broadcast {
            message,
            inbound_qos2,
            permit,
            reply,
        })
        .await
    }

    /// A direct or group message: one router command carries it to every inbox.
    async fn publish_chat(
        &mut self,
        message: Arc<Message>,
        ack: Option<(u16, QoS)>,
    ) -> Result<(), ConnectionError> {
        let chat = Box::new(ChatPublish {
            from: self.user.clone(),
            message: Arc::unwrap_or_clone(message),
            inbound_qos2: self.inbound_qos2(ack),
        });
        self.route(ack, |reply| Command::Chat { chat, reply }).await
    }

    /// Replays the user's inbox log after the seq in the `$sync` payload, to this
    /// connection only, then announces the end on `inbox/{user}/sync`.
    async fn sync(&mut self, request: &Message) -> Result<(), ConnectionError> {
        let user = self.user.clone();
        let after = match parse_sync_request(&request.payload) {
            Ok(after) => after,
            Err(e) => {
                tracing::info!(client_id = %self.client_id, "bad sync request: {e}");
                None
            }
        };
        let from = after.map_or(0, |a| a.saturating_add(1));
        let limit = self.ctx.config.im.sync_max_messages;
        let who = user.clone();
        let (entries, (_, next)) = read_store(&self.ctx, move |store| {
            Ok((store.inbox(&who, from, limit)?, store.inbox_bounds(&who)?))
        })
        .await?;
        let mut last = None;
        let mut more = entries.len() == limit;
        let now = now_ms();
        for (seq, entry, stored) in entries {
            // Deleted by retention, or not a chat message: nothing to replay.
            let Some(stored) = stored else { continue };
            let copy = Message::from_stored(stored)
                .ok()
                .and_then(|m| for_recipient(&m, &user, entry.role, seq));
            let Some(copy) = copy else { continue };
            let qos = copy.qos.min(QoS::AtLeastOnce);
            let delivery = Delivery {
                message: Arc::new(copy),
                qos,
                retain: false,
                subscription_ids: Vec::new(),
                seq: None,
                dup: false,
                released: false,
            };
            if self.session.deliver(delivery, now).is_err() {
                more = true;
                break;
            }
            last = Some(seq);
        }
        let end = sync_end(&user, after, last, next, more);
        let delivery = Delivery {
            qos: end.qos,
            message: Arc::new(end),
            retain: false,
            subscription_ids: Vec::new(),
            seq: None,
            dup: false,
            released: false,
        };
        let _ = self.session.deliver(delivery, now);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ConnectionError> {
        while let Some(packet) = self.session.poll_transmit() {
            self.queue_packet(packet);
        }
        // Once per loop iteration: the shared counters see batches, not packets.
        if let Some(io) = &mut self.io {
            io.traffic.flush(&self.ctx.metrics);
        }
        let discarded = self.session.take_discarded();
        if discarded.too_large > 0 {
            let n = discarded.too_large.into();
            self.ctx.metrics.dropped_many(DropReason::TooLarge, n);
        }
        if discarded.expired > 0 {
            let n = discarded.expired.into();
            self.ctx.metrics.dropped_many(DropReason::Expired, n);
        }
        if self.io().wbuf.is_empty() {
            return Ok(());
        }
        // A peer that stops reading must not hold this task forever: give it the longer of
        // 1.5x its keepalive and WRITE_TIMEOUT to take the bytes.
        let limit = self
            .keep_alive()
            .unwrap_or(WRITE_TIMEOUT)
            .max(WRITE_TIMEOUT);
        let written = {
            let io: &mut Io = self.io.get_or_insert_with(Box::default);
            let mut write = std::pin::pin!(self.stream.write_all(&io.wbuf));
            // Most writes complete at once: the timer is armed only when the peer makes us wait.
            if let Poll::Ready(result) = futures_util::poll!(write.as_mut()) {
                Ok(result)
            } else if self.closing {
                tokio::time::timeout(limit, write).await
            } else {
                let write = tokio::time::timeout(limit, write);
                // A peer that does not read blocks this write; the router may meanwhile close
                // the connection (a slow consumer, a takeover): that must not wait for the
                // write. Nothing more can be sent to such a peer, not even DISCONNECT.
                tokio::select! {
                    written = write => written,
                    Mail::Close(reason) = self.mailbox.next(false) => {
                        self.closing = true;
                        return Err(ConnectionError::ClosedBy(reason));
                    }
                }
            }
        };
        match written {
            Ok(result) => result?,
            Err(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("peer took no data for {limit:?}"),
                )
                .into())
            }
        }
        let io: &mut Io = self.io.get_or_insert_with(Box::default);
        let publishes = std::mem::take(&mut io.publishes_queued);
        io.traffic.written(publishes, io.wbuf.len());
        io.traffic.flush(&self.ctx.metrics);
        if self.mailbox.is_empty() {
            // Nothing more on the way: an idle connection holds no write buffer.
            self.io().wbuf = BytesMut::new();
        } else {
            self.io().wbuf.clear();
        }
        Ok(())
    }

    /// A server-side close: DISCONNECT with the reason (v5 only), then the socket closes.
    async fn server_disconnect(&mut self, reason: ReasonCode, why: &str) {
        if self.session.params().protocol == Protocol::V5 {
            let mut disconnect = Disconnect::new(reason);
            if !why.is_empty() {
                disconnect.properties.reason_string = Some(ByteString::from(why));
            }
            self.queue_packet(Packet::Disconnect(disconnect));
        }
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Reads the store off the runtime (RocksDB reads block), after every write queued so far
/// has been applied, so that what this connection wrote itself is visible.
async fn read_store<T: Send + 'static>(
    ctx: &Context,
    read: impl FnOnce(&dyn Store) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, ConnectionError> {
    let failed = |e: &dyn std::fmt::Display| ConnectionError::Storage(e.to_string());
    ctx.writer.barrier().await.map_err(|e| failed(&e))?;
    let store = ctx.writer.store().clone();
    tokio::task::spawn_blocking(move || read(&*store))
        .await
        .map_err(|e| failed(&e))?
        .map_err(|e| failed(&e))
}

/// Who the client is (see `im::auth`): the store read and argon2 run on a blocking thread.
async fn login(
    ctx: &Arc<Context>,
    endpoint: &Endpoint,
    connect: &Connect,
    client_id: &str,
) -> Result<Identity, AuthError> {
    let anonymous_allowed = endpoint.anonymous_allowed;
    let anonymous_by_client_id =
        ctx.config.anonymous_identity == crate::config::AnonymousIdentity::ClientId;
    if connect.username.is_none() {
        // No user name: nothing to read or hash, decided here (a hop to a blocking thread
        // per connect would cost more than the decision).
        return authenticate(
            &**ctx.writer.store(),
            &Credentials {
                username: None,
                password: connect.password.as_deref(),
                client_id,
                anonymous_allowed,
                anonymous_by_client_id,
                operators: &ctx.config.im.operators,
            },
        );
    }
    let store = ctx.writer.store().clone();
    let username = connect.username.as_ref().map(|u| u.to_string());
    let password = connect.password.clone();
    let client_id = client_id.to_string();
    let operators = ctx.config.im.operators.clone();
    tokio::task::spawn_blocking(move || {
        authenticate(
            &*store,
            &Credentials {
                username: username.as_deref(),
                password: password.as_deref(),
                client_id: &client_id,
                anonymous_allowed,
                anonymous_by_client_id,
                operators: &operators,
            },
        )
    })
    .await
    .map_err(|e| AuthError::Storage(e.to_string()))?
}

/// A random-enough suffix for assigned client IDs (unique per process and time).
fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u64(now_ms());
    h.finish()
}

#[cfg(test)]
mod tests {
    /// Every connection carries its `Connection` for its whole life, parked or not (a
    /// third of an idle connection's memory, RSS measured with `tern-bench
    /// connections`): it stays within jemalloc's 192-byte size class (the classes are 32
    /// bytes apart from 128 to 256).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_connection_fits_a_192_byte_allocation() {
        let size = std::mem::size_of::<super::Connection>();
        assert!(size <= 192, "Connection is {size} bytes");
    }

    #[test]
    fn the_read_clock_rounds_up_and_stops_at_its_end() {
        use super::ReadClock;
        use std::time::Duration;
        let ms = |ms| Some(Duration::from_millis(ms));
        assert_eq!(ReadClock::at(0).since_start(), ms(0));
        // Never earlier than the input itself: a keepalive deadline is never early.
        assert_eq!(ReadClock::at(1).since_start(), ms(125));
        assert_eq!(ReadClock::at(125).since_start(), ms(125));
        assert_eq!(ReadClock::at(126).since_start(), ms(250));
        let day = 86_400_000;
        assert_eq!(ReadClock::at(day).since_start(), ms(day));
        // 2^32 eighths of a second (17 years) on, the clock reads as unknown.
        let end = ReadClock::at(u64::MAX);
        assert_eq!(end.since_start(), None);
        assert_eq!(ReadClock::at(u64::from(u32::MAX) * 125 + 1), end);
    }
}
