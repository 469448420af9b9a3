//! One MQTT listener: its bound socket, the transport it speaks ([`super::transport`]),
//! and its accept loop, which hands each admitted socket to a callback (the server's: it
//! starts the connection).
//!
//! At accept, in this order: the connect rate (a token bucket: beyond it the listener stops
//! calling `accept`, so a reconnect storm waits in the kernel's accept queue instead of
//! competing with established clients), then the connection limits ([`super::admission`]:
//! beyond those the socket is closed at once). The TLS and WebSocket handshakes run in the
//! connection's task, under its connect timeout.
//!
//! Accepted sockets are not registered with the runtime's I/O driver here: a plain TCP
//! connection reads its CONNECT and writes its CONNACK directly, and usually parks before
//! it ever needs the driver (see [`super::transport`]).

use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::admission::{admit, Permits, Places};
use super::rate::TokenBucket;
use super::transport::{tls_acceptor, TlsSetupError, Upgrade};
use crate::config::{Config, ListenerKind, ListenerLimits, ListenerSpec};
use crate::metrics::Metrics;

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
pub(crate) struct Endpoint {
    pub(crate) kind: ListenerKind,
    pub(crate) local_addr: SocketAddr,
    /// Whether clients without a password are accepted here (`allow_anonymous`).
    pub(crate) anonymous_allowed: bool,
    pub(crate) limits: ListenerLimits,
    pub(crate) upgrade: Upgrade,
}

/// A socket admitted by a listener: non-blocking, not registered with the runtime.
pub(crate) struct Admitted {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) endpoint: Arc<Endpoint>,
    /// Its places under the connection limits, held until the connection ends.
    pub(crate) permits: Permits,
}

/// A bound listener, not yet accepting.
pub(crate) struct Listener {
    socket: AsyncFd<mio::net::TcpListener>,
    endpoint: Arc<Endpoint>,
}

impl Listener {
    /// Loads the certificate (TLS, WSS) and binds the address.
    pub(crate) async fn bind(
        spec: &ListenerSpec,
        config: &Config,
    ) -> Result<Listener, ListenerError> {
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

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr
    }

    pub(crate) fn kind(&self) -> ListenerKind {
        self.endpoint.kind
    }

    /// Accepts until `stop` changes (to true), handing each admitted socket to `serve`,
    /// whose future runs as a task of this listener's; returns the tasks still running (the
    /// server drains them once the router has told them to close).
    pub(crate) async fn run<F>(
        self,
        metrics: Arc<Metrics>,
        all_connections: Arc<Semaphore>,
        mut stop: watch::Receiver<bool>,
        serve: impl Fn(Admitted) -> F,
    ) -> JoinSet<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Listener { socket, endpoint } = self;
        let limits = &endpoint.limits;
        let places = Arc::new(Places::new(
            all_connections,
            limits.max_connections,
            limits.max_connections_per_ip,
            metrics.open_connections(endpoint.kind),
        ));
        let mut pace = TokenBucket::new(limits.max_connects_per_sec.into(), Instant::now());
        let mut connections = JoinSet::new();
        let mut accept_backoff = Duration::from_millis(5);
        tracing::info!(listener = %endpoint.kind, addr = %endpoint.local_addr, "listening");
        loop {
            if let Some(wait) = pace.as_mut().and_then(|p| p.wait(1.0, Instant::now())) {
                metrics.accept_paced(endpoint.kind);
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
                        let Some(permits) = admit(&places, peer, endpoint.kind, &metrics) else {
                            drop(stream);
                            continue;
                        };
                        // A connection that parks (see `parking`) leaves this set: the
                        // parking lot tracks it from then on.
                        connections.spawn(serve(Admitted {
                            stream,
                            endpoint: endpoint.clone(),
                            permits,
                        }));
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
