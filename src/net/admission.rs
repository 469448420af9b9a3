//! Admission: the limits a listener applies at accept, before a connection costs more than
//! a file descriptor (the broker-wide connection limit, the listener's own, and the
//! per-IP limit), and the [`Permits`] a connection holds for its whole life.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Semaphore;

use crate::config::ListenerKind;
use crate::metrics::{Metrics, RefuseReason};

/// A listener's limits on open connections, and its gauge of them: what each connection's
/// [`Permits`] gives back when it ends.
pub(crate) struct Places {
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
pub(crate) struct Permits {
    places: Arc<Places>,
    peer: PeerAddr,
    /// The peer's IP is counted in `places.per_ip` (the listener limits connections per
    /// address).
    per_ip: bool,
}

impl Permits {
    /// Where the connection comes from.
    pub(crate) fn peer(&self) -> SocketAddr {
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

impl Places {
    /// The limits of one listener: `all` is the broker's (shared by every listener),
    /// `max_connections` and `max_connections_per_ip` the listener's own (0: none).
    pub(crate) fn new(
        all: Arc<Semaphore>,
        max_connections: usize,
        max_connections_per_ip: usize,
        open: Gauge,
    ) -> Places {
        Places {
            all,
            mine: (max_connections > 0).then(|| Semaphore::new(max_connections)),
            per_ip: PerIp::new(max_connections_per_ip),
            open,
        }
    }
}

/// The connection limits, checked at accept; `None` when one is reached (logged).
pub(crate) fn admit(
    places: &Arc<Places>,
    peer: SocketAddr,
    listener: ListenerKind,
    metrics: &Metrics,
) -> Option<Permits> {
    let refused = |reason: RefuseReason, why: &str| {
        metrics.connect_refused(reason);
        tracing::warn!(%listener, %peer, "{why}: closing the new connection");
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
    metrics.connection_accepted(listener);
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
