//! `$SYS/broker/...`: the broker's state as MQTT topics, for clients and dashboards that
//! speak MQTT rather than Prometheus. Here the messages, one retained QoS 0 message per
//! topic, from the broker's counters and the router's counts; `crate::router::sys`
//! publishes them. Topic names follow mosquitto's where one exists; the values are
//! decimal text.
//!
//! | topic | value |
//! | --- | --- |
//! | `$SYS/broker/version` | `tern 0.1.0` (published once) |
//! | `$SYS/broker/uptime` | `123 seconds` |
//! | `$SYS/broker/clients/connected` | sessions with a connected client |
//! | `$SYS/broker/clients/total` | sessions, connected or not |
//! | `$SYS/broker/subscriptions/count` | subscriptions |
//! | `$SYS/broker/messages/received` | PUBLISH packets received (mosquitto counts every packet here) |
//! | `$SYS/broker/messages/sent` | PUBLISH packets sent |
//! | `$SYS/broker/publish/messages/dropped` | messages not delivered to a subscriber (every reason) |
//! | `$SYS/broker/bytes/received` | bytes read from client sockets |
//! | `$SYS/broker/bytes/sent` | bytes written to client sockets |
//! | `$SYS/broker/retained messages/count` | retained messages (these included) |
//! | `$SYS/broker/store/messages/count` | QoS 1/2 messages queued for offline sessions |

use std::sync::Arc;

use bytes::Bytes;
use tern_codec::{ByteString, PropertyFields, QoS};

use super::{Metrics, RouterStats};
use crate::protocol::Message;

/// One tick's messages; `with_static` adds those that never change (the version).
pub(crate) fn sys_messages(
    metrics: &Metrics,
    stats: &RouterStats,
    with_static: bool,
) -> Vec<Arc<Message>> {
    let totals = metrics.totals();
    let mut values: Vec<(&str, String)> = Vec::with_capacity(13);
    if with_static {
        values.push((
            "$SYS/broker/version",
            format!("tern {}", env!("CARGO_PKG_VERSION")),
        ));
    }
    values.extend([
        (
            "$SYS/broker/uptime",
            format!("{} seconds", metrics.uptime().as_secs()),
        ),
        ("$SYS/broker/clients/connected", stats.connected.to_string()),
        ("$SYS/broker/clients/total", stats.sessions.to_string()),
        (
            "$SYS/broker/subscriptions/count",
            stats.subscriptions.to_string(),
        ),
        (
            "$SYS/broker/messages/received",
            totals.messages_received.to_string(),
        ),
        (
            "$SYS/broker/messages/sent",
            totals.messages_sent.to_string(),
        ),
        (
            "$SYS/broker/publish/messages/dropped",
            totals.dropped.to_string(),
        ),
        (
            "$SYS/broker/bytes/received",
            totals.bytes_received.to_string(),
        ),
        ("$SYS/broker/bytes/sent", totals.bytes_sent.to_string()),
        (
            "$SYS/broker/retained messages/count",
            stats.retained.to_string(),
        ),
        ("$SYS/broker/store/messages/count", stats.queued.to_string()),
    ]);
    values
        .into_iter()
        .map(|(topic, value)| {
            Arc::new(Message {
                topic: ByteString::from(topic),
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: PropertyFields {
                    // UTF-8 text, for v5 subscribers.
                    payload_format_indicator: Some(1),
                    ..PropertyFields::default()
                }
                .into(),
                expires_at_ms: None,
                origin: None,
                received_at: None,
                cluster_seq: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(messages: &[Arc<Message>], topic: &str) -> Option<String> {
        messages
            .iter()
            .find(|m| m.topic == topic)
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
    }

    #[test]
    fn a_tick_reports_the_counters_and_the_routers_counts() {
        let metrics = Metrics::new();
        metrics.add_received(3, 120);
        metrics.add_sent(5, 400);
        let stats = RouterStats {
            sessions: 4,
            connected: 2,
            subscriptions: 6,
            retained: 7,
            queued: 8,
        };
        let first = sys_messages(&metrics, &stats, true);
        let version = format!("tern {}", env!("CARGO_PKG_VERSION"));
        assert_eq!(payload(&first, "$SYS/broker/version"), Some(version));
        let later = sys_messages(&metrics, &stats, false);
        assert_eq!(payload(&later, "$SYS/broker/version"), None);
        for (topic, value) in [
            ("$SYS/broker/uptime", "0 seconds"),
            ("$SYS/broker/clients/connected", "2"),
            ("$SYS/broker/clients/total", "4"),
            ("$SYS/broker/subscriptions/count", "6"),
            ("$SYS/broker/messages/received", "3"),
            ("$SYS/broker/messages/sent", "5"),
            ("$SYS/broker/publish/messages/dropped", "0"),
            ("$SYS/broker/bytes/received", "120"),
            ("$SYS/broker/bytes/sent", "400"),
            ("$SYS/broker/retained messages/count", "7"),
            ("$SYS/broker/store/messages/count", "8"),
        ] {
            assert_eq!(payload(&later, topic).as_deref(), Some(value), "{topic}");
        }
        assert!(later.iter().all(|m| m.retain && m.qos == QoS::AtMostOnce));
        assert!(later.iter().all(|m| crate::im::topics::is_system(&m.topic)));
    }
}
