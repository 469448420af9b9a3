//! From the accepted socket to CONNACK: the transport's own handshake (TLS, WebSocket),
//! CONNECT, the login, and attaching to the router, all within `limits.connect_timeout_secs`.
//! The decisions are `protocol::handshake`'s; here is the I/O, and the one place a
//! refusing CONNACK is written ([`refuse`]).

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::BytesMut;
use tern_codec::{decode, Connect, DecodeError, Packet, Protocol, ReasonCode};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::inbound::InboundBudget;
use super::park::ReadClock;
use super::{Buffers, Connection, ConnectionError, Context, Occasional, State};
use crate::im::acl::will_allowed;
use crate::im::auth::{authenticate, AuthError, Credentials, Identity};
use crate::net::admission::Permits;
use crate::net::listener::Endpoint;
use crate::net::transport::{upgrade, Stream};
use crate::protocol::catch_up::CatchUp;
use crate::protocol::handshake::{self as protocol, refusal};
use crate::protocol::session::Session;
use crate::router::mailbox::{mailbox, BROADCAST_LANE};
use crate::router::ConnectRequest;

/// First read buffer of a connection, for its CONNECT (a larger one grows it).
const CONNECT_BUFFER: usize = 512;
/// First write buffer of a connection, for its CONNACK (with the properties of an MQTT 5
/// one: an assigned client id, the limits; a larger one grows it).
const CONNACK_BUFFER: usize = 96;

/// How long before the connect timeout a cluster claim of the client id gives up.
const CLAIM_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// A socket the listener accepted, handed to the connection in one box: an async fn keeps
/// its arguments for its whole life, and this one lives as long as the connection.
pub(crate) struct Accepted {
    /// Non-blocking, not registered with the runtime's I/O driver.
    pub(crate) stream: std::net::TcpStream,
    pub(crate) endpoint: Arc<Endpoint>,
    pub(crate) ctx: Arc<Context>,
    /// The connection's places under the connection limits, held until it ends, and its
    /// peer's address.
    pub(crate) permits: Permits,
}

/// The upgrade, CONNECT, and the handshake proper, under the connect timeout.
pub(super) async fn handshake(accepted: Box<Accepted>) -> Result<Box<Connection>, ConnectionError> {
    let Accepted {
        stream,
        endpoint,
        ctx,
        permits,
    } = *accepted;
    let _ = stream.set_nodelay(true);
    let timeout = ctx.limits.connect_timeout;
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
    let mut rbuf = BytesMut::new();
    let read = read_connect(&mut stream, &mut rbuf, ctx.limits.max_packet_size);
    let connect = match tokio::time::timeout_at(deadline, read).await {
        Err(_) => return Err(ConnectionError::ConnectTimeout(timeout)),
        Ok(Err(ConnectionError::Malformed(DecodeError::UnsupportedProtocolVersion(level)))) => {
            // The spec's answer to an unknown level is a 3.1.1-format CONNACK 0x01
            // [MQTT-3.1.2-2]; MQTT 5 clients read the same byte as 0x84's older form.
            let code = ReasonCode::UnsupportedProtocolVersion;
            let _ = write_connack(&mut stream, Protocol::V311, refusal(code)).await;
            return Err(DecodeError::UnsupportedProtocolVersion(level).into());
        }
        Ok(result) => result?,
    };
    let protocol = connect.protocol;
    let peer = permits.peer();
    let accepting = accept(&connect, &endpoint, peer, &ctx, deadline);
    match tokio::time::timeout_at(deadline, accepting).await {
        Err(_) => Err(ConnectionError::ConnectTimeout(timeout)),
        Ok(Err(Refusal::Code(code))) => {
            write_connack(&mut stream, protocol, refusal(code)).await?;
            Err(ConnectionError::Refused(code))
        }
        Ok(Err(Refusal::Failed(e))) => Err(e),
        Ok(Ok(accepted)) => Ok(accepted.into_connection(stream, rbuf, permits, &endpoint, ctx)),
    }
}

/// Why a CONNECT was not accepted: a refusal (answered with CONNACK) or a failure.
enum Refusal {
    Code(ReasonCode),
    Failed(ConnectionError),
}

