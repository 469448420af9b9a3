//! Metrics over real sockets: the Prometheus exposition on the admin listener's `/metrics`
//! after real traffic, and the `$SYS/broker/...` topics as an MQTT client sees them.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tern_codec::{Packet, Protocol, QoS, ReasonCode};
use tern_conformance::{publish_packet, Broker, RawClient, EVENT_TIMEOUT};

/// `GET {admin}/metrics` without a token: (status, content type, body).
async fn scrape(broker: &Broker) -> (u16, String, String) {
    let url = format!("{}/metrics", broker.admin_url());
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let mut response = agent
            .get(&url)
            .call()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = response.body_mut().read_to_string().expect("body");
        (status, content_type, body)
    })
    .await
    .expect("request thread")
}

/// The samples of an exposition: `name{labels}` to value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Scrapes until `ready` holds for the samples (counters are added in batches, a moment
/// after the packets that moved them), or [`EVENT_TIMEOUT`] passes; returns the last ones.
async fn scrape_until(
    broker: &Broker,
    ready: impl Fn(&HashMap<String, f64>) -> bool,
) -> HashMap<String, f64> {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let (status, _, text) = scrape(broker).await;
        assert_eq!(status, 200, "{text}");
        let samples = samples(&text);
        if ready(&samples) || tokio::time::Instant::now() >= deadline {
            return samples;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no {series} in the exposition: {samples:?}"))
}

/// Sends a QoS 1 PUBLISH and returns its PUBACK's reason.
async fn publish_reason(client: &mut RawClient, packet_id: u16, topic: &str) -> ReasonCode {
    let p = publish_packet(
        topic,
        QoS::AtLeastOnce,
        packet_id,
        Bytes::from_static(b"forged"),
    );
    client.send(Packet::Publish(p)).await;
    match client.recv().await {
        Some(Packet::PubAck(ack)) => ack.reason,
        other => panic!("expected the PUBACK of {topic}, got {other:?}"),
    }
}

#[tokio::test]
async fn prometheus_metrics_count_real_traffic() {
    let broker = Broker::start_with(|c| c.limits.max_queued_messages = 1).await;

    // Served without a token, as OpenMetrics text, every series present from the start.
    let (status, content_type, text) = scrape(&broker).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    let before = samples(&text);
    assert_eq!(value(&before, "tern_messages_received_total"), 0.0);
    assert_eq!(
        value(
            &before,
            "tern_messages_dropped_total{reason=\"queue_full\"}"
        ),
        0.0
    );
    let version = format!(
        "tern_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&before, &version), 1.0);

    // An offline persistent session with room for one queued message.
    let (mut offline, _) = RawClient::open_ok(broker.addr, Protocol::V5, "offline", true, |c| {
        c.properties.session_expiry_interval = Some(3600);
    })
    .await;
    offline.subscribe(1, "m/#", QoS::AtLeastOnce).await;
    offline.disconnect().await;

    let (mut sub, _) = RawClient::open_ok(broker.addr, Protocol::V5, "sub", true, |_| {}).await;
    sub.subscribe(1, "m/#", QoS::AtLeastOnce).await;
    let (mut publisher, _) =
        RawClient::open_ok(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    for (i, topic) in ["m/1", "m/2", "m/3"].into_iter().enumerate() {
        let packet_id = u16::try_from(i + 1).expect("small");
        publisher
            .publish_qos1(packet_id, topic, "hello", i == 0)
            .await;
        sub.expect_publish(topic).await;
    }
    // `$SYS` is the broker's: refused (0x87) and counted.
    assert_eq!(
        publish_reason(&mut publisher, 9, "$SYS/broker/uptime").await,
        ReasonCode::NotAuthorized
    );
    // A login with a password for a user that does not exist.
    let (_refused, ack) = RawClient::open(broker.addr, Protocol::V5, "ghost", true, |c| {
        c.username = Some("ghost".into());
        c.password = Some(Bytes::from_static(b"nope"));
    })
    .await;
    assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);

    let minimums = [
        ("tern_messages_received_total", 4.0),
        ("tern_messages_sent_total", 3.0),
        // 3 PUBLISH packets of 12+ bytes each way, plus CONNECT/SUBSCRIBE and their acks.
        ("tern_received_bytes_total", 36.0),
        ("tern_sent_bytes_total", 36.0),
        ("tern_connections_accepted_total{listener=\"tcp\"}", 4.0),
        ("tern_connections{listener=\"tcp\"}", 2.0),
        ("tern_publish_to_deliver_seconds_count", 3.0),
        ("tern_publish_to_deliver_seconds_bucket{le=\"+Inf\"}", 3.0),
        // The offline session, the retained message and its queue entry were stored (in
        // one group commit at the least, under load).
        ("tern_storage_write_seconds_count", 1.0),
        (
            "tern_connects_refused_total{reason=\"bad_credentials\"}",
            1.0,
        ),
    ];
    let after = scrape_until(&broker, |s| {
        minimums
            .iter()
            .all(|(series, min)| s.get(*series).is_some_and(|v| v >= min))
    })
    .await;
    let at_least = |series: &str, min: f64| {
        let got = value(&after, series);
        assert!(got >= min, "{series} = {got}, expected at least {min}");
    };
    for (series, min) in minimums {
        at_least(series, min);
    }
    assert_eq!(
        value(
            &after,
            "tern_connects_refused_total{reason=\"bad_credentials\"}"
        ),
        1.0
    );
    // m/1 was queued for the offline session; m/2 and m/3 did not fit.
    assert_eq!(
        value(&after, "tern_messages_dropped_total{reason=\"queue_full\"}"),
        2.0
    );
    assert_eq!(
        value(
            &after,
            "tern_publishes_refused_total{reason=\"system_topic\"}"
        ),
        1.0
    );
    assert_eq!(value(&after, "tern_sessions"), 3.0);
    assert_eq!(value(&after, "tern_clients_connected"), 2.0);
    assert_eq!(value(&after, "tern_queued_messages"), 1.0);
    assert!(value(&after, "tern_retained_messages") >= 1.0);
    broker.stop().await;
}

/// Reads PUBLISH packets until `done` says the topics seen so far (with their last payload)
/// are enough; fails after [`EVENT_TIMEOUT`].
async fn collect(
    client: &mut RawClient,
    mut done: impl FnMut(&HashMap<String, String>) -> bool,
) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while !done(&seen) {
            match client.recv().await {
                Some(Packet::Publish(p)) => {
                    client.ack(&p).await;
                    seen.insert(
                        p.topic.to_string(),
                        String::from_utf8_lossy(&p.payload).into_owned(),
                    );
                }
                Some(_) => {}
                None => panic!("the broker closed the connection"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("$SYS topics did not all arrive; got {seen:?}"));
    seen
}

#[tokio::test]
async fn sys_topics_reach_sys_subscribers_only() {
    let broker = Broker::start_with(|c| c.metrics.sys_interval_secs = 1).await;
    let (mut everything, _) =
        RawClient::open_ok(broker.addr, Protocol::V5, "everything", true, |_| {}).await;
    everything.subscribe(1, "#", QoS::AtMostOnce).await;
    let (mut watcher, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "watcher", true, |_| {}).await;
    watcher.subscribe(1, "$SYS/#", QoS::AtMostOnce).await;

    let expected = [
        "$SYS/broker/version",
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/store/messages/count",
    ];
    // Retained at once for a new subscriber (the first tick runs at start), then live.
    let seen = collect(&mut watcher, |seen| {
        expected.iter().all(|t| seen.contains_key(*t))
    })
    .await;
    let version = &seen["$SYS/broker/version"];
    assert_eq!(*version, format!("tern {}", env!("CARGO_PKG_VERSION")));
    assert!(seen["$SYS/broker/uptime"].ends_with(" seconds"), "{seen:?}");
    assert!(
        seen["$SYS/broker/clients/connected"].parse::<u64>().is_ok(),
        "{seen:?}"
    );

    // Counters move: after three publishes, a later tick reports them.
    let (mut publisher, _) =
        RawClient::open_ok(broker.addr, Protocol::V5, "pub", true, |_| {}).await;
    for packet_id in 1..=3 {
        publisher
            .publish_qos1(packet_id, "plain/topic", "x", false)
            .await;
    }
    let counted = |seen: &HashMap<String, String>| {
        seen.get("$SYS/broker/messages/received")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= 3)
    };
    collect(&mut watcher, counted).await;

    // Clients cannot forge them: refused, and the retained value stays the broker's.
    assert_eq!(
        publish_reason(&mut publisher, 7, "$SYS/broker/version").await,
        ReasonCode::NotAuthorized
    );
    let (mut late, _) = RawClient::open_ok(broker.addr, Protocol::V5, "late", true, |_| {}).await;
    late.subscribe(1, "$SYS/broker/version", QoS::AtMostOnce)
        .await;
    let seen = collect(&mut late, |seen| !seen.is_empty()).await;
    assert_eq!(seen["$SYS/broker/version"], *version);

    // `#` got the plain messages and nothing of `$SYS`.
    let mut plain = 0;
    while let Ok(Some(packet)) = everything.recv_within(Duration::from_millis(1500)).await {
        match packet {
            Packet::Publish(p) => {
                assert!(!p.topic.starts_with('$'), "'#' matched {}", p.topic);
                plain += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(plain, 3);
    broker.stop().await;
}

/// A subscription matching more retained messages than the session's queue holds gets
/// what fits; the rest are not sent, and counted as dropped (`queue_full`), not lost
/// silently.
#[tokio::test]
async fn retained_messages_past_the_queue_bound_are_counted() {
    let broker = Broker::start_with(|c| {
        c.limits.max_queued_messages = 5;
        c.limits.max_inflight = 2;
    })
    .await;
    let (mut publisher, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "loader", true, |_| {}).await;
    for i in 0..20u16 {
        publisher
            .publish_qos1(i + 1, &format!("kept/{i}"), "v", true)
            .await;
    }
    // A subscriber that does not acknowledge: 2 in flight, 5 queued, 13 beyond the bound.
    let (mut sub, _) =
        RawClient::open_ok(broker.addr, Protocol::V311, "viewer", true, |_| {}).await;
    let options = tern_codec::SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..tern_codec::SubscriptionOptions::default()
    };
    sub.send(Packet::Subscribe(tern_codec::Subscribe {
        packet_id: 1,
        properties: tern_codec::Properties::default(),
        filters: vec![("kept/#".into(), options)],
    }))
    .await;
    let mut publishes = 0;
    while let Ok(Some(packet)) = sub.recv_within(Duration::from_millis(500)).await {
        if matches!(packet, Packet::Publish(_)) {
            publishes += 1;
        }
    }
    assert_eq!(
        publishes, 2,
        "the in-flight window (max_inflight 2) before any PUBACK"
    );
    let samples = scrape_until(&broker, |s| {
        s.get("tern_messages_dropped_total{reason=\"queue_full\"}") == Some(&13.0)
    })
    .await;
    assert_eq!(
        samples.get("tern_messages_dropped_total{reason=\"queue_full\"}"),
        Some(&13.0)
    );
    broker.stop().await;
}
