//! A seeded, fault-injecting TCP proxy for testing clients on a weak network (lifts, trains).
//!
//! [`FlakyProxy`] listens on loopback and forwards each connection to one upstream address with
//! the faults in [`Faults`]: delayed chunks, fragmented writes, random cuts, cuts after a set
//! lifetime (a tunnel) and refused connections. Loss shows up the way TCP shows it: as delay,
//! then maybe a dead connection. Bytes are never removed from the middle of a stream. Real TCP
//! never does that, and it would only corrupt the framing.
//!
//! All decisions come from [`Decider`], a pure PRNG seeded from (seed, connection index, lane).
//! The same seed gives the same decisions to the n-th accepted connection. Timing is still not
//! reproducible: how the peers' bytes are grouped into chunks (and so which chunk a cut lands
//! on), and how connections interleave, depend on the scheduler.

use std::future::pending;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep, sleep_until, Instant};

/// One read per chunk. The buffer has a fixed size, so a slow peer pushes back through TCP
/// instead of making the proxy buffer more.
const READ_BUFFER: usize = 16 * 1024;

/// Pause after a failed accept. Most accept errors (out of descriptors, a reset in the backlog)
/// are transient, and without a pause the loop would spin on them.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// The faults to inject. `Faults::default()` injects none.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Seed for every decision. See [`Decider`].
    pub seed: u64,
    /// Before each chunk is forwarded it is held back for a random delay in `[0, max_delay]`.
    /// Chunks of one direction are delayed one after another, so bytes are never reordered.
    pub max_delay: Duration,
    /// Probability, per chunk, that the connection is cut (both sides reset, the chunk lost)
    /// instead of the chunk being forwarded.
    pub cut_probability: f64,
    /// A connection lives for a random time in `[min, max]` and is then cut, like a train
    /// entering a tunnel. `None` means no limit.
    pub life: Option<(Duration, Duration)>,
    /// Probability that a new connection is refused: accepted, then reset at once without
    /// contacting the upstream, as if the network were down for a moment.
    pub refuse_probability: f64,
    /// Split each chunk into random smaller writes (1..=remaining bytes each) so the peers have
    /// to handle partial reads.
    pub fragment: bool,
}

/// A snapshot of the proxy's counters. Each counter is read on its own, so the snapshot is not
/// atomic across counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted from clients, refused ones included.
    pub accepted: u64,
    /// Connections refused by `refuse_probability`.
    pub refused: u64,
    /// Connections closed because the upstream could not be reached.
    pub upstream_failed: u64,
    /// Connections cut by `cut_probability`.
    pub cut_random: u64,
    /// Connections cut when their `life` ran out.
    pub cut_life: u64,
    /// Connections cut by [`FlakyProxy::cut_all`].
    pub cut_all: u64,
    /// Bytes written to the upstream.
    pub bytes_to_upstream: u64,
    /// Bytes written to clients.
    pub bytes_to_client: u64,
}

/// The independent random streams of one connection. Each direction has its own stream, so its
/// decisions don't depend on how the two directions interleave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// Decisions made once per connection: [`Decider::refuse`], then [`Decider::life`].
    Connection,
    /// Chunks from the client to the upstream.
    ToUpstream,
    /// Chunks from the upstream to the client.
    ToClient,
}

/// What to do with one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkPlan {
    /// Cut the connection and lose the chunk.
    Cut,
    /// Wait for `delay`, then forward the chunk.
    Forward { delay: Duration },
}

/// A deterministic source of fault decisions, with no I/O. The proxy makes one per connection
/// and lane, and a test can replay one to predict what the proxy will do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decider {
    state: u64,
}

impl Decider {
    /// The stream of decisions for `lane` of the connection accepted `connection`-th (from 0).
    pub fn new(seed: u64, connection: u64, lane: Lane) -> Decider {
        // Each input goes through the mixer so that neighbouring seeds and indices give
        // unrelated streams.
        let lane = match lane {
            Lane::Connection => 1,
            Lane::ToUpstream => 2,
            Lane::ToClient => 3,
        };
        Decider {
            state: mix(mix(mix(seed) ^ connection) ^ lane),
        }
    }