impl<E: Into<ConnectionError>> From<E> for Refusal {
    fn from(e: E) -> Refusal {
        Refusal::Failed(e.into())
    }
}

/// What accepting a CONNECT produced, before the connection exists.
struct Admitted {
    negotiated: protocol::Negotiated,
    session: Session,
    attached: crate::router::Attached,
    mailbox: crate::router::mailbox::Mailbox,
    operator: bool,
    named: bool,
    connack: tern_codec::ConnAck,
}

/// Checks, identifies and negotiates a CONNECT and attaches its session.
async fn accept(
    connect: &Connect,
    endpoint: &Endpoint,
    peer: std::net::SocketAddr,
    ctx: &Arc<Context>,
    deadline: Instant,
) -> Result<Admitted, Refusal> {
    protocol::check(connect).map_err(Refusal::Code)?;
    let (client_id, assigned) = protocol::client_id(connect, || format!("tern-{:016x}", rand_id()));
    let identity = match login(ctx, endpoint, connect, &client_id).await {
        Ok(identity) => identity.sharing_name_with(&client_id),
        Err(e) => {
            let code = match e {
                AuthError::BadCredentials => ReasonCode::BadUserNameOrPassword,
                AuthError::NotAuthorized => ReasonCode::NotAuthorized,
                AuthError::Storage(_) => ReasonCode::ServerUnavailable,
            };
            tracing::info!(client_id = %client_id, user = ?connect.username, %peer, listener = %endpoint.kind, "login refused: {e}");
            return Err(Refusal::Code(code));
        }
    };
    let operator = identity.operator;
    // Logged in under a user name: what an ACL file's `user` lines and `%u` name.
    let named = !identity.anonymous || connect.username.is_some();
    let acl_user = named.then_some(&*identity.user);
    let acl_client_id = client_id.clone();
    let mut negotiated = protocol::negotiate(
        connect,
        client_id,
        assigned,
        &ctx.limits.connect,
        |topic| {
            will_allowed(topic, operator) && ctx.access.may_publish(acl_user, &acl_client_id, topic)
        },
    )
    .map_err(|code| {
        if let Some(will) = &connect.will {
            tracing::info!(user = %identity.user, %peer, topic = %will.topic, "will topic refused");
        }
        Refusal::Code(code)
    })?;
    let (postbox, mailbox) = mailbox(ctx.limits.outbound_channel_capacity, BROADCAST_LANE);
    let request = ConnectRequest {
        client_id: negotiated.client_id.clone(),
        user: identity.user.clone(),
        clean_start: negotiated.clean_start,
        expiry_secs: negotiated.expiry_secs,
        protocol: negotiated.protocol,
        postbox,
    };
    // On a cluster node, the client id is first claimed cluster-wide: a connection of it
    // on another node is closed before this one is attached.
    let claim = match &ctx.sessions {
        Some(registry) => {
            // Given up a little before the connect timeout, so that the refusal is sent.
            let give_up = deadline - CLAIM_MARGIN.min(ctx.limits.connect_timeout / 4);
            let claim = registry
                .claim(&negotiated.client_id, &identity.user, give_up)
                .await;
            match claim {
                Ok(claim) => Some(claim),
                Err(e) => {
                    tracing::info!(client_id = %negotiated.client_id, user = %identity.user, %peer, "CONNECT refused: {e}");
                    return Err(Refusal::Code(e.reason_code()));
                }
            }
        }
        None => None,
    };
    if let (Some(claim), Some(states)) = (&claim, &ctx.session_states) {
        let resume = super::resume::Resume {
            client_id: &negotiated.client_id,
            user: &identity.user,
            clean_start: negotiated.clean_start,
            persistent: negotiated.expiry_secs > 0,
            revision: claim.revision(),
        };
        Box::pin(super::resume::prepare(ctx, states, resume))
            .await?
            .map_err(Refusal::Code)?;
    }
    let attached = ctx.router.connect(request).await?.map_err(Refusal::Code)?;
    if let Some(claim) = claim {
        claim.attached(attached.conn).await;
    }
    let persistent = negotiated.expiry_secs > 0 || attached.backlog_upto.is_some();
    let params =
        negotiated.session_params(attached.session, persistent, ctx.limits.session.clone());
    let mut session = Session::new(params);
    if attached.session_present && persistent {
        let id = negotiated.client_id.to_string();
        let ids = super::outbound::read_store(ctx, move |store| store.inbound_qos2(&id)).await?;
        session.restore_inbound_qos2(ids);
    }
    let connack = negotiated.connack(attached.session_present);
    Ok(Admitted {
        negotiated,
        session,
        attached,
        mailbox,
        operator,
        named,
        connack,
    })
}

