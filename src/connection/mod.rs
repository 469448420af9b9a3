//! The driver of one client connection: the I/O around the protocol's state (`protocol`),
//! the router and storage.
//!
//! - [`handshake`]: from the accepted socket to CONNACK (transport upgrade, CONNECT, login,
//!   attaching to the router; every refusal goes through one CONNACK writer).
//! - this file: the connection's state and its loop, one event at a time (input, mail from
//!   the router, acknowledgements that became durable, the timers of [`timers`]).
//! - [`inbound`]: decoding what was read into the session, within the listener's inbound
//!   budget; [`effects`]: what the session asks of the broker (routing, subscriptions,
//!   `$sync`, storage); [`acks`]: the acknowledgements owed, in order.
//! - [`outbound`]: deliveries into the session, the durable queue read back
//!   (`protocol::catch_up`), and writing.
//! - [`park`]: handing an idle connection to the parking lot, and heartbeats answered
//!   there.
//!
//! Most of a chat connection's life is spent idle, so its size matters: the task's state
//! while waiting holds only small futures (the work on each event runs in a boxed future
//! that exists only while it runs), and what only some connections need is boxed.

mod acks;
mod effects;
mod handshake;
mod inbound;
mod outbound;
mod park;
mod requests;
mod resume;
mod timers;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arcstr::ArcStr;
use bytes::BytesMut;
use tern_codec::{DecodeError, ReasonCode};
use tern_storage::{StorageError, Writer};
use tokio::time::Instant;

use crate::config::{limit_u32, AnonymousIdentity, ClusterEngine, Config, ListenerKind};
use crate::metrics::{Metrics, RefuseReason, Traffic};
use crate::net::admission::Permits;
use crate::net::parking::ParkingLot;
use crate::net::transport::Stream;
use crate::protocol::catch_up::CatchUp;
use crate::protocol::handshake::{ConnectLimits, Will};
use crate::protocol::session::{Session, SessionLimits};
use crate::protocol::{Close, Violation};
use crate::router::mailbox::{Mail, Mailbox};
use crate::router::{ConnId, RouterGone, RouterHandle};
use acks::{Ack, AckQueue};
use inbound::InboundBudget;
use park::ReadClock;
use timers::Timers;

pub(crate) use handshake::Accepted;

/// What every connection shares.
pub(crate) struct Context {
    pub(crate) router: RouterHandle,
    pub(crate) writer: Writer,
    /// Permits for system broadcasts being fanned out (`router::MAX_BROADCASTS_IN_FLIGHT`).
    pub(crate) broadcasts: Arc<tokio::sync::Semaphore>,
    pub(crate) metrics: Arc<Metrics>,
    /// Where idle connections wait without a task.
    pub(crate) lot: ParkingLot,
    /// When the broker started: connections keep their times as ms since then.
    pub(crate) started: Instant,
    pub(crate) limits: ConnectionLimits,
    /// The users' inbox logs, when they live in the cluster rather than in storage.
    pub(crate) inbox: Option<crate::cluster::InboxReader>,
    /// Which node each client id is connected on, in a cluster.
    pub(crate) sessions: Option<crate::cluster::Registry>,
    /// The persistent sessions the cluster keeps, for a resume on any node.
    pub(crate) session_states: Option<crate::cluster::SessionStates>,
    /// The node's lease, in a cluster: a connection acts only under the lease it was
    /// attached under.
    pub(crate) lease: Option<Arc<crate::router::NodeLease>>,
    /// Token login, its deny-list and the ACL file.
    pub(crate) access: Arc<crate::access::Access>,
    /// Turns of the password checks running at once (`limits.max_password_checks`).
    pub(crate) password_checks: tokio::sync::Semaphore,
}