    /// Whether to refuse the connection. This is the first draw of [`Lane::Connection`].
    pub fn refuse(&mut self, faults: &Faults) -> bool {
        self.chance(faults.refuse_probability)
    }

    /// How long the connection may live. This is the second draw of [`Lane::Connection`].
    pub fn life(&mut self, faults: &Faults) -> Option<Duration> {
        let (a, b) = faults.life?;
        let (min, max) = if a <= b { (a, b) } else { (b, a) };
        Some(min + self.duration_up_to(max - min))
    }

    /// The plan for the next chunk of a direction.
    pub fn chunk(&mut self, faults: &Faults) -> ChunkPlan {
        // Both values are drawn every time, so changing the cut probability does not shift the
        // delays drawn after it.
        let cut = self.chance(faults.cut_probability);
        let delay = self.duration_up_to(faults.max_delay);
        if cut {
            ChunkPlan::Cut
        } else {
            ChunkPlan::Forward { delay }
        }
    }

    /// The size of the next write when `remaining` bytes of the chunk are left. This is all of
    /// them unless `fragment` is set.
    pub fn fragment(&mut self, faults: &Faults, remaining: usize) -> usize {
        if !faults.fragment || remaining <= 1 {
            return remaining;
        }
        1 + self.up_to(remaining as u64 - 1) as usize
    }

    /// splitmix64: tiny, fast and good enough for test decisions. No extra dependency needed.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.state)
    }

    /// Uniform in `[0, 1)`, so a probability of 1.0 always fires and 0.0 never does.
    fn chance(&mut self, probability: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < probability
    }

    /// Uniform in `[0, max]`, by multiply-shift. The bias is at most `max / 2^64`.
    fn up_to(&mut self, max: u64) -> u64 {
        ((u128::from(self.next_u64()) * (u128::from(max) + 1)) >> 64) as u64
    }

    fn duration_up_to(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.up_to(nanos))
    }
}

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fault-injecting proxy in front of one upstream. Dropping it stops the accept loop and
/// resets every connection it holds.
pub struct FlakyProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    upstream: SocketAddr,
    faults: Faults,
    /// A watch rather than a flag, so a connection whose life runs out while calm can wait for
    /// the storm.
    calm: watch::Sender<bool>,
    /// Bumped by `cut_all`. Each connection watches it from the moment it is accepted.
    cut_epoch: watch::Sender<u64>,
    counters: Counters,
}

impl Shared {
    fn is_calm(&self) -> bool {
        *self.calm.borrow()
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    upstream_failed: AtomicU64,
    cut_random: AtomicU64,
    cut_life: AtomicU64,
    cut_all: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
}

impl FlakyProxy {
    /// Listens on `127.0.0.1:0` and forwards every accepted connection to `upstream` with
    /// `faults`. Must be called inside a tokio runtime.
    pub async fn start(upstream: SocketAddr, faults: Faults) -> io::Result<FlakyProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            faults,
            calm: watch::Sender::new(false),
            cut_epoch: watch::Sender::new(0),
            counters: Counters::default(),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(FlakyProxy {
            addr,
            shared,
            accept,
        })
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.shared.counters;
        ProxyStats {
            accepted: c.accepted.load(Relaxed),
            refused: c.refused.load(Relaxed),
            upstream_failed: c.upstream_failed.load(Relaxed),
            cut_random: c.cut_random.load(Relaxed),
            cut_life: c.cut_life.load(Relaxed),
            cut_all: c.cut_all.load(Relaxed),
            bytes_to_upstream: c.bytes_to_upstream.load(Relaxed),
            bytes_to_client: c.bytes_to_client.load(Relaxed),
        }
    }

    /// Stops injecting faults so a test can let the system converge. New connections are not
    /// refused, chunks pass through undelayed and whole, and no connection is cut except by
    /// [`cut_all`](Self::cut_all). A life that runs out while calm takes effect at the next
    /// [`storm`](Self::storm). A delay already started still finishes.
    pub fn calm(&self) {
        self.shared.calm.send_replace(true);
    }

