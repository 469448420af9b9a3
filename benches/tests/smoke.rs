//! Smoke test: every scenario runs for about a second against an in-process tern broker
//! with small counts, and messages flow (QoS 1 pairs lose nothing).

use std::net::SocketAddr;
use std::time::Duration;

use tern_bench::{scenarios, BroadcastDmConfig, Options};
use tern_codec::{Protocol, QoS};
use tern_conformance::Broker;

fn short(addr: SocketAddr) -> Options {
    let mut opts = Options::new(addr);
    opts.duration = Duration::from_millis(800);
    opts.warmup = Duration::from_millis(200);
    opts.drain_idle = Duration::from_millis(300);
    // A debug-build broker falls far behind full-speed QoS 0 publishers: don't wait for
    // its whole backlog.
    opts.max_drain = Duration::from_secs(1);
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_scenario_moves_messages() {
    let broker = Broker::start().await;
    let opts = short(broker.addr);

    let r = scenarios::fan_in(&opts, 2, QoS::AtMostOnce)
        .await
        .expect("fan-in");
    println!("{}", r.line());
    assert!(r.received > 0 && r.received_in_window > 0, "{r:?}");
    assert!(r.received <= r.sent, "{r:?}");
    assert!(r.latency.is_some(), "{r:?}");

    let r = scenarios::pairs(&opts, 5, QoS::AtLeastOnce)
        .await
        .expect("pairs");
    println!("{}", r.line());
    assert!(r.received_in_window > 0, "{r:?}");
    assert_eq!(r.acked, r.sent, "every QoS 1 publish acknowledged: {r:?}");
    assert_eq!(r.received, r.acked, "no QoS 1 loss: {r:?}");
    let l = r.latency.expect("latency measured");
    assert!(l.p50_us <= l.p99_us && l.p99_us <= l.max_us, "{l:?}");

    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let r = scenarios::fan_out(&opts, 20, qos).await.expect("fan-out");
        println!("{}", r.line());
        assert!(r.received_in_window > 0, "{r:?}");
        assert!(r.received <= r.expected, "{r:?}");
        if qos == QoS::AtLeastOnce {
            assert_eq!(r.received, r.expected, "no QoS 1 loss: {r:?}");
        }
    }

    let mut v5 = short(broker.addr);
    v5.protocol = Protocol::V5;
    let r = scenarios::latency(&v5, 2000.0, QoS::AtLeastOnce)
        .await
        .expect("latency");
    println!("{}", r.line());
    println!("{}", r.json());
    assert!(r.received_in_window > 0, "{r:?}");
    // Paced: about 2000/s over the whole second of the run, far from full speed.
    assert!(r.sent <= 2600, "{r:?}");
    assert_eq!(r.received, r.acked, "{r:?}");
    assert!(r.latency.is_some(), "{r:?}");

    broker.stop().await;
}

