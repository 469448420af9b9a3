//! Which of this node's appends to the cluster's message stream are still under way. A
//! persistent session adopted here reads what it missed from the stream, and gets what
//! routing delivers after the adoption. A message routed here before the adoption is in
//! neither if its append is still under way when the read looks at the stream's end (a
//! node skips the stream's republished copies of its own appends). So that read first
//! waits until every append numbered before the adoption is over.
//!
//! An append is under way from when the router numbers it (under its lock, so every
//! number below the adoption's is counted by then) until its [`AppendGuard`] is dropped:
//! by the cluster link once the stream kept it or it was given up, or wherever the
//! forward is dropped before that.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug)]
pub(crate) struct AppendProgress {
    /// The numbers of the appends under way.
    under_way: watch::Sender<BTreeSet<u64>>,
}

impl Default for AppendProgress {
    fn default() -> Self {
        AppendProgress {
            under_way: watch::Sender::new(BTreeSet::new()),
        }
    }
}

impl AppendProgress {
    /// Append `number` is under way until the returned guard is dropped.
    pub(super) fn start(self: &Arc<Self>, number: u64) -> AppendGuard {
        self.under_way.send_modify(|under_way| {
            under_way.insert(number);
        });
        AppendGuard {
            progress: self.clone(),
            number,
        }
    }

    /// Waits until no append numbered below `watermark` is under way; `false` if that took
    /// longer than `within`.
    pub(crate) async fn over_before(&self, watermark: u64, within: Duration) -> bool {
        let mut under_way = self.under_way.subscribe();
        let over = tokio::time::timeout(
            within,
            under_way.wait_for(|numbers| numbers.first().is_none_or(|first| *first >= watermark)),
        )
        .await
        .is_ok_and(|seen| seen.is_ok());
        over
    }
}

/// An append under way (see the module's docs).
#[derive(Debug)]
pub(crate) struct AppendGuard {
    progress: Arc<AppendProgress>,
    number: u64,
}

impl AppendGuard {
    /// The append's number.
    pub(crate) fn number(&self) -> u64 {
        self.number
    }
}

impl Drop for AppendGuard {
    fn drop(&mut self) {
        self.progress.under_way.send_modify(|under_way| {
            under_way.remove(&self.number);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_appends_numbered_before_the_watermark() {
        let appends = Arc::new(AppendProgress::default());
        let short = Duration::from_millis(20);
        assert!(appends.over_before(5, short).await, "none under way");

        let zero = appends.start(0);
        let one = appends.start(1);
        let two = appends.start(2);
        assert!(!appends.over_before(1, short).await, "0 under way");
        drop(zero);
        assert!(appends.over_before(1, short).await);
        drop(one);
        assert!(appends.over_before(2, short).await);
        assert!(!appends.over_before(3, short).await, "2 under way");

        let waiting = tokio::spawn({
            let appends = appends.clone();
            async move { appends.over_before(3, Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        drop(two);
        assert!(waiting.await.expect("the waiter"), "woken when 2 is over");
    }
}