    /// Starts injecting faults again after [`calm`](Self::calm).
    pub fn storm(&self) {
        self.shared.calm.send_replace(false);
    }

    /// Resets every connection accepted so far, calm or not. A client whose connect has
    /// returned may still be waiting in the listener's backlog. That connection is not cut:
    /// exchange a byte through the proxy first to be sure it has been accepted.
    pub fn cut_all(&self) {
        self.shared
            .cut_epoch
            .send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }
}

impl Drop for FlakyProxy {
    fn drop(&mut self) {
        // The connection tasks live in the accept task's JoinSet. Aborting that task drops the
        // set, which aborts them and drops (closes) their sockets.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    let mut index: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    // Subscribe here, not in the task, so that a cut_all made just after this
                    // accept still reaches the connection.
                    let cut_epoch = shared.cut_epoch.subscribe();
                    shared.counters.accepted.fetch_add(1, Relaxed);
                    connections.spawn(serve(client, index, Arc::clone(&shared), cut_epoch));
                    index += 1;
                }
                Err(_) => sleep(ACCEPT_BACKOFF).await,
            },
            // Reap finished connections so the set only holds open ones.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// How a connection ended.
enum Outcome {
    /// Both directions ended with EOF.
    Closed,
    /// A read, write or shutdown failed, so one side is gone.
    Broken,
    CutRandom,
    CutLife,
    CutAll,
}

/// Why a direction stopped early.
enum End {
    Cut,
    Broken,
}

async fn serve(
    client: TcpStream,
    index: u64,
    shared: Arc<Shared>,
    mut cut_epoch: watch::Receiver<u64>,
) {
    let faults = &shared.faults;
    let mut decider = Decider::new(faults.seed, index, Lane::Connection);
    let refuse = decider.refuse(faults);
    let deadline = decider.life(faults).map(|life| Instant::now() + life);
    if refuse && !shared.is_calm() {
        shared.counters.refused.fetch_add(1, Relaxed);
        close_abruptly(client);
        return;
    }
    let mut client = client;
    let mut upstream = match TcpStream::connect(shared.upstream).await {
        Ok(upstream) => upstream,
        Err(_) => {
            shared.counters.upstream_failed.fetch_add(1, Relaxed);
            close_abruptly(client);
            return;
        }
    };
    // Without TCP_NODELAY, Nagle would merge the fragments again. If setting it fails, the
    // fragments are just coarser, so the error is ignored.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let outcome = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        let to_upstream = Decider::new(faults.seed, index, Lane::ToUpstream);
        let to_client = Decider::new(faults.seed, index, Lane::ToClient);
        let pumps = async {
            tokio::try_join!(
                pump(
                    client_read,
                    upstream_write,
                    to_upstream,
                    &shared,
                    Lane::ToUpstream
                ),
                pump(
                    upstream_read,
                    client_write,
                    to_client,
                    &shared,
                    Lane::ToClient
                ),
            )
        };
        let mut calm = shared.calm.subscribe();
        tokio::select! {
            result = pumps => match result {
                Ok(_) => Outcome::Closed,
                Err(End::Cut) => Outcome::CutRandom,
                Err(End::Broken) => Outcome::Broken,
            },
            () = life_over(deadline, &mut calm) => Outcome::CutLife,
            Ok(()) = cut_epoch.changed() => Outcome::CutAll,
        }
    };

    let counter = match outcome {
        Outcome::Closed => return,
        // Pass the failure on: the surviving peer sees a reset, as it would if the path died.
        Outcome::Broken => None,
        Outcome::CutRandom => Some(&shared.counters.cut_random),
        Outcome::CutLife => Some(&shared.counters.cut_life),
        Outcome::CutAll => Some(&shared.counters.cut_all),
    };
    // Count before closing, so a test that sees the close also sees the count.
    if let Some(counter) = counter {
        counter.fetch_add(1, Relaxed);
    }
    close_abruptly(client);
    close_abruptly(upstream);
}

