//! Token buckets on the vault's clock: how many failed authentications get an audit entry of
//! their own ([`AuthFailureBudget`]), and how fast each caller may read personal data
//! ([`ReadLimits`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use time::OffsetDateTime;

/// A bucket of at most `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    refilled: Option<OffsetDateTime>,
}

impl TokenBucket {
    fn full(burst: f64) -> Self {
        Self { tokens: burst, refilled: None }
    }

    /// Takes a token if there is one; else says how many seconds until there will be. A clock
    /// stepping back refills nothing.
    fn take(&mut self, now: OffsetDateTime, per_second: f64, burst: f64) -> Result<(), f64> {
        let elapsed = self.refilled.map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0));
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.refilled = Some(self.refilled.map_or(now, |t| t.max(now)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - self.tokens) / per_second)
        }
    }
}

/// Reads of personal data per caller per minute (`[[callers]] max_reads_per_minute`): a stolen
/// service token cannot empty the vault at full speed. A full minute's worth may come at once.
#[derive(Debug, Default)]
pub struct ReadLimits {
    per_minute: BTreeMap<String, u32>,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl ReadLimits {
    pub fn new(per_minute: BTreeMap<String, u32>) -> Self {
        Self { per_minute, buckets: Mutex::default() }
    }

    /// Whether `caller` has a read limit at all.
    pub fn limits(&self, caller: &str) -> bool {
        self.per_minute.contains_key(caller)
    }

    /// `Err((limit per minute, whole seconds to wait))` when `caller` is over its limit.
    pub fn admit(&self, caller: &str, now: OffsetDateTime) -> Result<(), (u32, u64)> {
        let Some(&limit) = self.per_minute.get(caller) else {
            return Ok(());
        };
        let burst = f64::from(limit.max(1));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(caller.to_owned()).or_insert_with(|| TokenBucket::full(burst));
        bucket.take(now, burst / 60.0, burst).map_err(|wait| (limit, wait.ceil().max(1.0) as u64))
    }
}

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
    tokens: TokenBucket,
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
            bucket: Mutex::new(Bucket { tokens: TokenBucket::full(burst), unrecorded: None }),
            unrecorded_total: AtomicU64::new(0),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(&self, now: OffsetDateTime) -> Admit {
        let mut b = self.bucket();
        if b.tokens.take(now, self.per_second, self.burst).is_ok() {
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
    fn each_limited_caller_has_its_own_minute_of_reads() {
        let l = ReadLimits::new([("svc".to_string(), 3)].into());
        for _ in 0..3 {
            assert_eq!(l.admit("svc", t(0)), Ok(()));
        }
        // One read comes back every 20 s.
        assert_eq!(l.admit("svc", t(0)), Err((3, 20)));
        assert_eq!(l.admit("svc", t(15_000)), Err((3, 5)));
        assert_eq!(l.admit("svc", t(20_000)), Ok(()));
        for _ in 0..1000 {
            assert_eq!(l.admit("other", t(20_000)), Ok(()), "callers without a limit are not limited");
        }
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
