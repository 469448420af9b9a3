//! The `$SYS/broker/...` publisher: every interval it takes the router's counts and the
//! broker's counters ([`crate::metrics::sys`] turns them into messages) and routes one
//! retained QoS 0 message per topic, so subscribers of `$SYS/#` get each update live and a
//! new subscriber gets the latest values at once. The router keeps these retained messages
//! in memory only: they are recomputed after a restart anyway.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::RouterHandle;
use crate::metrics::sys::sys_messages;
use crate::metrics::Metrics;

/// Publishes the `$SYS/broker/...` topics every `interval` (the first at once), until the
/// router stops (the task ends with it, it need not be aborted). A zero `interval`
/// publishes nothing: the task ends at once.
pub(crate) fn spawn_publisher(
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
                () = router.closed() => break,
            }
            let Ok(stats) = router.stats() else {
                break;
            };
            metrics.record_router(&stats);
            let messages = sys_messages(&metrics, &stats, first);
            first = false;
            if router.sys_publish(messages).await.is_err() {
                break;
            }
        }
        tracing::debug!("$SYS publisher stopped with the router");
    })
}

#[cfg(test)]
mod tests {
    use tern_codec::QoS;
    use tern_storage::Store;

    use super::*;
    use crate::router::tests::start;

    #[tokio::test]
    async fn the_publisher_reaches_subscribers_through_the_router_and_stops_with_it() {
        let h = start();
        let mut watcher = h.connect("watcher", "watcher", true, 0).await;
        h.subscribe(&watcher, "$SYS/#", QoS::AtMostOnce).await;
        let publisher = spawn_publisher(
            h.metrics.clone(),
            h.router.clone(),
            Duration::from_millis(20),
        );
        let mut seen = Vec::new();
        // Two ticks: the first with the version, the second without.
        while seen
            .iter()
            .filter(|t: &&String| *t == "$SYS/broker/uptime")
            .count()
            < 2
        {
            let Some(d) = tokio::time::timeout(Duration::from_secs(5), watcher.mailbox.recv_chat())
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
        h.writer.barrier().await.expect("applied");
        assert!(
            h.store.retained().expect("retained").is_empty(),
            "$SYS is never stored"
        );

        // One between two ticks an hour apart stops with the router too.
        let sleeper = spawn_publisher(
            h.metrics.clone(),
            h.router.clone(),
            Duration::from_secs(3600),
        );
        h.router.shutdown();
        for task in [publisher, sleeper] {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("the publisher stops with the router")
                .expect("publisher task");
        }
    }

    #[tokio::test]
    async fn a_zero_interval_publishes_nothing() {
        let h = start();
        let publisher = spawn_publisher(h.metrics.clone(), h.router.clone(), Duration::ZERO);
        tokio::time::timeout(Duration::from_secs(5), publisher)
            .await
            .expect("ends at once")
            .expect("publisher task");
    }
}