/// Forwards one direction until EOF, which it passes on as a half-close. Other directions and
/// the peers may still be talking.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut decider: Decider,
    shared: &Shared,
    lane: Lane,
) -> Result<(), End> {
    let bytes = match lane {
        Lane::ToClient => &shared.counters.bytes_to_client,
        _ => &shared.counters.bytes_to_upstream,
    };
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = from.read(&mut buf).await.map_err(|_| End::Broken)?;
        if n == 0 {
            to.shutdown().await.map_err(|_| End::Broken)?;
            return Ok(());
        }
        let stormy = !shared.is_calm();
        if stormy {
            match decider.chunk(&shared.faults) {
                ChunkPlan::Cut => return Err(End::Cut),
                // Nothing is read while this sleeps, so the delay holds back the whole stream
                // and later bytes can't overtake it.
                ChunkPlan::Forward { delay } if !delay.is_zero() => sleep(delay).await,
                ChunkPlan::Forward { .. } => {}
            }
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let len = if stormy {
                decider.fragment(&shared.faults, rest.len())
            } else {
                rest.len()
            };
            to.write_all(&rest[..len]).await.map_err(|_| End::Broken)?;
            bytes.fetch_add(len as u64, Relaxed);
            rest = &rest[len..];
        }
    }
}

/// Completes when the connection's life has run out while the proxy is stormy.
async fn life_over(deadline: Option<Instant>, calm: &mut watch::Receiver<bool>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => pending().await,
    }
    // Wait for the storm, so that calm() really does let the system converge.
    if calm.wait_for(|&calm| !calm).await.is_err() {
        pending().await
    }
}

