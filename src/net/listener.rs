//! One MQTT listener: its bound socket, the transport it speaks ([`crate::transport`]), and
//! the limits applied at accept, before a connection costs anything more than a file
//! descriptor.
//!
//! At accept, in this order: the connect rate (a token bucket: beyond it the listener stops
//! calling `accept`, so a reconnect storm waits in the kernel's accept queue instead of
//! competing with established clients), then the broker-wide connection limit, the
//! listener's own, and the per-IP limit (beyond those the socket is closed at once). The
//! TLS and WebSocket handshakes run in the connection's task, under its connect timeout.
//!
//! Accepted sockets are not registered with the runtime's I/O driver here: a plain TCP
//! connection reads its CONNECT and writes its CONNACK directly, and usually parks before
//! it ever needs the driver (see [`crate::transport`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, ListenerKind, ListenerLimits, ListenerSpec};
use crate::connection::{self, Accepted, Context};
use crate::metrics::{Metrics, RefuseReason};
use crate::rate::TokenBucket;
use crate::transport::{tls_acceptor, TlsSetupError, Upgrade};

/// WebSocket framing on top of the largest MQTT packet.
const WS_SLACK: usize = 64;

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("cannot listen on {addr} (listeners.{kind}): {source}")]
    Bind {
        kind: ListenerKind,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listeners.{kind}: {source}")]
    Tls {
        kind: ListenerKind,
        source: TlsSetupError,
    },
}

/// What a connection knows of the listener that accepted it.
pub struct Endpoint {
    pub kind: ListenerKind,
    pub local_addr: SocketAddr,
    /// Whether clients without a password are accepted here (`allow_anonymous`).
    pub anonymous_allowed: bool,
    pub limits: ListenerLimits,
    pub upgrade: Upgrade,
}

/// A bound listener, not yet accepting.
pub struct Listener {
    socket: AsyncFd<mio::net::TcpListener>,
    endpoint: Arc<Endpoint>,
}

