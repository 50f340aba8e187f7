//! Per-minute history of every channel, kept by the server itself for 24 h,
//! so the operations page opened late still plots the past hour: events
//! in, emitted, delivered, rejected, faulted, dead-lettered, and the
//! end-to-end latency of deliveries (p50 and p99, from log-scale buckets).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

/// Minutes kept per channel.
pub const KEPT_MINUTES: usize = 24 * 60;
/// Latency buckets: bucket `i` holds latencies below `2^i` ms (the last, all above).
const BUCKETS: usize = 24;

/// What one counter of a minute counts.
#[derive(Debug, Clone, Copy)]
pub enum Count {
    /// Events that entered the channel's pipeline.
    In,
    /// Events the pipeline emitted.
    Emitted,
    /// Deliveries the destination accepted.
    Delivered,
    /// Events a rule rejected.
    Rejected,
    /// Events a module fault failed.
    Faulted,
    /// Events and deliveries that became dead letters.
    DeadLettered,
    /// Queued deliveries a newer one of their entity key replaced (`coalesce`).
    Superseded,
    /// Deliveries not sent: the destination had accepted the same (`skip-unchanged`).
    Unchanged,
}

#[derive(Debug, Clone, Default)]
struct Minute {
    at: i64,
    counts: [u64; 8],
    latency: [u64; BUCKETS],
}

/// One minute as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MinuteView {
    /// The minute's start (ms since the Unix epoch).
    pub at: i64,
    /// Events that entered the pipeline.
    pub r#in: u64,
    /// Events emitted.
    pub emitted: u64,
    /// Deliveries accepted.
    pub delivered: u64,
    /// Events rejected.
    pub rejected: u64,
    /// Events faulted.
    pub faulted: u64,
    /// Dead letters made.
    pub dead_lettered: u64,
    /// Deliveries superseded by a newer one of their key.
    pub superseded: u64,
    /// Deliveries not sent, being unchanged.
    pub unchanged: u64,
    /// End-to-end latency of this minute's deliveries, median (ms, bucket bound).
    pub latency_p50_ms: Option<u64>,
    /// 99th percentile (ms, bucket bound).
    pub latency_p99_ms: Option<u64>,
}

/// Every channel's minutes.
#[derive(Debug, Default)]
pub struct History {
    channels: Mutex<HashMap<String, VecDeque<Minute>>>,
}

fn bucket_of(ms: u64) -> usize {
    ((u64::BITS - ms.leading_zeros()) as usize).min(BUCKETS - 1)
}

fn minute_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(60_000)
}

impl History {
    fn with_minute(&self, channel: &str, now_ms: i64, update: impl FnOnce(&mut Minute)) {
        let at = minute_of(now_ms);
        let mut channels = self.channels.lock().expect("history lock");
        // The channel's name is copied once, not on every event.
        if !channels.contains_key(channel) {
            channels.insert(channel.to_string(), VecDeque::new());
        }
        let minutes = channels.get_mut(channel).expect("inserted above");
        if minutes.back().is_none_or(|m| m.at < at) {
            minutes.push_back(Minute {
                at,
                ..Minute::default()
            });
            while minutes
                .front()
                .is_some_and(|m| m.at <= at - KEPT_MINUTES as i64 * 60_000)
            {
                minutes.pop_front();
            }
        }
        // A clock that stepped back adds to the newest minute.
        if let Some(minute) = minutes.back_mut() {
            update(minute);
        }
    }

    /// Adds `n` to a counter of the channel's current minute.
    pub fn add(&self, channel: &str, count: Count, n: u64, now_ms: i64) {
        self.add_all(channel, &[(count, n)], now_ms);
    }

    /// Adds to several counters of the channel's current minute at once.
    pub fn add_all(&self, channel: &str, counts: &[(Count, u64)], now_ms: i64) {
        self.with_minute(channel, now_ms, |m| {
            for &(count, n) in counts {
                m.counts[count as usize] += n;
            }
        });
    }

    /// Records one delivery's end-to-end latency.
    pub fn latency(&self, channel: &str, ms: u64, now_ms: i64) {
        self.with_minute(channel, now_ms, |m| m.latency[bucket_of(ms)] += 1);
    }

    /// Counts one accepted delivery and its end-to-end latency.
    pub fn delivered(&self, channel: &str, latency_ms: u64, now_ms: i64) {
        self.with_minute(channel, now_ms, |m| {
            m.counts[Count::Delivered as usize] += 1;
            m.latency[bucket_of(latency_ms)] += 1;
        });
    }

