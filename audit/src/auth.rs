//! Authentication failures, aggregated per source and minute so that a flood cannot fill the disk.

use std::collections::BTreeMap;
use std::net::IpAddr;

use time::OffsetDateTime;

use crate::entry::{Event, format_time};

/// Most distinct (source, minute) pairs held in memory; failures from further sources are counted
/// under the source `other`.
pub const MAX_AUTH_SOURCES: usize = 10_000;
/// Most distinct reasons kept per pair, and their longest length.
const MAX_REASONS: usize = 4;
const MAX_REASON_BYTES: usize = 64;
/// The source under which failures beyond [`MAX_AUTH_SOURCES`] are counted.
pub const OTHER_SOURCE: &str = "other";

#[derive(Debug, Default)]
struct Tally {
    count: u64,
    reasons: Vec<String>,
}

/// Counts per (minute, source), drained into `auth_failure` events.
#[derive(Debug, Default)]
pub(crate) struct AuthAggregator {
    map: BTreeMap<(i64, String), Tally>,
}

/// The minute (Unix seconds / 60) that `t` falls in.
pub(crate) fn minute_of(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(60)
}

impl AuthAggregator {
    pub fn record(&mut self, source: IpAddr, reason: &str, now: OffsetDateTime) {
        self.add(minute_of(now), source.to_string(), 1, std::iter::once(reason));
    }

    fn add<'a>(&mut self, minute: i64, source: String, count: u64, reasons: impl Iterator<Item = &'a str>) {
        let mut k = (minute, source);
        if !self.map.contains_key(&k) && self.map.len() >= MAX_AUTH_SOURCES {
            k.1 = OTHER_SOURCE.to_string();
        }
        let t = self.map.entry(k).or_default();
        t.count = t.count.saturating_add(count);
        for r in reasons {
            let mut r: String = r.chars().filter(|c| !c.is_control() && *c != ',').collect();
            if r.len() > MAX_REASON_BYTES {
                let mut cut = MAX_REASON_BYTES;
                while !r.is_char_boundary(cut) {
                    cut -= 1;
                }
                r.truncate(cut);
            }
            if t.reasons.len() < MAX_REASONS && !t.reasons.contains(&r) {
                t.reasons.push(r);
            }
        }
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Takes the tallies of minutes before `before` (all of them when `None`) as events.
    pub fn drain(&mut self, before: Option<i64>) -> Vec<Event> {
        let keep = match before {
            Some(m) => self.map.split_off(&(m, String::new())),
            None => BTreeMap::new(),
        };
        let done = std::mem::replace(&mut self.map, keep);
        done.into_iter()
            .map(|((minute, source), t)| Event::AuthFailure {
                source,
                minute: OffsetDateTime::from_unix_timestamp(minute * 60).map(format_time).unwrap_or_default(),
                count: t.count,
                reason: t.reasons.join(","),
            })
            .collect()
    }

    /// Puts back events that could not be written, so the counts are not lost.
    pub fn restore(&mut self, events: Vec<Event>) {
        for e in events {
            if let Event::AuthFailure { source, minute, count, reason } = e {
                let m = crate::entry::parse_time(&minute).map_or(0, minute_of);
                self.add(m, source, count, reason.split(','));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregates_per_source_and_minute_and_caps_sources() {
        let mut a = AuthAggregator::default();
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000 - 1_700_000_000 % 60).unwrap();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            a.record(ip, "bad_token", t0);
        }
        a.record(ip, "revoked_cert", t0);
        a.record(ip, "bad_token", t0 + time::Duration::minutes(1));
        let ev = a.drain(Some(minute_of(t0) + 1));
        assert_eq!(ev.len(), 1);
        let Event::AuthFailure { source, count, reason, minute } = &ev[0] else { unreachable!() };
        assert_eq!((source.as_str(), *count, reason.as_str()), ("10.0.0.1", 1001, "bad_token,revoked_cert"));
        assert!(minute.ends_with(":00.000Z"), "{minute}");
        assert!(!a.is_empty());
        a.restore(ev);
        assert_eq!(a.drain(None).len(), 2);

        for i in 0..(MAX_AUTH_SOURCES as u32 + 50) {
            a.record(IpAddr::from(i.to_be_bytes()), "bad_token", t0);
        }
        let ev = a.drain(None);
        assert_eq!(ev.len(), MAX_AUTH_SOURCES + 1);
        let other = ev.iter().find(|e| matches!(e, Event::AuthFailure { source, .. } if source == "other")).unwrap();
        assert!(matches!(other, Event::AuthFailure { count: 50, .. }), "{other:?}");
    }
}