impl Listener {
    /// Loads the certificate (TLS, WSS) and binds the address.
    pub async fn bind(spec: &ListenerSpec, config: &Config) -> Result<Listener, ListenerError> {
        let tls = match &spec.tls {
            Some((cert, key)) => {
                Some(
                    tls_acceptor(cert, key).map_err(|source| ListenerError::Tls {
                        kind: spec.kind,
                        source,
                    })?,
                )
            }
            None => None,
        };
        let bind_error = |source| ListenerError::Bind {
            kind: spec.kind,
            addr: spec.listen,
            source,
        };
        // mio's bind is tokio's (SO_REUSEADDR, backlog 1024); its accept hands out
        // non-blocking sockets that nothing has registered yet.
        let socket = mio::net::TcpListener::bind(spec.listen).map_err(bind_error)?;
        // SAFETY: the descriptor is the listener's, which owns it and keeps it open for its
        // whole life; nothing replaces the listener inside the `AsyncFd`.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
            .map_err(|refused| bind_error(refused.into_parts().1))?;
        let local_addr = socket.get_ref().local_addr().map_err(bind_error)?;
        let endpoint = Endpoint {
            kind: spec.kind,
            local_addr,
            anonymous_allowed: config.allow_anonymous.allows(local_addr),
            limits: spec.limits.clone(),
            upgrade: Upgrade {
                tls,
                ws_path: spec.ws_path.as_deref().map(Arc::from),
                max_ws_message: config.limits.max_packet_size as usize + WS_SLACK,
            },
        };
        Ok(Listener {
            socket,
            endpoint: Arc::new(endpoint),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr
    }

    pub fn kind(&self) -> ListenerKind {
        self.endpoint.kind
    }

    /// Accepts until `stop` changes (to true), then returns the connections still running (the
    /// server drains them once the router has told them to close).
    pub async fn run(
        self,
        ctx: Arc<Context>,
        all_connections: Arc<Semaphore>,
        mut stop: watch::Receiver<bool>,
    ) -> JoinSet<()> {
        let Listener { socket, endpoint } = self;
        let limits = &endpoint.limits;
        let places = Arc::new(Places {
            all: all_connections,
            mine: (limits.max_connections > 0).then(|| Semaphore::new(limits.max_connections)),
            per_ip: PerIp::new(limits.max_connections_per_ip),
            open: ctx.metrics.open_connections(endpoint.kind),
        });
        let mut pace = TokenBucket::new(limits.max_connects_per_sec.into(), Instant::now());
        let mut connections = JoinSet::new();
        let mut accept_backoff = Duration::from_millis(5);
        tracing::info!(listener = %endpoint.kind, addr = %endpoint.local_addr, "listening");
        loop {
            if let Some(wait) = pace.as_mut().and_then(|p| p.wait(1.0, Instant::now())) {
                ctx.metrics.accept_paced(endpoint.kind);
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = accept(&socket) => match accepted {
                    Ok((stream, peer)) => {
                        accept_backoff = Duration::from_millis(5);
                        if let Some(pace) = &mut pace {
                            pace.spend(1);
                        }
                        let Some(permits) = admit(&places, peer, &endpoint, &ctx.metrics) else {
                            drop(stream);
                            continue;
                        };
                        let accepted = Box::new(Accepted {
                            stream,
                            endpoint: endpoint.clone(),
                            ctx: ctx.clone(),
                            permits,
                        });
                        // A connection that parks (see `parking.rs`) leaves this set: the
                        // parking lot tracks it from then on.
                        connections.spawn(connection::serve(accepted));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(listener = %endpoint.kind, "accept failed: {e}");
                        tokio::time::sleep(accept_backoff).await;
                        accept_backoff = (accept_backoff * 2).min(Duration::from_secs(1));
                    }
                },
            }
        }
        connections
    }
}

/// A listener's limits on open connections, and its gauge of them: what each connection's
/// [`Permits`] gives back when it ends.
/// The next connection from the accept queue, as a non-blocking socket not registered with
/// the runtime. Cancel safe: nothing is accepted until the listener is ready and polled.
async fn accept(
    listener: &AsyncFd<mio::net::TcpListener>,
) -> std::io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        match ready.try_io(|listener| listener.get_ref().accept()) {
            Ok(accepted) => {
                let (socket, peer) = accepted?;
                return Ok((std::net::TcpStream::from(OwnedFd::from(socket)), peer));
            }
            // The queue is empty (readiness cleared): wait for the next connection.
            Err(_would_block) => continue,
        }
    }
}

struct Places {
    /// The broker's `limits.max_connections`, shared by all listeners.
    all: Arc<Semaphore>,
    /// The listener's own `max_connections`.
    mine: Option<Semaphore>,
    per_ip: PerIp,
    /// `tern_connections` for this listener.
    open: Gauge,
}

/// What a connection holds for its whole life, parked or not: its places under the
/// listener's limits (dropping it frees them) and its peer's address. 32 bytes: one
/// pointer to the listener's [`Places`] rather than a permit, a guard and a table pointer
/// for each limit, and the address without what nothing here uses.
pub struct Permits {
    places: Arc<Places>,
    peer: PeerAddr,
    /// The peer's IP is counted in `places.per_ip` (the listener limits connections per
    /// address).
    per_ip: bool,
}

impl Permits {
    /// Where the connection comes from.
    pub fn peer(&self) -> SocketAddr {
        self.peer.into()
    }
}

impl Drop for Permits {
    fn drop(&mut self) {
        let places = &self.places;
        places.all.add_permits(1);
        if let Some(mine) = &places.mine {
            mine.add_permits(1);
        }
        if self.per_ip {
            places.per_ip.leave(SocketAddr::from(self.peer).ip());
        }
        places.open.dec();
    }
}