#[tokio::test]
async fn refused_connection_is_an_error_not_a_panic() {
    // Bind then drop a listener: nothing listens on that port any more.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let err = scenarios::fan_in(&short(addr), 1, QoS::AtMostOnce)
        .await
        .expect_err("no broker");
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broadcast_dm_moves_dms_and_broadcasts() {
    let broker = Broker::start_with(|c| c.im.operators = vec!["ops".into()]).await;
    let mut opts = short(broker.addr);
    opts.protocol = Protocol::V5;
    // Generous: on a loaded CI machine the debug-build broker can fall seconds behind.
    opts.max_drain = Duration::from_secs(20);
    let mut cfg = BroadcastDmConfig::new(50);
    cfg.dm_rate = 200.0;
    cfg.broadcast_rate = Some(100.0);
    let r = scenarios::broadcast_dm(&opts, &cfg)
        .await
        .expect("broadcast-dm");
    println!("{}", r.text());
    println!("{}", r.json());
    assert_eq!(r.subscribers_lost, 0, "{r:?}");
    // DMs flow in both phases, and QoS 1 loses none.
    assert!(
        r.quiet.dm_received > 0 && r.broadcast.dm_received > 0,
        "{r:?}"
    );
    assert!(
        r.quiet.dm_latency.is_some() && r.broadcast.dm_latency.is_some(),
        "{r:?}"
    );
    assert!(r.broadcast.dm_ack_latency.is_some(), "{r:?}");
    assert!(r.broadcast.dm_latency_from_due.is_some(), "{r:?}");
    assert_eq!(r.dm_due, r.dm_sent, "alice gave up no DM: {r:?}");
    assert_eq!(r.dm_acked, r.dm_sent, "{r:?}");
    assert_eq!(r.dm_received, r.dm_sent, "{r:?}");
    // Broadcasts only in phase 2, and they reach the subscribers.
    assert_eq!(r.quiet.broadcast_deliveries, 0, "{r:?}");
    assert!(r.broadcasts_sent > 0, "{r:?}");
    assert!(r.broadcast.broadcast_deliveries > 0, "{r:?}");
    assert!(r.broadcast_received > 0, "{r:?}");
    assert!(r.broadcast_received <= r.broadcast_expected, "{r:?}");
    assert!(r.broadcast_latency.is_some(), "{r:?}");
    // bob gets the broadcasts too (beside his DMs), and they are not counted as DMs.
    assert!(r.recipient_broadcasts_received > 0, "{r:?}");

    // Someone who is not an operator cannot broadcast: a clear error, not empty numbers.
    cfg.operator = "mallory".into();
    cfg.subscribers = 5;
    let err = scenarios::broadcast_dm(&opts, &cfg)
        .await
        .expect_err("not an operator");
    assert!(err.to_string().contains("operator"), "{err}");

    broker.stop().await;
}

/// A request to the broker's admin API (plain HTTP/1.1 on loopback); returns the status.
async fn admin_post(broker: &Broker, path: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = broker.admin.expect("admin API on");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin connect");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        broker.admin_token(),
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("admin write");
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.expect("admin read");
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn comparison_scenarios_at_small_scale() {
    use tern_bench::scenarios::durable::{self, DurableConfig};
    use tern_bench::scenarios::{ConnectionsConfig, GroupConfig, RetainedConfig};

    let broker = Broker::start().await;
    let opts = short(broker.addr);

    // Connections, spread over source addresses; the RSS is this process's (the broker
    // runs inside it).
    let mut cfg = ConnectionsConfig::new(60);
    cfg.per_source = 25;
    cfg.settle = Duration::from_millis(100);
    let r = scenarios::connections(&opts, &cfg, Some(std::process::id()))
        .await
        .expect("connections");
    println!("{}", r.line());
    assert_eq!((r.clients, r.lost), (60, 0), "{r:?}");
    assert!(
        r.connects_per_sec() > 0.0 && r.rss_per_connection_kib().is_some(),
        "{r:?}"
    );
    // The broker's CPU time (this process's) is read; 10 ms ticks may make it 0.
    assert!(
        r.cpu_per_connection_us().is_some_and(|us| us >= 0.0),
        "{r:?}"
    );
    assert!(r.json().contains("\"clients\":60"), "{}", r.json());

    // Heartbeats: clients pinging every second, counted over a window of 1.5 s: each of
    // them gets at least one PINGRESP in it.
    let mut cfg = ConnectionsConfig::new(20);
    cfg.per_source = 25;
    cfg.first_source = 4;
    cfg.keep_alive = 2;
    cfg.settle = Duration::from_millis(100);
    cfg.heartbeat_window = Duration::from_millis(1500);
    let r = scenarios::connections(&opts, &cfg, Some(std::process::id()))
        .await
        .expect("heartbeats");
    println!("{}", r.line());
    assert_eq!(r.lost, 0, "{r:?}");
    assert!(r.heartbeats >= 20, "{r:?}");
    assert!(r.cpu_per_heartbeat_us().is_some(), "{r:?}");

    // Retained: every match arrives, for the few and for the subtree.
    let mut cfg = RetainedConfig::new(400);
    cfg.subtree = 100;
    cfg.samples = 2;
    // The broker runs in this process: the subscriptions wait for it to go quiet.
    cfg.broker_pid = Some(std::process::id());
    let r = scenarios::retained(&opts, &cfg).await.expect("retained");
    println!("{}", r.line());
    assert_eq!(r.topics, 400, "{r:?}");
    assert!(r.settle_secs.is_some_and(|s| s >= 0.0), "{r:?}");
    assert!(r.few.complete() && r.subtree.complete(), "{r:?}");
    assert_eq!((r.few.expected, r.subtree.expected), (10, 100));
    assert_eq!(r.subtree.all_ms.len(), 2, "{r:?}");

    // Durable: sessions go offline, get messages queued, the broker restarts, the first
    // queued message comes back, then every session drains its whole queue.
    let cfg = DurableConfig::new(5, 30);
    durable::create_sessions(&opts, &cfg)
        .await
        .expect("sessions");
    let p = durable::publish_count(
        &opts,
        "dpub",
        None,
        &DurableConfig::topic(&opts),
        30,
        Duration::from_secs(10),
    )
    .await
    .expect("publish");
    assert_eq!((p.sent, p.acked), (30, 30), "{p:?}");
    let broker = broker.restart().await;
    let mut opts = opts;
    opts.addr = broker.addr;
    durable::first_delivery(&opts, 0, Duration::from_secs(5))
        .await
        .expect("first queued message after the restart");
    let d = durable::drain_sessions(&opts, &cfg).await.expect("drain");
    println!("{d:?}");
    assert_eq!(
        (d.expected, d.unique, d.complete_sessions),
        (150, 150, 5),
        "{d:?}"
    );

    // Group: created through the admin API; online members get every message.
    let cfg = GroupConfig::new("g1", 20);
    let members: Vec<String> = cfg
        .member_names()
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect();
    let body = format!("{{\"gid\":\"g1\",\"members\":[{}]}}", members.join(","));
    assert_eq!(admin_post(&broker, "/v1/groups", &body).await, 201);
    let mut calls = 0;
    let out = scenarios::group(&opts, &cfg, || {
        calls += 1;
        calls
    })
    .await
    .expect("group");
    println!("{}", out.report.line());
    assert_eq!((out.before, out.after, out.offline_sessions), (1, 2, 18));
    assert!(out.report.acked > 0, "{:?}", out.report);
    assert_eq!(
        out.report.received,
        out.report.acked * 2,
        "{:?}",
        out.report
    );

    broker.stop().await;
}