/// What the configuration allows every connection, built once.
pub(crate) struct ConnectionLimits {
    pub(crate) connect: ConnectLimits,
    /// What every session may do: one shared copy rather than bytes in every connection.
    pub(crate) session: Arc<SessionLimits>,
    pub(crate) max_packet_size: usize,
    pub(crate) connect_timeout: Duration,
    /// Quiet this long, a connection parks (`None`: never).
    pub(crate) idle_park: Option<Duration>,
    pub(crate) outbound_channel_capacity: usize,
    /// Replayed per `$sync` request at most.
    pub(crate) sync_max_messages: usize,
    /// `im.recall_window_secs`.
    pub(crate) recall_window_secs: u64,
    /// `im.presence_visible_to`.
    pub(crate) presence_visible_to: crate::config::PresenceVisibility,
    pub(crate) anonymous_by_client_id: bool,
    pub(crate) operators: Arc<[String]>,
}

impl ConnectionLimits {
    /// Built once, at start, from the validated configuration.
    pub(crate) fn from_config(config: &Config) -> ConnectionLimits {
        let limits = &config.limits;
        ConnectionLimits {
            connect: ConnectLimits {
                max_session_expiry_secs: limits.max_session_expiry_secs,
                max_keepalive_secs: limits.max_keepalive_secs,
                max_inflight: limits.max_inflight,
                max_packet_size: limits.max_packet_size,
                max_topic_aliases: limits.max_topic_aliases,
            },
            session: Arc::new(SessionLimits {
                receive_maximum_in: limits.max_inflight,
                topic_alias_maximum_in: limits.max_topic_aliases,
                max_queued_messages: limit_u32(limits.max_queued_messages),
                max_queued_bytes: limit_u32(limits.max_queued_bytes),
                max_topic_levels: limit_u32(limits.max_topic_levels),
                // A cluster device's inbox cursor follows what it acknowledges.
                marks: (config.cluster.engine != ClusterEngine::None)
                    .then_some(crate::router::Cursors::mark as fn(&_) -> _),
            }),
            max_packet_size: limits.max_packet_size as usize,
            connect_timeout: Duration::from_secs(limits.connect_timeout_secs),
            idle_park: (limits.idle_park_ms > 0)
                .then(|| Duration::from_millis(limits.idle_park_ms)),
            outbound_channel_capacity: limits.outbound_channel_capacity,
            sync_max_messages: config.im.sync_max_messages,
            recall_window_secs: config.im.recall_window_secs,
            presence_visible_to: config.im.presence_visible_to,
            anonymous_by_client_id: config.anonymous_identity == AnonymousIdentity::ClientId,
            operators: config.im.operators.clone().into(),
        }
    }
}

impl Context {
    /// `at` in ms since the broker started (0 for an earlier instant).
    fn millis_since_start(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.started).as_millis()).unwrap_or(u64::MAX)
    }
}

