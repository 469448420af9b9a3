//! Message ids: time-ordered, strictly increasing u64s.
//!
//! An id is `unix_ms << 16 | counter`: up to 65,536 ids per millisecond before the ids run
//! ahead of the clock (they never go backwards, even if the clock does). Because ids sort by
//! time, deleting every message older than a cutoff is one range deletion below
//! [`cutoff`], with no reference counts.

/// Bits of the per-millisecond counter.
const COUNTER_BITS: u32 = 16;

/// Allocates message ids; continues after the highest id stored before a restart.
#[derive(Debug, Clone)]
pub struct MessageIds {
    last: u64,
}

impl MessageIds {
    pub fn new(last_stored: Option<u64>) -> MessageIds {
        MessageIds {
            last: last_stored.unwrap_or(0),
        }
    }

    pub fn next(&mut self, now_ms: u64) -> u64 {
        let id = (now_ms << COUNTER_BITS).max(self.last + 1);
        self.last = id;
        id
    }
}

/// The lowest id a message sent at or after `ms` can have.
pub fn cutoff(ms: u64) -> u64 {
    ms << COUNTER_BITS
}

/// The send time (unix ms) encoded in an id.
pub fn time_of(id: u64) -> u64 {
    id >> COUNTER_BITS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_follow_the_clock() {
        let mut ids = MessageIds::new(None);
        let a = ids.next(1_000);
        let b = ids.next(1_000);
        let c = ids.next(999); // the clock went back
        let d = ids.next(2_000);
        assert!(a < b && b < c && c < d);
        assert_eq!(time_of(a), 1_000);
        assert_eq!(time_of(d), 2_000);
        assert!(cutoff(2_000) <= d && cutoff(2_000) > c);
        let mut resumed = MessageIds::new(Some(d));
        assert!(resumed.next(1_500) > d);
    }
}
