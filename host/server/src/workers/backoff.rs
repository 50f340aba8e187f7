//! Pacing of deliveries: a token bucket per destination, exponential
//! backoff with jitter between attempts, and `Retry-After`.

use std::time::{Duration, Instant, SystemTime};

use crate::config::{RateLimit, RetryPolicy};

/// The lowest rate a bucket is lowered to: one send in 100 s.
pub const MIN_RATE: f64 = 0.01;

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket for this limit.
    pub fn new(limit: RateLimit, burst: u32) -> Self {
        Self {
            rate: limit.per_second(),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    /// Tokens a second, now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Changes the rate from `now` on (the tokens earned so far are kept).
    pub fn set_rate(&mut self, now: Instant, per_second: f64) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        self.rate = per_second.max(MIN_RATE);
    }

    /// Takes a token if one is there; otherwise says how long until one is.
    pub fn try_take(&mut self, now: Instant) -> Result<(), Duration> {
        self.try_take_many(now, 1)
    }

    /// Takes `count` tokens at once. A count larger than the burst can
    /// never be covered by tokens in hand, so it is admitted when the bucket
    /// is full and leaves the bucket in debt: the rate still holds on
    /// average, and the wait returned is the real time until admission.
    pub fn try_take_many(&mut self, now: Instant, count: usize) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        let needed = (count as f64).min(self.burst);
        if self.tokens >= needed {
            self.tokens -= count as f64;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((needed - self.tokens) / self.rate))
        }
    }
}

/// The wait before attempt `attempt + 1`, after `attempt` failures:
/// `initial × 2^(attempt-1)`, capped, with "equal jitter" (half fixed,
/// half random) so that many retries do not arrive together.
pub fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let full = policy
        .initial_backoff_ms
        .saturating_mul(1 << exponent)
        .min(policy.max_backoff_ms);
    let half = full / 2;
    Duration::from_millis(half + fastrand::u64(0..=full - half))
}

/// A `Retry-After` value: delay-seconds or an HTTP date.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let mut bucket = TokenBucket::new("10/s".parse().unwrap(), 2);
        let start = Instant::now();
        assert!(bucket.try_take(start).is_ok());
        assert!(bucket.try_take(start).is_ok());
        let wait = bucket.try_take(start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert!(bucket.try_take(start + Duration::from_millis(100)).is_ok());
        // A long pause refills only up to the burst.
        let later = start + Duration::from_secs(60);
        assert!(bucket.try_take(later).is_ok());
        assert!(bucket.try_take(later).is_ok());
        assert!(bucket.try_take(later).is_err());
    }

    #[test]
    fn a_request_larger_than_the_burst_is_admitted_into_debt() {
        let mut bucket = TokenBucket::new("10/s".parse().unwrap(), 10);
        let start = Instant::now();
        assert!(bucket.try_take_many(start, 25).is_ok(), "a full bucket admits it");
        // 15 tokens of debt, then 10 for the next full batch: 2.5 s at 10/s.
        let wait = bucket.try_take_many(start, 25).unwrap_err();
        assert!((wait.as_secs_f64() - 2.5).abs() < 1e-6, "{wait:?}");
        assert!(
            bucket.try_take_many(start + wait, 25).is_ok(),
            "the wait told was true"
        );
    }

    #[test]
    fn backoff_doubles_within_jitter_and_is_capped() {
        let policy = RetryPolicy {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..RetryPolicy::default()
        };
        for _ in 0..100 {
            let first = backoff(&policy, 1).as_millis();
            assert!((50..=100).contains(&first), "{first}");
            let third = backoff(&policy, 3).as_millis();
            assert!((200..=400).contains(&third), "{third}");
            let capped = backoff(&policy, 20).as_millis();
            assert!((500..=1000).contains(&capped), "{capped}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(retry_after("soon", now), None);
    }
}

#[cfg(test)]
mod prop_tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any header text: an answer or nothing, never a panic; numbers are exact seconds.
        #[test]
        fn prop_retry_after_never_panics(value in "\\PC{0,40}", seconds in any::<u64>()) {
            let now = SystemTime::now();
            let _ = retry_after(&value, now);
            prop_assert_eq!(retry_after(&seconds.to_string(), now), Some(Duration::from_secs(seconds)));
        }

        /// Backoff stays within the policy's cap for every attempt number and setting.
        #[test]
        fn prop_backoff_is_capped(initial in any::<u64>(), max in any::<u64>(), attempt in any::<u32>()) {
            let policy = RetryPolicy { initial_backoff_ms: initial, max_backoff_ms: max, ..RetryPolicy::default() };
            prop_assert!(backoff(&policy, attempt) <= Duration::from_millis(max));
        }
    }
}
