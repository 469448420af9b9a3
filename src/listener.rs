//! One MQTT listener: its bound socket, the transport it speaks ([`crate::transport`]), and
//! the limits applied at accept, before a connection costs anything more than a file
//! descriptor.
//!
//! At accept, in this order: the connect rate (a token bucket: beyond it the listener stops
//! calling `accept`, so a reconnect storm waits in the kernel's accept queue instead of
//! competing with established clients), then the broker-wide connection limit, the
//! listener's own, and the per-IP limit (beyond those the socket is closed at once). The
//! TLS and WebSocket handshakes run in the connection's task, under its connect timeout.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, ListenerKind, ListenerLimits, ListenerSpec};
use crate::connection::{self, Accepted, Context};
use crate::metrics::{ConnectionGuard, Metrics, RefuseReason};
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
    socket: TcpListener,
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
        let socket = TcpListener::bind(spec.listen).await.map_err(bind_error)?;
        let local_addr = socket.local_addr().map_err(bind_error)?;
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
        let mine =
            (limits.max_connections > 0).then(|| Arc::new(Semaphore::new(limits.max_connections)));
        let per_ip = Arc::new(PerIp::new(limits.max_connections_per_ip));
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
                accepted = socket.accept() => match accepted {
                    Ok((stream, peer)) => {
                        accept_backoff = Duration::from_millis(5);
                        if let Some(pace) = &mut pace {
                            pace.spend(1);
                        }
                        let Some(permits) = admit(&all_connections, mine.as_ref(), &per_ip, peer, &endpoint, &ctx.metrics) else {
                            drop(stream);
                            continue;
                        };
                        let accepted = Box::new(Accepted {
                            stream,
                            peer,
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

/// What a connection holds for its whole life, parked or not; dropping it frees its places.
pub struct Permits {
    _all: OwnedSemaphorePermit,
    _mine: Option<OwnedSemaphorePermit>,
    _ip: Option<IpPlace>,
    /// Counts the connection as open in the metrics.
    _open: ConnectionGuard,
}

/// The connection limits, checked at accept; `None` when one is reached (logged).
fn admit(
    all: &Arc<Semaphore>,
    mine: Option<&Arc<Semaphore>>,
    per_ip: &Arc<PerIp>,
    peer: SocketAddr,
    endpoint: &Endpoint,
    metrics: &Metrics,
) -> Option<Permits> {
    let refused = |reason: RefuseReason, why: &str| {
        metrics.connect_refused(reason);
        tracing::warn!(listener = %endpoint.kind, %peer, "{why}: closing the new connection");
        None
    };
    let Ok(all) = all.clone().try_acquire_owned() else {
        return refused(
            RefuseReason::ConnectionLimit,
            "limits.max_connections reached",
        );
    };
    let mine = match mine {
        Some(mine) => match mine.clone().try_acquire_owned() {
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
    let ip = match per_ip.enter(peer.ip()) {
        Ok(place) => place,
        Err(()) => {
            return refused(
                RefuseReason::PerIpLimit,
                "max_connections_per_ip reached for this address",
            )
        }
    };
    Some(Permits {
        _all: all,
        _mine: mine,
        _ip: ip,
        _open: metrics.connection_opened(endpoint.kind),
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

    /// A place for one more connection from `ip`; `Ok(None)` when there is no limit.
    fn enter(self: &Arc<Self>, ip: IpAddr) -> Result<Option<IpPlace>, ()> {
        if self.max == 0 {
            return Ok(None);
        }
        // The map only holds counts: a panic elsewhere cannot leave it inconsistent.
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return Err(());
        }
        *count += 1;
        Ok(Some(IpPlace {
            table: self.clone(),
            ip,
        }))
    }
}

struct IpPlace {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpPlace {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_counts_places_and_frees_them() {
        let table = Arc::new(PerIp::new(2));
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let one = table.enter(a).unwrap();
        let _two = table.enter(a).unwrap();
        assert!(table.enter(a).is_err());
        let _other = table.enter(b).unwrap();
        drop(one);
        assert!(table.enter(a).is_ok());
        assert!(Arc::new(PerIp::new(0)).enter(a).unwrap().is_none());
    }
}
