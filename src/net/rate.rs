//! A token bucket: so many units per second, bursts of up to one second's worth. Listeners
//! pace accepts with it, connections their inbound messages and bytes.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` units per second, starting full; `None` for 0 (no limit).
    pub(crate) fn new(rate: u64, now: Instant) -> Option<TokenBucket> {
        // u64 to f64 loses precision only beyond 2^53 per second: irrelevant here.
        let rate = rate as f64;
        (rate > 0.0).then_some(TokenBucket {
            rate,
            tokens: rate,
            last: now,
        })
    }

    /// Uses `units`; the balance may go negative (a debt paid back by waiting).
    pub(crate) fn spend(&mut self, units: u64) {
        self.tokens -= units as f64;
    }

    /// How long until the balance reaches `level`; `None` if it already has.
    pub(crate) fn wait(&mut self, level: f64, now: Instant) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        // Bursts up to one second's worth (and at least one unit, for rates below 1/s).
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        self.last = now;
        (self.tokens < level).then(|| Duration::from_secs_f64((level - self.tokens) / self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, start).expect("a limit");
        for _ in 0..10 {
            assert_eq!(bucket.wait(1.0, start), None);
            bucket.spend(1);
        }
        let wait = bucket.wait(1.0, start).expect("the burst is spent");
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        // 100 ms later one more unit has come in, not more.
        let later = start + Duration::from_millis(100);
        assert_eq!(bucket.wait(1.0, later), None);
        bucket.spend(1);
        assert!(bucket.wait(1.0, later).is_some());
        // A long pause refills only up to the burst.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(bucket.wait(1.0, much_later), None);
            bucket.spend(1);
        }
        assert!(bucket.wait(1.0, much_later).is_some());
    }

    #[test]
    fn a_debt_is_paid_back_by_waiting() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, start).expect("a limit");
        bucket.spend(300); // 200 in debt
        let wait = bucket.wait(0.0, start).expect("in debt");
        assert!(wait > Duration::from_millis(1990) && wait <= Duration::from_millis(2000));
        assert_eq!(bucket.wait(0.0, start + Duration::from_secs(2)), None);
    }

    #[test]
    fn zero_is_no_limit() {
        assert!(TokenBucket::new(0, Instant::now()).is_none());
    }
}