/// Why a connection ended, for the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectionError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed packet: {0}")]
    Malformed(#[from] DecodeError),
    #[error("no CONNECT within {0:?}")]
    ConnectTimeout(Duration),
    #[error("handshake: {0}")]
    Handshake(#[source] std::io::Error),
    #[error("first packet was {0}, not CONNECT")]
    NotConnect(&'static str),
    #[error("CONNECT refused: {0:?}")]
    Refused(ReasonCode),
    #[error("protocol violation: {0}")]
    Violation(#[from] Violation),
    #[error("closed by the broker: {0}")]
    Closed(Close),
    #[error("the broker is stopping")]
    RouterGone(#[from] RouterGone),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

impl ConnectionError {
    /// How the end is counted among refused connects, if it is one.
    fn refused(&self) -> Option<RefuseReason> {
        match self {
            ConnectionError::ConnectTimeout(_) => Some(RefuseReason::ConnectTimeout),
            ConnectionError::Handshake(_) | ConnectionError::NotConnect(_) => {
                Some(RefuseReason::Protocol)
            }
            ConnectionError::Refused(code) => Some(RefuseReason::from_connack(*code)),
            _ => None,
        }
    }
}

/// Serves one accepted socket until it closes, parks, or fails.
pub(crate) async fn run(accepted: Box<Accepted>) {
    let peer = accepted.permits.peer();
    let ctx = accepted.ctx.clone();
    // The task's size is that of its largest state, for the connection's whole life:
    // so everything before CONNACK (TLS and WebSocket handshakes, CONNECT, login, the
    // router) runs in a box freed once the connection is accepted.
    let result = match Box::pin(handshake::handshake(accepted)).await {
        Ok(connection) => connection.run().await,
        Err(e) => Err(e),
    };
    if let Some(reason) = result.as_ref().err().and_then(ConnectionError::refused) {
        ctx.metrics.connect_refused(reason);
    }
    log_end(peer, &result);
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

/// Where a connection is in its life, as its loop decides what to wait for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Parks at its first idle moment, without waiting `idle_park_ms`: a new connection
    /// (typically quiet for a while), or a parked one woken only by a heartbeat.
    Settling,
    /// Something happened since the timer last looked: it works on.
    Busy,
    /// Nothing happened since the timer last looked: it parks when the timer next looks.
    Quiet,
    /// The router ordered it closed: nothing more is taken from the mailbox.
    Closing,
}

impl State {
    /// Something other than the timer happened.
    fn on_event(self) -> State {
        match self {
            State::Quiet => State::Busy,
            other => other,
        }
    }

    /// The timer looked: whether a connection in this state that can park parks now, and
    /// the state it goes on in otherwise.
    fn on_check(self, can_park: bool) -> (bool, State) {
        match self {
            State::Quiet => (can_park, State::Quiet),
            State::Busy => (false, State::Quiet),
            other => (false, other),
        }
    }

    /// Whether it parks at its first idle moment.
    fn parks_when_idle(self) -> bool {
        self == State::Settling
    }
}

/// Why the loop returned.
enum Stop {
    /// The client said DISCONNECT.
    Disconnected,
    /// Idle: the connection goes to the parking lot, its task ends.
    Park,
}

/// What the timer's look decided ([`Connection::check`]).
enum Check {
    /// The client was silent past its keep alive.
    Expired,
    Park,
    Continue,
}

/// What the work between two waits left (see [`Connection::settle`]).
enum Progress {
    /// Waiting for the next event.
    Wait,
    /// A backlog page or a resync was taken in: more to do before waiting.
    MoreWork,
    /// The client said DISCONNECT.
    Disconnected,
}

/// What woke the loop.
enum Event {
    Mail(Mail),
    Read(std::io::Result<usize>),
    /// The inbound rate limit's pause is over.
    Resume,
    AcksDone,
    /// The keepalive deadline, or the time to see whether the connection can park.
    Timer,
}

pub(crate) struct Connection {
    ctx: Arc<Context>,
    /// The socket; detached from the runtime while the connection is parked.
    stream: Stream,
    /// The listener that accepted it (for the logs).
    listener: ListenerKind,
    /// Its places under the listener's limits, and where it comes from.
    permits: Permits,
    /// What only a working connection needs: `None` while parked (see [`Buffers`]).
    buffers: Option<Box<Buffers>>,
    client_id: ArcStr,
    conn_id: ConnId,
    session: Session,
    /// How long the client may be silent: 1.5 times its keep alive, in ms (`None`: no
    /// limit). A u32, not a `Duration`: every idle connection carries it.
    keep_alive_ms: Option<NonZeroU32>,
    /// When the client last sent something (or reading last resumed after a pause).
    last_read: ReadClock,
    state: State,
    /// The client's user may publish to `broadcast/...`.
    operator: bool,
    /// It logged in under a user name, which an ACL file's `user` lines and `%u` name.
    named: bool,
    /// What the router hands this connection: chat deliveries, broadcasts, a close order.
    mailbox: Mailbox,
    /// The authenticated user (the name shared with the router's entries).
    user: ArcStr,
    /// Where it stands with its session's durable queue.
    catch_up: CatchUp,
    /// `None` when it has none of it.
    occasional: Option<Box<Occasional>>,
}

/// State only some connections have (a will, a new session expiry from DISCONNECT, the
/// listener's inbound rate budget), boxed: the others carry 8 bytes for all of it.
#[derive(Default)]
struct Occasional {
    will: Option<Will>,
    /// The Session Expiry Interval a v5 DISCONNECT set.
    expiry_override: Option<u32>,
    /// `None` when the listener sets no inbound rate limits.
    budget: Option<Box<InboundBudget>>,
}

impl Occasional {
    fn is_empty(&self) -> bool {
        self.will.is_none() && self.expiry_override.is_none() && self.budget.is_none()
    }
}

/// The buffers and counters of a connection at work. All of them are empty when it parks,
/// so a parked connection drops them and a woken one allocates them again.
#[derive(Default)]
struct Buffers {
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Traffic counted since it was last added to the metrics (once per loop iteration).
    traffic: Traffic,
    /// PUBLISH packets encoded into `wbuf` and not yet written.
    publishes_queued: u64,
    acks: AckQueue,
    /// Acknowledgements taken from `acks`, on their way to the session (kept for its capacity).
    acks_done: Vec<Ack>,
    /// Plain QoS 0 publishes on their way to the router together (kept for its capacity).
    unstored: Vec<Arc<crate::protocol::Message>>,
}

impl Connection {
    /// The working buffers, allocated again after the connection was parked.
    fn buffers(&mut self) -> &mut Buffers {
        self.buffers.get_or_insert_with(Box::default)
    }

    fn occasional(&mut self) -> &mut Occasional {
        self.occasional.get_or_insert_with(Box::default)
    }

    fn drop_empty_occasional(&mut self) {
        self.occasional.take_if(|o| o.is_empty());
    }

    /// The listener's inbound rate limits, if it sets any.
    fn budget(&self) -> Option<&InboundBudget> {
        self.occasional.as_ref()?.budget.as_deref()
    }

    fn budget_mut(&mut self) -> Option<&mut InboundBudget> {
        self.occasional.as_mut()?.budget.as_deref_mut()
    }

    /// On a cluster node: the node's lease does not admit this connection any more (it
    /// lapsed, or lapsed since the connection was attached). Checked before each event is
    /// acted on, so a node that ran again after being stopped acts on nothing it read.
    fn fenced(&self) -> bool {
        self.ctx
            .lease
            .as_ref()
            .is_some_and(|lease| !lease.admits(self.conn_id))
    }

    /// The session outlives this connection (see `SessionParams::persistent`).
    fn persistent(&self) -> bool {
        self.session.params().persistent
    }

    /// Serves the connection after CONNACK until it ends or parks; ending tells the router.
    async fn run(mut self: Box<Self>) -> Result<(), ConnectionError> {
        let result = match self.work().await {
            Ok(Stop::Park) => return park::park(self).await,
            Ok(Stop::Disconnected) => Ok(()),
            Err(e) => Err(e),
        };
        // Boxed, like every rare path (see `work`).
        Box::pin(self.ended(&result)).await;
        result
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
        let (will, expiry_secs) = match self.occasional.take() {
            Some(occasional) => (occasional.will, occasional.expiry_override),
            None => (None, None),
        };
        let current = self
            .ctx
            .router
            .detach(crate::router::Detach {
                session: self.session.params().id,
                conn: self.conn_id,
                will,
                expiry_secs,
                sent: self.session.in_flight_seqs(),
            })
            .await;
        if let (Ok(true), Some(registry)) = (current, &self.ctx.sessions) {
            if let Some(states) = &self.ctx.session_states {
                states.change(crate::router::SessionChange::Detached(
                    self.client_id.clone(),
                ));
            }
            registry.release(&self.client_id, self.conn_id);
        }
    }

    /// The connection's life after CONNACK. Most of it is spent idle, waiting in the
    /// `select!` below, and a task's size is that of its largest state: so the waiting
    /// holds only small futures, and the work on each event (decoding, the router, the
    /// store, writing) runs in a boxed future that exists only while it runs. One
    /// allocation per event, next to a system call per event; it keeps the idle task
    /// about 1 KB smaller.
    ///
    /// It returns [`Stop::Park`] once the connection is idle and may wait in the parking
    /// lot: at once while [`State::Settling`], otherwise after one to two `idle_park_ms`
    /// of quiet (the timer looks every `idle_park_ms` whether anything happened since its
    /// last look).
    async fn work(&mut self) -> Result<Stop, ConnectionError> {
        let park_after = self.park_after();
        let mut timers = Timers::new(self.keepalive_deadline(), park_after, Instant::now());
        // Never polled (so never registered) without a deadline.
        let timer = tokio::time::sleep_until(timers.next().unwrap_or_else(Instant::now));
        tokio::pin!(timer);
        // Packets a client sent right behind its CONNECT, in the same read.
        if !self.buffers().rbuf.is_empty() && Box::pin(self.take_input()).await? {
            return Ok(Stop::Disconnected);
        }
        loop {
            if self.state.parks_when_idle() && park_after.is_some() && self.can_park_with_output() {
                // A new connection with its CONNACK still to write: the lot writes it once
                // it watches the socket (see `Parked::write_in_place`).
                return Ok(Stop::Park);
            }
            match Box::pin(self.settle()).await? {
                Progress::Disconnected => return Ok(Stop::Disconnected),
                Progress::MoreWork => continue,
                Progress::Wait => {}
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
            } else if self.state.parks_when_idle() && park_after.is_some() && self.can_park() {
                return Ok(Stop::Park);
            }
            timers.resume_input_at(paused_until);
            if let Some(next) = timers.rearm() {
                timer.as_mut().reset(next);
            }
            let take_live = self.catch_up.backlog().is_none() && self.session.has_room();
            let closing = self.state == State::Closing;
            let inbound_open = !self.session.inbound_full() && paused_until.is_none();
            let buffers: &mut Buffers = self.buffers.get_or_insert_with(Box::default);
            let event = tokio::select! {
                mail = self.mailbox.next(take_live), if !closing => Event::Mail(mail),
                read = self.stream.read(&mut buffers.rbuf, inbound::READ_BUFFER), if inbound_open => Event::Read(read),
                () = std::future::poll_fn(|cx| buffers.acks.poll_ready(cx, &mut buffers.acks_done)), if !buffers.acks.is_empty() => Event::AcksDone,
                () = &mut timer, if timers.next().is_some() => match timers.fired(Instant::now()) {
                    timers::Fired::ResumeInput => Event::Resume,
                    timers::Fired::Check => Event::Timer,
                },
            };
            if self.fenced() {
                let close = Close::new(
                    ReasonCode::UseAnotherServer,
                    "this node lost its place in the cluster",
                );
                Box::pin(self.server_disconnect(close.code, &close.reason)).await;
                return Err(ConnectionError::Closed(close));
            }
            if !matches!(event, Event::Timer) {
                self.state = self.state.on_event();
            }
            match event {
                Event::Mail(Mail::Close(close)) => {
                    self.state = State::Closing;
                    Box::pin(self.server_disconnect(close.code, &close.reason)).await;
                    return Err(ConnectionError::Closed(close));
                }
                Event::Mail(Mail::Chat) => self.take_chat(),
                // Only while no chat message waits: a DM overtakes broadcasts.
                Event::Mail(Mail::Broadcast(delivery)) => self.take_broadcast(delivery),
                Event::Read(read) => {
                    if Box::pin(self.read_done(read?)).await? {
                        return Ok(Stop::Disconnected);
                    }
                }
                Event::Resume => {
                    timers.resume_input_at(None);
                    if !self.buffers().rbuf.is_empty() && Box::pin(self.take_input()).await? {
                        return Ok(Stop::Disconnected);
                    }
                }
                Event::AcksDone => {
                    if self.acks_done()? && Box::pin(self.take_input()).await? {
                        return Ok(Stop::Disconnected);
                    }
                }
                Event::Timer => match self.check(&mut timers, park_after, paused_until) {
                    Check::Expired => {
                        let why = "keepalive timeout";
                        Box::pin(self.server_disconnect(ReasonCode::KeepAliveTimeout, why)).await;
                        return Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into());
                    }
                    Check::Park => return Ok(Stop::Park),
                    Check::Continue => {}
                },
            }
        }
    }

    /// The timer's look: the keepalive deadline, then whether to park (see [`State`]).
    fn check(
        &mut self,
        timers: &mut Timers,
        park_after: Option<Duration>,
        paused_until: Option<Instant>,
    ) -> Check {
        let now = Instant::now();
        if self.keepalive_deadline().is_some_and(|at| at <= now) {
            return Check::Expired;
        }
        let can_park = park_after.is_some() && paused_until.is_none() && self.can_park();
        let (park, state) = self.state.on_check(can_park);
        if park {
            return Check::Park;
        }
        self.state = state;
        timers.checked(self.keepalive_deadline(), now);
        Check::Continue
    }

    /// The work between two waits: acknowledgements answered meanwhile, the session's
    /// effects, the write, and the next page of the backlog or a resync.
    async fn settle(&mut self) -> Result<Progress, ConnectionError> {
        // Acknowledgements answered meanwhile go out in the same write as the rest.
        if !self.buffers().acks.is_empty() {
            let buffers = self.buffers();
            buffers.acks.take_ready(&mut buffers.acks_done);
            if self.acks_done()? && self.take_input().await? {
                return Ok(Progress::Disconnected);
            }
        }
        self.process_effects().await?;
        self.flush().await?;
        if self.catch_up.backlog().is_some()
            && self.session.has_room()
            && self.session.queued() < outbound::BACKLOG_PAGE
        {
            Box::pin(self.refill_backlog()).await?;
            return Ok(Progress::MoreWork);
        }
        if self.catch_up.backlog().is_none()
            && self.mailbox.lagged()
            && self.mailbox.chat_is_empty()
        {
            self.resync()?;
            return Ok(Progress::MoreWork);
        }
        Ok(Progress::Wait)
    }

    /// Hands the acknowledgements taken from `acks` to the session. Returns true when that
    /// reopened its inbound window: the read buffer may hold publishes to decode now.
    fn acks_done(&mut self) -> Result<bool, ConnectionError> {
        if self.buffers().acks_done.is_empty() {
            return Ok(false);
        }
        let was_full = self.session.inbound_full();
        let buffers: &mut Buffers = self.buffers.get_or_insert_with(Box::default);
        for (packet_id, qos, reason) in buffers.acks_done.drain(..) {
            self.session
                .publish_done(packet_id, qos, reason)
                .map_err(ConnectionError::Closed)?;
        }
        Ok(was_full)
    }
}

#[cfg(test)]
mod tests {
    use super::State;

    #[test]
    fn a_connection_parks_after_a_whole_quiet_period_or_at_once_while_settling() {
        // Busy at one look, quiet at the next: it parks at the second, if it can.
        let (park, state) = State::Busy.on_check(true);
        assert!(!park);
        assert_eq!(state, State::Quiet);
        assert_eq!(state.on_check(true), (true, State::Quiet));
        assert_eq!(
            state.on_check(false),
            (false, State::Quiet),
            "something under way"
        );
        // An event in between makes it busy again.
        assert_eq!(State::Quiet.on_event(), State::Busy);
        assert_eq!(
            State::Quiet.on_event().on_check(true),
            (false, State::Quiet)
        );
        // Settling parks at its first idle moment, not by the timer; events leave it so.
        assert!(State::Settling.parks_when_idle());
        assert!(!State::Busy.parks_when_idle() && !State::Quiet.parks_when_idle());
        assert_eq!(State::Settling.on_event(), State::Settling);
        assert_eq!(State::Settling.on_check(true), (false, State::Settling));
        // Closing stays closing.
        assert_eq!(State::Closing.on_event(), State::Closing);
        assert_eq!(State::Closing.on_check(true), (false, State::Closing));
    }

    /// Every connection carries its `Connection` for its whole life, parked or not (a
    /// third of an idle connection's memory): it stays within jemalloc's 192-byte size
    /// class (the classes are 32 bytes apart from 128 to 256).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_connection_fits_a_192_byte_allocation() {
        let size = std::mem::size_of::<super::Connection>();
        assert!(size <= 192, "Connection is {size} bytes");
    }
}
