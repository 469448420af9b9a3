//! The exposition: every series from the start, and each one moving.

use std::time::Duration;

use super::*;
use crate::config::ListenerKind;

/// The value of one sample line (`name{labels} value`) of the exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

#[test]
fn every_series_is_exposed_from_the_start() {
    let metrics = Metrics::new();
    let text = metrics.encode().expect("encodes");
    for series in [
        "tern_connections{listener=\"tcp\"}",
        "tern_connections{listener=\"wss\"}",
        "tern_connections_accepted_total{listener=\"ws\"}",
        "tern_connects_refused_total{reason=\"bad_credentials\"}",
        "tern_connects_refused_total{reason=\"connect_timeout\"}",
        "tern_messages_received_total",
        "tern_messages_sent_total",
        "tern_received_bytes_total",
        "tern_sent_bytes_total",
        "tern_messages_dropped_total{reason=\"queue_full\"}",
        "tern_messages_dropped_total{reason=\"broadcast_lane_full\"}",
        "tern_publishes_refused_total{reason=\"system_topic\"}",
        "tern_slow_consumers_disconnected_total",
        "tern_publish_to_deliver_seconds_count",
        "tern_publish_to_deliver_seconds_bucket{le=\"0.00005\"}",
        "tern_publish_to_deliver_seconds_bucket{le=\"+Inf\"}",
        "tern_storage_write_seconds_count",
        "tern_storage_sync_seconds_count",
        "tern_sessions",
        "tern_clients_connected",
        "tern_subscriptions",
        "tern_retained_messages",
        "tern_queued_messages",
        "tern_uptime_seconds",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
    }
    let version = format!(
        "tern_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&text, &version), Some(1.0), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn counters_gauges_and_histograms_move() {
    let metrics = Metrics::new();
    let open = metrics.open_connections(ListenerKind::Tls);
    for _ in 0..2 {
        metrics.connection_accepted(ListenerKind::Tls);
        open.inc();
    }
    metrics.connect_refused(RefuseReason::NotAuthorized);
    metrics.add_received(2, 100);
    let mut traffic = Traffic::default();
    traffic.read(10);
    traffic.publish_received();
    traffic.written(3, 300);
    traffic.flush(&metrics);
    assert_eq!(traffic, Traffic::default(), "flush starts again from zero");
    traffic.flush(&metrics);
    metrics.dropped(DropReason::OutboundFull);
    metrics.dropped_many(DropReason::Expired, 4);
    metrics.publish_refused(PublishRefusal::NotMember);
    metrics.slow_consumer_disconnected();
    let mut latencies = LatencyTally::default();
    metrics.tally_publish_to_deliver(&mut latencies, Duration::from_micros(70));
    metrics.add_publish_to_deliver(latencies);
    tern_storage::WriterObserver::write(&metrics, Duration::from_millis(2), 5, true);
    tern_storage::WriterObserver::sync(&metrics, Duration::from_millis(3));
    metrics.record_router(&RouterStats {
        sessions: 7,
        connected: 2,
        subscriptions: 9,
        retained: 4,
        queued: 11,
    });
    open.dec();

    let text = metrics.encode().expect("encodes");
    for (series, value) in [
        ("tern_connections{listener=\"tls\"}", 1.0),
        ("tern_connections_accepted_total{listener=\"tls\"}", 2.0),
        ("tern_connections_accepted_total{listener=\"tcp\"}", 0.0),
        (
            "tern_connects_refused_total{reason=\"not_authorized\"}",
            1.0,
        ),
        ("tern_messages_received_total", 3.0),
        ("tern_received_bytes_total", 110.0),
        ("tern_messages_sent_total", 3.0),
        ("tern_sent_bytes_total", 300.0),
        ("tern_messages_dropped_total{reason=\"outbound_full\"}", 1.0),
        ("tern_messages_dropped_total{reason=\"expired\"}", 4.0),
        ("tern_publishes_refused_total{reason=\"not_member\"}", 1.0),
        ("tern_slow_consumers_disconnected_total", 1.0),
        ("tern_publish_to_deliver_seconds_count", 1.0),
        (
            "tern_publish_to_deliver_seconds_bucket{le=\"0.00005\"}",
            0.0,
        ),
        ("tern_publish_to_deliver_seconds_bucket{le=\"0.0001\"}", 1.0),
        ("tern_publish_to_deliver_seconds_bucket{le=\"+Inf\"}", 1.0),
        ("tern_storage_write_seconds_count", 1.0),
        ("tern_storage_write_seconds_sum", 0.002),
        ("tern_storage_sync_seconds_count", 1.0),
        ("tern_sessions", 7.0),
        ("tern_clients_connected", 2.0),
        ("tern_subscriptions", 9.0),
        ("tern_retained_messages", 4.0),
        ("tern_queued_messages", 11.0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    }
    let totals = metrics.totals();
    assert_eq!(
        totals,
        Totals {
            messages_received: 3,
            messages_sent: 3,
            bytes_received: 110,
            bytes_sent: 300,
            dropped: 5,
        }
    );
}

#[test]
fn label_values_are_distinct_and_in_index_order() {
    fn check<E: Copy + std::fmt::Debug>(all: &[E], index: impl Fn(E) -> usize) {
        for (i, e) in all.iter().enumerate() {
            assert_eq!(index(*e), i, "{e:?}");
        }
    }
    check(&ListenerKind::ALL, |e| e as usize);
    check(RefuseReason::ALL, |e| e as usize);
    check(DropReason::ALL, |e| e as usize);
    check(PublishRefusal::ALL, |e| e as usize);
    let mut values: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    values.sort_unstable();
    values.dedup();
    assert_eq!(values.len(), DropReason::ALL.len());
}