    /// The channel's last `minutes` minutes up to `now_ms`, oldest first,
    /// with empty minutes filled in.
    pub fn recent(&self, channel: &str, minutes: usize, now_ms: i64) -> Vec<MinuteView> {
        self.recent_of(&[channel], minutes, now_ms)
    }

    /// The same for several channels together (a destination's): counts
    /// add up and latencies merge before their quantiles are taken.
    pub fn recent_of(&self, channels: &[&str], minutes: usize, now_ms: i64) -> Vec<MinuteView> {
        let minutes = minutes.clamp(1, KEPT_MINUTES);
        let last = minute_of(now_ms);
        let first = last - (minutes as i64 - 1) * 60_000;
        let kept = self.channels.lock().expect("history lock");
        (0..minutes as i64)
            .map(|i| {
                let at = first + i * 60_000;
                let mut merged = Minute {
                    at,
                    ..Minute::default()
                };
                for minute in channels
                    .iter()
                    .filter_map(|c| kept.get(*c))
                    .filter_map(|kept| kept.iter().rev().find(|m| m.at == at))
                {
                    merged
                        .counts
                        .iter_mut()
                        .zip(minute.counts)
                        .for_each(|(a, b)| *a += b);
                    merged
                        .latency
                        .iter_mut()
                        .zip(minute.latency)
                        .for_each(|(a, b)| *a += b);
                }
                view(&merged)
            })
            .collect()
    }
}

fn view(minute: &Minute) -> MinuteView {
    let quantile = |q: f64| {
        let total: u64 = minute.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let wanted = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        minute.latency.iter().enumerate().find_map(|(bucket, n)| {
            seen += n;
            (seen >= wanted).then_some(1u64 << bucket)
        })
    };
    let c = &minute.counts;
    MinuteView {
        at: minute.at,
        r#in: c[Count::In as usize],
        emitted: c[Count::Emitted as usize],
        delivered: c[Count::Delivered as usize],
        rejected: c[Count::Rejected as usize],
        faulted: c[Count::Faulted as usize],
        dead_lettered: c[Count::DeadLettered as usize],
        superseded: c[Count::Superseded as usize],
        unchanged: c[Count::Unchanged as usize],
        latency_p50_ms: quantile(0.50),
        latency_p99_ms: quantile(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn minutes_are_counted_filled_and_kept_for_a_day() {
        let history = History::default();
        history.add("a", Count::In, 3, T0);
        history.add("a", Count::In, 2, T0 + 59_000 - T0.rem_euclid(60_000));
        history.add("a", Count::Delivered, 1, T0 + 120_000);
        let recent = history.recent("a", 3, T0 + 120_000);
        assert_eq!(
            recent.iter().map(|m| (m.r#in, m.delivered)).collect::<Vec<_>>(),
            [(5, 0), (0, 0), (0, 1)]
        );
        assert_eq!(history.recent("unknown", 2, T0).len(), 2);
        // A day and a minute later, the first minute is gone.
        history.add("a", Count::In, 1, T0 + (KEPT_MINUTES as i64 + 1) * 60_000);
        let kept = history.channels.lock().unwrap()["a"].len();
        assert!(kept <= KEPT_MINUTES, "{kept}");
        assert_eq!(
            history.channels.lock().unwrap()["a"].front().unwrap().at,
            minute_of(T0 + 120_000)
        );
    }

    #[test]
    fn a_destination_adds_its_channels_minutes_and_merges_their_latencies() {
        let history = History::default();
        history.add("a", Count::Delivered, 2, T0);
        history.add("b", Count::Delivered, 3, T0);
        history.add("c", Count::Delivered, 100, T0);
        for _ in 0..99 {
            history.latency("a", 1, T0);
        }
        history.latency("b", 2000, T0);
        let merged = &history.recent_of(&["a", "b"], 1, T0)[0];
        assert_eq!(merged.delivered, 5);
        assert_eq!((merged.latency_p50_ms, merged.latency_p99_ms), (Some(2), Some(2)));
        assert_eq!(history.recent_of(&["a", "b"], 1, T0 + 60_000)[0].delivered, 0);
    }

    #[test]
    fn latency_quantiles_come_from_log_buckets() {
        let history = History::default();
        for _ in 0..98 {
            history.latency("a", 3, T0);
        }
        history.latency("a", 900, T0);
        history.latency("a", 5000, T0);
        let minute = &history.recent("a", 1, T0)[0];
        assert_eq!(minute.latency_p50_ms, Some(4));
        assert_eq!(minute.latency_p99_ms, Some(1024));
    }
}
