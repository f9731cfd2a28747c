//! How many failed authentications get an audit entry of their own: a token bucket, so a
//! client that can merely reach the port cannot grow the audit trail (and the disk) without
//! bound. Attempts over the budget are not lost: they are counted, and the count goes into
//! the trail as one summary entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use time::OffsetDateTime;

/// Failed authentications over the budget since the last summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unrecorded {
    pub count: u64,
    pub first: OffsetDateTime,
    pub last: OffsetDateTime,
}

/// What to do with one failed authentication.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Record it, after the summary of those left unrecorded before it, if any.
    Record(Option<Unrecorded>),
    /// Over the budget: only counted.
    Count,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Option<OffsetDateTime>,
    unrecorded: Option<Unrecorded>,
}

/// A bucket of `burst` entries refilled at `per_second`; time comes from the vault's clock.
#[derive(Debug)]
pub struct AuthFailureBudget {
    per_second: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
    /// Every attempt left unrecorded since start (for /metrics).
    unrecorded_total: AtomicU64,
}

/// Seconds of refill a full bucket holds: a burst of that many seconds' worth is recorded whole.
const BURST_SECONDS: u32 = 10;

impl AuthFailureBudget {
    pub fn new(per_second: u32) -> Self {
        let per_second = per_second.max(1);
        let burst = f64::from(per_second.saturating_mul(BURST_SECONDS));
        Self {
            per_second: f64::from(per_second),
            burst,
            bucket: Mutex::new(Bucket { tokens: burst, refilled: None, unrecorded: None }),
            unrecorded_total: AtomicU64::new(0),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(&self, now: OffsetDateTime) -> Admit {
        let mut b = self.bucket();
        let elapsed = b.refilled.map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0));
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.refilled = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Admit::Record(b.unrecorded.take());
        }
        self.unrecorded_total.fetch_add(1, Ordering::Relaxed);
        match &mut b.unrecorded {
            Some(u) => {
                u.count += 1;
                u.last = now;
            }
            None => b.unrecorded = Some(Unrecorded { count: 1, first: now, last: now }),
        }
        Admit::Count
    }

    /// Takes the count awaiting its summary entry (the periodic flush).
    pub fn take_unrecorded(&self) -> Option<Unrecorded> {
        self.bucket().unrecorded.take()
    }

    /// Puts back a count whose summary entry could not be written, so the next one carries it.
    pub fn restore(&self, u: Unrecorded) {
        let mut b = self.bucket();
        b.unrecorded = Some(match b.unrecorded.take() {
            Some(newer) => Unrecorded { count: u.count + newer.count, first: u.first, last: newer.last },
            None => u,
        });
    }

    pub fn has_unrecorded(&self) -> bool {
        self.bucket().unrecorded.is_some()
    }

    pub fn unrecorded_total(&self) -> u64 {
        self.unrecorded_total.load(Ordering::Relaxed)
    }

    pub fn per_second(&self) -> u32 {
        self.per_second as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn t(ms: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + Duration::milliseconds(ms)
    }

    #[test]
    fn a_burst_is_recorded_whole_then_the_rest_is_counted_and_summarised() {
        let b = AuthFailureBudget::new(2); // burst of 20
        for i in 0..20 {
            assert_eq!(b.admit(t(i)), Admit::Record(None), "attempt {i} is within the burst");
        }
        assert_eq!(b.admit(t(20)), Admit::Count);
        assert_eq!(b.admit(t(30)), Admit::Count);
        assert!(b.has_unrecorded());
        // Half a second later one token has come back: the next attempt is recorded, after
        // the summary of the two before it.
        assert_eq!(b.admit(t(530)), Admit::Record(Some(Unrecorded { count: 2, first: t(20), last: t(30) })));
        assert!(!b.has_unrecorded());
        assert_eq!(b.admit(t(531)), Admit::Count);
        assert_eq!(b.unrecorded_total(), 3);
    }

    #[test]
    fn the_refill_is_capped_at_the_burst_and_a_clock_going_back_refills_nothing() {
        let b = AuthFailureBudget::new(1); // burst of 10
        b.admit(t(0));
        let after_an_hour = t(3_600_000);
        let recorded = (0..20).filter(|_| matches!(b.admit(after_an_hour), Admit::Record(_))).count();
        assert_eq!(recorded, 10);
        assert_eq!(b.admit(t(0)), Admit::Count, "a clock stepping back must not mint tokens");
    }

    #[test]
    fn a_summary_that_could_not_be_written_is_carried_by_the_next() {
        let b = AuthFailureBudget::new(1);
        for _ in 0..12 {
            b.admit(t(0));
        }
        let u = b.take_unrecorded().unwrap();
        assert_eq!(u.count, 2);
        b.admit(t(1));
        b.restore(u);
        assert_eq!(b.take_unrecorded(), Some(Unrecorded { count: 3, first: t(0), last: t(1) }));
        assert_eq!(b.take_unrecorded(), None);
    }
}