/// Closes with a reset instead of a FIN. The peer sees a dead connection and anything still
/// queued is lost, as when the network goes down.
fn close_abruptly(stream: TcpStream) {
    // SO_LINGER 0 makes close() send RST. tokio deprecated `set_linger` because a *non-zero*
    // linger blocks the thread on drop. A zero linger never blocks. Its replacement,
    // `set_zero_linger`, only exists from tokio 1.50, which is above this crate's 1.47 floor.
    // If the call fails, the close is an ordinary FIN, which is still a cut.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::timeout;

    /// A safety net so a broken proxy fails the test instead of hanging it. It is never what a
    /// test asserts on.
    const PATIENCE: Duration = Duration::from_secs(5);
    const MIB: usize = 1024 * 1024;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind echo server");
        let addr = listener.local_addr().expect("echo server address");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = socket.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        addr
    }

    /// Data whose period (251, a prime) does not line up with any buffer size, so a lost,
    /// repeated or reordered block shows.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Sends `data` through the proxy with a half-close at the end, and returns everything
    /// echoed back up to EOF.
    async fn round_trip(proxy: SocketAddr, data: Vec<u8>) -> Vec<u8> {
        let stream = TcpStream::connect(proxy).await.expect("connect to proxy");
        let (mut read, mut write) = stream.into_split();
        let writer = tokio::spawn(async move {
            write.write_all(&data).await.expect("write to proxy");
            write.shutdown().await.expect("half-close");
        });
        let mut echoed = Vec::new();
        timeout(PATIENCE, read.read_to_end(&mut echoed))
            .await
            .expect("echo finished in time")
            .expect("read echo");
        writer.await.expect("writer task");
        echoed
    }

    /// Confirms the path client → proxy → upstream → client is open, so the proxy has accepted
    /// this connection.
    async fn ping(stream: &mut TcpStream) {
        stream.write_all(b"p").await.expect("write ping");
        let mut byte = [0u8; 1];
        timeout(PATIENCE, stream.read_exact(&mut byte))
            .await
            .expect("ping answered in time")
            .expect("read ping");
        assert_eq!(&byte, b"p");
    }

    /// Waits for the stream to be closed. Both EOF and a reset count.
    async fn assert_closed(stream: &mut TcpStream) {
        let mut buf = [0u8; 64];
        let read = timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("connection closed in time");
        match read {
            Ok(0) => {}
            Ok(n) => panic!("expected a closed connection, read {n} bytes"),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                ),
                "unexpected error {e}"
            ),
        }
    }

    #[tokio::test]
    async fn no_faults_passes_one_mib_intact() {
        let proxy = FlakyProxy::start(echo_server().await, Faults::default())
            .await
            .expect("start proxy");
        let data = pattern(MIB);
        assert!(round_trip(proxy.addr(), data.clone()).await == data);
        let stats = proxy.stats();
        assert_eq!(stats.accepted, 1);
        assert_eq!(stats.bytes_to_upstream, MIB as u64);
        assert_eq!(stats.bytes_to_client, MIB as u64);
    }

    #[tokio::test]
    async fn delays_and_fragments_keep_one_mib_intact_and_in_order() {
        let faults = Faults {
            seed: 7,
            max_delay: Duration::from_millis(1),
            fragment: true,
            ..Faults::default()
        };
        let proxy = FlakyProxy::start(echo_server().await, faults)
            .await
            .expect("start proxy");
        let data = pattern(MIB);
        assert!(round_trip(proxy.addr(), data.clone()).await == data);
        let stats = proxy.stats();
        assert_eq!(stats.cut_random + stats.cut_life + stats.refused, 0);
        assert_eq!(stats.bytes_to_client, MIB as u64);
    }

    #[tokio::test]
    async fn certain_cut_closes_the_connection_and_calm_stops_it() {
        let faults = Faults {
            seed: 1,
            cut_probability: 1.0,
            ..Faults::default()
        };
        let proxy = FlakyProxy::start(echo_server().await, faults)
            .await
            .expect("start proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        stream.write_all(b"lost").await.expect("write");
        assert_closed(&mut stream).await;
        assert_eq!(proxy.stats().cut_random, 1);
        assert_eq!(proxy.stats().bytes_to_upstream, 0);

        proxy.calm();
        assert_eq!(round_trip(proxy.addr(), b"calm".to_vec()).await, b"calm");
        proxy.storm();
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        stream.write_all(b"lost").await.expect("write");
        assert_closed(&mut stream).await;
        assert_eq!(proxy.stats().cut_random, 2);
    }

    #[tokio::test]
    async fn certain_refusal_closes_at_once_and_calm_lets_through() {
        let faults = Faults {
            seed: 1,
            refuse_probability: 1.0,
            ..Faults::default()
        };
        let proxy = FlakyProxy::start(echo_server().await, faults)
            .await
            .expect("start proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_closed(&mut stream).await;
        assert_eq!(proxy.stats().accepted, 1);
        assert_eq!(proxy.stats().refused, 1);

        proxy.calm();
        assert_eq!(round_trip(proxy.addr(), b"calm".to_vec()).await, b"calm");
        assert_eq!(proxy.stats().refused, 1);
    }

    #[tokio::test]
    async fn life_limit_cuts_within_the_drawn_bound() {
        let faults = Faults {
            seed: 3,
            life: Some((Duration::from_millis(40), Duration::from_millis(120))),
            ..Faults::default()
        };
        // Replay the connection lane to learn the life the proxy will draw.
        let mut decider = Decider::new(faults.seed, 0, Lane::Connection);
        decider.refuse(&faults);
        let life = decider.life(&faults).expect("a life is drawn");
        assert!((Duration::from_millis(40)..=Duration::from_millis(120)).contains(&life));

        let proxy = FlakyProxy::start(echo_server().await, faults)
            .await
            .expect("start proxy");
        // The proxy starts the clock when it accepts, which is after this point.
        let start = Instant::now();
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        ping(&mut stream).await;
        assert_closed(&mut stream).await;
        let lived = start.elapsed();
        assert!(
            lived >= life,
            "cut after {lived:?}, before its life {life:?}"
        );
        assert!(
            lived < life + Duration::from_millis(500),
            "cut after {lived:?}, far past its life {life:?}"
        );
        assert_eq!(proxy.stats().cut_life, 1);
    }

    #[tokio::test]
    async fn cut_all_closes_open_connections_only() {
        let proxy = FlakyProxy::start(echo_server().await, Faults::default())
            .await
            .expect("start proxy");
        let mut first = TcpStream::connect(proxy.addr()).await.expect("connect");
        let mut second = TcpStream::connect(proxy.addr()).await.expect("connect");
        ping(&mut first).await;
        ping(&mut second).await;
        proxy.cut_all();
        assert_closed(&mut first).await;
        assert_closed(&mut second).await;
        assert_eq!(proxy.stats().cut_all, 2);

        let mut later = TcpStream::connect(proxy.addr()).await.expect("connect");
        ping(&mut later).await;
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_connections() {
        let proxy = FlakyProxy::start(echo_server().await, Faults::default())
            .await
            .expect("start proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        ping(&mut stream).await;
        drop(proxy);
        assert_closed(&mut stream).await;
    }

    #[tokio::test]
    async fn unreachable_upstream_is_counted_and_closed() {
        // Bind then drop a listener to get a loopback port where nothing listens.
        let upstream = {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .expect("bind");
            listener.local_addr().expect("address")
        };
        let proxy = FlakyProxy::start(upstream, Faults::default())
            .await
            .expect("start proxy");
        let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_closed(&mut stream).await;
        assert_eq!(proxy.stats().upstream_failed, 1);
    }

    /// Draws a connection's decisions the way the proxy does, in a form that can be compared.
    fn script(seed: u64, connection: u64, faults: &Faults) -> Vec<String> {
        let mut out = Vec::new();
        let mut decider = Decider::new(seed, connection, Lane::Connection);
        out.push(format!("refuse {}", decider.refuse(faults)));
        out.push(format!("life {:?}", decider.life(faults)));
        for lane in [Lane::ToUpstream, Lane::ToClient] {
            let mut decider = Decider::new(seed, connection, lane);
            for _ in 0..20 {
                out.push(format!("{lane:?} {:?}", decider.chunk(faults)));
                out.push(format!("{lane:?} {}", decider.fragment(faults, 1000)));
            }
        }
        out
    }

    #[test]
    fn same_seed_gives_same_decisions() {
        let faults = Faults {
            seed: 42,
            max_delay: Duration::from_millis(50),
            cut_probability: 0.3,
            life: Some((Duration::from_secs(1), Duration::from_secs(10))),
            refuse_probability: 0.5,
            fragment: true,
        };
        assert_eq!(script(42, 0, &faults), script(42, 0, &faults));
        assert_ne!(script(42, 0, &faults), script(43, 0, &faults));
        assert_ne!(script(42, 0, &faults), script(42, 1, &faults));
        assert_ne!(
            Decider::new(42, 0, Lane::ToUpstream),
            Decider::new(42, 0, Lane::ToClient)
        );
    }

    #[test]
    fn decisions_stay_within_their_bounds() {
        let faults = Faults {
            seed: 9,
            max_delay: Duration::from_millis(5),
            cut_probability: 0.25,
            fragment: true,
            ..Faults::default()
        };
        let mut decider = Decider::new(faults.seed, 0, Lane::ToClient);
        let mut cuts = 0;
        for _ in 0..10_000 {
            match decider.chunk(&faults) {
                ChunkPlan::Cut => cuts += 1,
                ChunkPlan::Forward { delay } => assert!(delay <= faults.max_delay),
            }
            let mut remaining = 777;
            while remaining > 0 {
                let len = decider.fragment(&faults, remaining);
                assert!((1..=remaining).contains(&len));
                remaining -= len;
            }
        }
        // A wide band: this only catches a broken probability, not an unlucky seed.
        assert!((2000..3000).contains(&cuts), "{cuts} cuts in 10000");

        let never = Faults::default();
        let always = Faults {
            cut_probability: 1.0,
            refuse_probability: 1.0,
            ..Faults::default()
        };
        for connection in 0..1000 {
            let mut d = Decider::new(0, connection, Lane::Connection);
            assert!(!d.refuse(&never));
            assert!(d.refuse(&always));
            assert_eq!(d.chunk(&always), ChunkPlan::Cut);
            assert_eq!(
                d.chunk(&never),
                ChunkPlan::Forward {
                    delay: Duration::ZERO
                }
            );
            assert_eq!(d.fragment(&never, 500), 500);
        }
    }
}
