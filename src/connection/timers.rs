//! The deadlines of a connection at work, in one table: the loop arms one timer at the
//! earliest and moves it only when the earliest changes (a timer operation per deadline,
//! not per event). Two deadlines: the next *check* (the keepalive deadline, or the next
//! look at whether the connection can park, whichever is first) and the end of a pause
//! of the input (the listener's inbound rate limit). The write deadline is the write's
//! own, armed only while a peer makes a write wait (see `outbound.rs`).

use std::time::Duration;

use tokio::time::Instant;

pub(super) struct Timers {
    /// When to look at keepalive and parking next.
    check: Option<Instant>,
    /// When reading may resume (the inbound rate limit paused it).
    resume_input: Option<Instant>,
    /// How long a quiet connection waits before it parks (`None`: it never parks).
    park_after: Option<Duration>,
    /// The deadline the loop's timer is armed at (`None` once it fired).
    armed: Option<Instant>,
}

/// Which deadline the timer fired for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fired {
    ResumeInput,
    Check,
}

impl Timers {
    pub(super) fn new(
        keepalive: Option<Instant>,
        park_after: Option<Duration>,
        now: Instant,
    ) -> Timers {
        let mut timers = Timers {
            check: None,
            resume_input: None,
            park_after,
            armed: None,
        };
        timers.checked(keepalive, now);
        timers
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        match (self.check, self.resume_input) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Reading is paused until `at` (`None`: it is not).
    pub(super) fn resume_input_at(&mut self, at: Option<Instant>) {
        self.resume_input = at;
    }

    /// The deadline to arm the timer at, when it is not armed there already.
    pub(super) fn rearm(&mut self) -> Option<Instant> {
        let next = self.next();
        if next == self.armed {
            return None;
        }
        self.armed = next;
        next
    }

    /// The timer fired at `now`: for which deadline.
    pub(super) fn fired(&mut self, now: Instant) -> Fired {
        self.armed = None;
        if self.resume_input.is_some_and(|at| at <= now) {
            Fired::ResumeInput
        } else {
            Fired::Check
        }
    }

    /// A check ran at `now`: the next one at the keepalive deadline (from the last input)
    /// or one park period on, whichever is first.
    pub(super) fn checked(&mut self, keepalive: Option<Instant>, now: Instant) {
        let park = self.park_after.map(|after| now + after);
        self.check = match (keepalive, park) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_deadline_is_armed_once_and_again_after_it_fired() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let mut t = Timers::new(Some(now + s(90)), Some(s(1)), now);
        assert_eq!(t.rearm(), Some(now + s(1)), "the park check comes first");
        assert_eq!(t.rearm(), None, "armed already");
        t.resume_input_at(Some(now + s(2)));
        assert_eq!(t.rearm(), None, "a later pause end changes nothing");
        t.resume_input_at(Some(now + s(0)));
        assert_eq!(t.rearm(), Some(now), "an earlier one does");
        assert_eq!(t.fired(now), Fired::ResumeInput);
        t.resume_input_at(None);
        assert_eq!(t.rearm(), Some(now + s(1)));
        assert_eq!(t.fired(now + s(1)), Fired::Check);
        t.checked(Some(now + s(90)), now + s(1));
        assert_eq!(t.rearm(), Some(now + s(2)));
    }

    #[test]
    fn without_keepalive_or_parking_nothing_is_armed() {
        let now = Instant::now();
        let mut t = Timers::new(None, None, now);
        assert_eq!(t.next(), None);
        assert_eq!(t.rearm(), None);
        let mut t = Timers::new(Some(now + Duration::from_secs(5)), None, now);
        assert_eq!(
            t.rearm(),
            Some(now + Duration::from_secs(5)),
            "keepalive alone"
        );
    }
}