/// A socket address in 20 bytes instead of `SocketAddr`'s 32: IPv6 flow info and scope
/// id are not kept (nothing reads them). Every connection carries its peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PeerAddr {
    /// An IPv4 address as its IPv4-mapped IPv6 form.
    ip: [u8; 16],
    port: u16,
    v4: bool,
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> PeerAddr {
        let (ip, v4) = match addr.ip() {
            IpAddr::V4(ip) => (ip.to_ipv6_mapped(), true),
            IpAddr::V6(ip) => (ip, false),
        };
        PeerAddr {
            ip: ip.octets(),
            port: addr.port(),
            v4,
        }
    }
}

impl From<PeerAddr> for SocketAddr {
    fn from(addr: PeerAddr) -> SocketAddr {
        let ip = Ipv6Addr::from(addr.ip);
        let ip = match ip.to_ipv4_mapped() {
            Some(v4) if addr.v4 => IpAddr::V4(v4),
            _ => IpAddr::V6(ip),
        };
        SocketAddr::new(ip, addr.port)
    }
}

/// The connection limits, checked at accept; `None` when one is reached (logged).
fn admit(
    places: &Arc<Places>,
    peer: SocketAddr,
    endpoint: &Endpoint,
    metrics: &Metrics,
) -> Option<Permits> {
    let refused = |reason: RefuseReason, why: &str| {
        metrics.connect_refused(reason);
        tracing::warn!(listener = %endpoint.kind, %peer, "{why}: closing the new connection");
        None
    };
    let Ok(all) = places.all.try_acquire() else {
        return refused(
            RefuseReason::ConnectionLimit,
            "limits.max_connections reached",
        );
    };
    let mine = match &places.mine {
        Some(mine) => match mine.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) => {
                return refused(
                    RefuseReason::ConnectionLimit,
                    "the listener's max_connections reached",
                )
            }
        },
        None => None,
    };
    let per_ip = match places.per_ip.enter(peer.ip()) {
        Ok(counted) => counted,
        Err(()) => {
            return refused(
                RefuseReason::PerIpLimit,
                "max_connections_per_ip reached for this address",
            )
        }
    };
    // Given back by `Permits::drop` from here on.
    all.forget();
    if let Some(mine) = mine {
        mine.forget();
    }
    metrics.connection_accepted(endpoint.kind);
    places.open.inc();
    Some(Permits {
        places: places.clone(),
        peer: peer.into(),
        per_ip,
    })
}

/// Connections per source address, for `max_connections_per_ip`.
struct PerIp {
    max: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn new(max: usize) -> PerIp {
        PerIp {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more connection from `ip`, to [`PerIp::leave`] when it ends;
    /// `Ok(false)` when there is no limit (nothing is counted).
    fn enter(&self, ip: IpAddr) -> Result<bool, ()> {
        if self.max == 0 {
            return Ok(false);
        }
        // The map only holds counts: a panic elsewhere cannot leave it inconsistent.
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return Err(());
        }
        *count += 1;
        Ok(true)
    }

    fn leave(&self, ip: IpAddr) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counts_places_and_frees_them() {
        let table = PerIp::new(2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(table.enter(a), Ok(true));
        assert_eq!(table.enter(a), Ok(true));
        assert!(table.enter(a).is_err());
        assert_eq!(table.enter(b), Ok(true));
        table.leave(a);
        assert!(table.enter(a).is_ok());
        assert!(table.enter(a).is_err());
        table.leave(a);
        table.leave(a);
        table.leave(b);
        assert!(
            table.counts.lock().unwrap().is_empty(),
            "no count is kept at zero"
        );
        assert_eq!(PerIp::new(0).enter(a), Ok(false));
    }

    #[test]
    fn peer_addresses_keep_their_family_ip_and_port() {
        for text in [
            "127.0.0.2:1883",
            "[::1]:8883",
            "[::ffff:10.0.0.1]:40000",
            "[fe80::1]:1",
            "0.0.0.0:0",
        ] {
            let addr: SocketAddr = text.parse().unwrap();
            let back = SocketAddr::from(PeerAddr::from(addr));
            assert_eq!(back, addr, "{text}");
            assert_eq!(back.is_ipv4(), addr.is_ipv4(), "{text}");
        }
        assert!(std::mem::size_of::<PeerAddr>() <= 20);
    }
}
