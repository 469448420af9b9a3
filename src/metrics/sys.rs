//! `$SYS/broker/...`: the broker's state as MQTT topics, for clients and dashboards that
//! speak MQTT rather than Prometheus.
//!
//! Every interval a task asks the router for its counts ([`Command::Stats`]) and publishes
//! one retained QoS 0 message per topic ([`Command::SysPublish`]): subscribers of `$SYS/#`
//! get each update live, and a new subscriber gets the latest values at once. The router
//! keeps these retained messages in memory only (a write to storage per topic per tick would
//! be pure waste: they are recomputed after a restart anyway), and refuses client publishes
//! and wills on `$SYS` (see [`crate::router::is_sys_topic`]). Topic names follow mosquitto's
//! where one exists; the values are decimal text.
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
use std::time::Duration;

use bytes::Bytes;
use tern_codec::{ByteString, PropertyFields, QoS};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::Metrics;
use crate::message::Message;
use crate::router::{Command, RouterHandle, RouterStats};

/// Publishes the `$SYS/broker/...` topics every `interval` (the first at once), until the
/// router stops (the task ends with it, it need not be aborted). A zero `interval`
/// publishes nothing: the task ends at once.
pub fn spawn_sys_publisher(
    metrics: Arc<Metrics>,
    router: RouterHandle,
    interval: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if interval.is_zero() {
            return;
        }
        let mut ticks = tokio::time::interval(interval);
        // After a stall (a suspended process), one update, not a burst of stale ones.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut first = true;
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                // Not only at the next tick: the broker awaits this task when it stops.
                _ = router.closed() => break,
            }
            let Ok(stats) = router.call(|reply| Command::Stats { reply }).await else {
                break;
            };
            metrics.record_router(&stats);
            let messages = sys_messages(&metrics, &stats, first);
            first = false;
            if router.send(Command::SysPublish { messages }).await.is_err() {
                break;
            }
        }
        tracing::debug!("$SYS publisher stopped with the router");
    })
}

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
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use tern_codec::{RetainHandling, Subscribe, SubscriptionOptions};
    use tern_storage::{MemoryStore, Store, SyncPolicy, Writer};

    use super::*;
    use crate::config::ImConfig;
    use crate::router::{ConnectRequest, Router, RouterLimits};

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
        assert!(later.iter().all(|m| crate::router::is_sys_topic(&m.topic)));
    }

    #[tokio::test]
    async fn the_publisher_reaches_subscribers_through_the_router_and_stops_with_it() {
        let store = Arc::new(MemoryStore::new());
        let writer = Writer::start(store.clone(), SyncPolicy::Always, 64);
        let limits = RouterLimits {
            max_topic_levels: 8,
            max_subscriptions_per_session: 10,
            max_queued_messages: 10,
            max_retained_messages: 10,
            im: ImConfig::default(),
        };
        let metrics = Arc::new(Metrics::new());
        let (router, router_task) = Router::load(limits, writer.clone())
            .expect("load")
            .with_metrics(metrics.clone())
            .spawn(64);
        let (request, mut link) = ConnectRequest::for_test("watcher", "watcher", true, 0, 64, 1);
        let attached = router
            .call(|reply| crate::router::Command::Connect { request, reply })
            .await
            .expect("router")
            .expect("attached");
        let subscribe = Subscribe {
            packet_id: 1,
            properties: tern_codec::Properties::default(),
            filters: vec![(
                ByteString::from("$SYS/#"),
                SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribe,
                },
            )],
        };
        router
            .call(|reply| Command::Subscribe {
                session: attached.session,
                subscribe,
                reply,
            })
            .await
            .expect("router");

        let publisher =
            spawn_sys_publisher(metrics.clone(), router.clone(), Duration::from_millis(20));
        let mut seen = Vec::new();
        // Two ticks: the first with the version, the second without.
        while seen
            .iter()
            .filter(|t: &&String| *t == "$SYS/broker/uptime")
            .count()
            < 2
        {
            let Some(d) = tokio::time::timeout(Duration::from_secs(5), link.recv_chat())
                .await
                .expect("a $SYS message in time")
            else {
                panic!("mailbox closed")
            };
            seen.push(d.message.topic.to_string());
        }
        assert_eq!(
            seen.iter().filter(|t| *t == "$SYS/broker/version").count(),
            1
        );
        assert!(seen.iter().any(|t| t == "$SYS/broker/clients/connected"));
        writer.barrier().await.expect("applied");
        assert!(
            store.retained().expect("retained").is_empty(),
            "$SYS is never stored"
        );

        // One between two ticks an hour apart stops with the router too.
        let sleeper = spawn_sys_publisher(metrics, router.clone(), Duration::from_secs(3600));
        router
            .call(|reply| Command::Shutdown { reply })
            .await
            .expect("router");
        router_task.await.expect("router task");
        for task in [publisher, sleeper] {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the publisher stops with the router")
                .expect("publisher task");
        }
    }

    #[tokio::test]
    async fn a_zero_interval_publishes_nothing() {
        let store = Arc::new(MemoryStore::new());
        let writer = Writer::start(store, SyncPolicy::Always, 8);
        let limits = RouterLimits {
            max_topic_levels: 8,
            max_subscriptions_per_session: 10,
            max_queued_messages: 10,
            max_retained_messages: 10,
            im: ImConfig::default(),
        };
        let (router, _task) = Router::load(limits, writer).expect("load").spawn(8);
        let publisher = spawn_sys_publisher(Arc::new(Metrics::new()), router, Duration::ZERO);
        tokio::time::timeout(Duration::from_secs(5), publisher)
            .await
            .expect("ends at once")
            .expect("publisher task");
    }
}