impl Admitted {
    fn into_connection(
        mut self,
        stream: Stream,
        rbuf: BytesMut,
        permits: Permits,
        endpoint: &Endpoint,
        ctx: Arc<Context>,
    ) -> Box<Connection> {
        let will = self.negotiated.will(self.attached.session);
        let negotiated = &self.negotiated;
        let client_id = negotiated.client_id.clone();
        tracing::info!(
            client_id = %client_id,
            user = %self.attached.user,
            peer = %permits.peer(),
            listener = %endpoint.kind,
            protocol = ?negotiated.protocol,
            session_present = self.attached.session_present,
            persistent = self.session.params().persistent,
            "client connected"
        );
        let occasional = Occasional {
            will,
            expiry_override: None,
            budget: InboundBudget::new(endpoint, &ctx.metrics),
        };
        // Boxed: moved by value into `run`'s future, the connection would be stored twice
        // in the task (a moved-from local keeps its slot in the async state machine).
        let mut connection = Box::new(Connection {
            stream,
            permits,
            listener: endpoint.kind,
            buffers: Some(Box::new(Buffers {
                rbuf: if rbuf.is_empty() {
                    BytesMut::new()
                } else {
                    rbuf
                },
                // Room for the CONNACK alone: a new connection usually parks with it, and
                // the lot writes and frees it (a busy connection's first write grows it).
                wbuf: BytesMut::with_capacity(CONNACK_BUFFER),
                ..Buffers::default()
            })),
            client_id,
            conn_id: self.attached.conn,
            session: self.session,
            // 1.5 times 65,535 s is 98 million ms: a u32 holds it.
            keep_alive_ms: NonZeroU32::new(u32::from(negotiated.keep_alive_secs) * 1500),
            last_read: ReadClock::at(ctx.millis_since_start(Instant::now())),
            state: State::Settling,
            operator: self.operator,
            named: self.named,
            mailbox: self.mailbox,
            user: self.attached.user,
            catch_up: CatchUp::resumed(self.attached.backlog_upto, self.attached.sent),
            occasional: (!occasional.is_empty()).then(|| Box::new(occasional)),
            ctx,
        });
        connection.queue_packet(Packet::ConnAck(self.connack));
        connection
    }
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

/// Writes a CONNACK before the connection exists: a refusal, or the unknown protocol
/// level's answer.
async fn write_connack(
    stream: &mut Stream,
    protocol: Protocol,
    connack: tern_codec::ConnAck,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    Packet::ConnAck(connack)
        .encode(protocol, &mut buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    stream.write_all(&buf).await
}

/// Who the client is (see `im::auth`): the store read and argon2 run on a blocking thread.
async fn login(
    ctx: &Arc<Context>,
    endpoint: &Endpoint,
    connect: &Connect,
    client_id: &str,
) -> Result<Identity, AuthError> {
    if let Some(token) = connect
        .password
        .as_deref()
        .filter(|password| ctx.access.takes_token(password))
    {
        // Microseconds of work: no hop to a blocking thread.
        return ctx
            .access
            .token_login(connect.username.as_deref(), token, &ctx.limits.operators);
    }
    let anonymous_allowed = endpoint.anonymous_allowed;
    let anonymous_by_client_id = ctx.limits.anonymous_by_client_id;
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
                operators: &ctx.limits.operators,
            },
        );
    }
    let store = ctx.writer.store().clone();
    let username = connect.username.as_ref().map(|u| u.to_string());
    let password = connect.password.clone();
    let client_id = client_id.to_string();
    let operators = ctx.limits.operators.clone();
    // Its turn first: argon2 is CPU and memory that a storm of logins must not multiply.
    let _turn = ctx
        .password_checks
        .acquire()
        .await
        .map_err(|e| AuthError::Storage(e.to_string()))?;
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
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u64(crate::protocol::now_ms());
    h.finish()
}
