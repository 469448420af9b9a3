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
    opts.max_drain = Duration::from_secs(5);
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
