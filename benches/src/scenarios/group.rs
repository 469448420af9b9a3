//! Group (tern only): one member publishes to a group whose other members are mostly
//! offline.
//!
//! The group (`gid`, members `u0` ... `u{members-1}`) must exist on the broker (created with
//! `tern group create` or the admin API); the users are anonymous development users, so
//! the broker must accept clients without a password (the default on loopback). Members
//! `u{online}` and up get a persistent session (clean session false, subscribed to
//! `inbox/{u}/#` at QoS 1) which then goes offline; members `u0` ... `u{online-1}` stay
//! connected, subscribed the same way, and receive (and acknowledge) every message. Then
//! `u0` publishes to `group/{gid}` at QoS 1 from a device of its own, at full speed within
//! its window, for warm-up + duration.
//!
//! A `probe` is called right before the first publish and again once every PUBACK is in
//! and the online members have drained: the caller reads disk counters there (bytes
//! written per message).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_codec::QoS;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Client, ConnectOptions};
use crate::error::{Error, Result};
use crate::run::{run, Options, PubSpec, Shape};
use crate::stats::Report;

const PARALLEL: usize = 64;

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub gid: String,
    pub members: usize,
    /// Members connected during the run (the first ones).
    pub online: usize,
}

impl GroupConfig {
    /// `members` members, 10% of them online.
    pub fn new(gid: &str, members: usize) -> GroupConfig {
        GroupConfig {
            gid: gid.to_string(),
            members,
            online: members.div_ceil(10),
        }
    }

    /// The member user names, `u0` ...
    pub fn member_names(&self) -> Vec<String> {
        (0..self.members).map(|i| format!("u{i}")).collect()
    }
}

/// What a group run measured: the run's report (publisher msgs/s, deliveries to the online
/// members and their latency), and the probe's values before and after.
pub struct GroupOutcome<S> {
    pub report: Report,
    pub offline_sessions: usize,
    pub setup_secs: f64,
    pub before: S,
    pub after: S,
}

fn member(opts: &Options, i: usize, clean: bool, buffer: usize) -> ConnectOptions {
    let mut c = ConnectOptions::new(&format!("{}-g{i}", opts.run_id));
    c.username = Some(format!("u{i}"));
    c.clean_start = clean;
    c.buffer = buffer;
    c
}

/// Runs the scenario (see the module documentation).
pub async fn group<S>(
    opts: &Options,
    cfg: &GroupConfig,
    mut probe: impl FnMut() -> S,
) -> Result<GroupOutcome<S>> {
    if cfg.online == 0 || cfg.online > cfg.members {
        return Err(Error::new("group: 1 <= online <= members"));
    }
    let setup = Instant::now();
    // Offline members: persistent sessions that subscribe and leave.
    let permits = Arc::new(Semaphore::new(PARALLEL));
    let mut set = JoinSet::new();
    for i in cfg.online..cfg.members {
        let conn = member(opts, i, false, 1024);
        let (addr, protocol, permits) = (opts.addr, opts.protocol, permits.clone());
        set.spawn(async move {
            let _p = permits.acquire().await;
            let mut c = Client::connect_with(addr, protocol, &conn).await?;
            c.subscribe(&format!("inbox/u{i}/#"), QoS::AtLeastOnce)
                .await?;
            c.writer.disconnect().await;
            Ok::<_, Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| Error::new(format!("member task failed: {e}")))??;
    }
    // Online members.
    let mut set = JoinSet::new();
    for i in 0..cfg.online {
        let conn = member(opts, i, true, 16 * 1024);
        let (addr, protocol, permits) = (opts.addr, opts.protocol, permits.clone());
        set.spawn(async move {
            let _p = permits.acquire().await;
            let mut c = Client::connect_with(addr, protocol, &conn).await?;
            c.subscribe(&format!("inbox/u{i}/#"), QoS::AtLeastOnce)
                .await?;
            Ok::<_, Error>((i, c))
        });
    }
    let mut online: Vec<Option<Client>> = (0..cfg.online).map(|_| None).collect();
    while let Some(r) = set.join_next().await {
        let (i, c) = r.map_err(|e| Error::new(format!("member task failed: {e}")))??;
        online[i] = Some(c);
    }
    let subs: Vec<Client> = online.into_iter().flatten().collect();
    let mut publisher = ConnectOptions::new(&format!("{}-gpub", opts.run_id));
    publisher.username = Some("u0".to_string());
    let publisher = Client::connect_with(opts.addr, opts.protocol, &publisher).await?;
    let setup_secs = setup.elapsed().as_secs_f64();
    // Let the sessions' writes settle before the first reading.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let before = probe();
    let spec = PubSpec::new(opts, &format!("group/{}", cfg.gid), QoS::AtLeastOnce, None);
    let out = run(opts, vec![(publisher, spec)], subs, true).await?;
    let after = probe();
    let report = out.report(
        "group",
        Shape {
            qos: QoS::AtLeastOnce,
            publishers: 1,
            subscribers: cfg.online,
            copies: cfg.online as u64,
        },
        true,
    );
    Ok(GroupOutcome {
        report,
        offline_sessions: cfg.members - cfg.online,
        setup_secs,
        before,
        after,
    })
}
