//! Requests refused before their audit request entry: a body that is not JSON or too large, a
//! model the client may not use or that does not exist, a rate or budget limit. Each authenticated
//! client's refusals are counted per minute and written as one `request_refused` entry per client
//! and minute, the way the audit log aggregates authentication failures, so that a client sending
//! refused requests in a loop cannot fill the disk, yet none of them goes unrecorded.
//!
//! Entries are written when their minute has ended (a task wakes at each minute boundary), before
//! every export (so the export holds everything refused until then), and at shutdown.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use govbox_audit::{Event, format_time};
use time::OffsetDateTime;

use crate::auditing::Audit;

/// Most (client, minute) pairs held; refusals of further clients count under `other`.
pub const MAX_PAIRS: usize = 10_000;
/// Most distinct reasons kept per pair.
const MAX_REASONS: usize = 4;

#[derive(Debug, Default)]
struct Tally {
    count: u64,
    reasons: Vec<String>,
}

/// The counts not yet written.
#[derive(Debug, Default)]
pub struct Refusals {
    map: Mutex<BTreeMap<(i64, String), Tally>>,
}

fn minute_of(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(60)
}

impl Refusals {
    /// Counts one refused request of `client` with its status and error code.
    pub fn record(&self, client: &str, status: u16, code: &str) {
        self.add(minute_of(OffsetDateTime::now_utc()), client, 1, &[format!("{status} {code}")]);
    }

    fn add(&self, minute: i64, client: &str, count: u64, reasons: &[String]) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let mut key = (minute, client.to_string());
        if !map.contains_key(&key) && map.len() >= MAX_PAIRS {
            key.1 = govbox_audit::OTHER_SOURCE.to_string();
        }
        let t = map.entry(key).or_default();
        t.count = t.count.saturating_add(count);
        for r in reasons {
            if t.reasons.len() < MAX_REASONS && !t.reasons.contains(r) {
                t.reasons.push(r.clone());
            }
        }
    }

    /// Takes the tallies of minutes before `before` (all of them when `None`) as entries.
    fn drain(&self, before: Option<i64>) -> Vec<Event> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let keep = match before {
            Some(m) => map.split_off(&(m, String::new())),
            None => BTreeMap::new(),
        };
        std::mem::replace(&mut *map, keep)
            .into_iter()
            .map(|((minute, client), t)| Event::RequestRefused {
                client,
                minute: OffsetDateTime::from_unix_timestamp(minute * 60).map(format_time).unwrap_or_default(),
                count: t.count,
                reason: t.reasons.join(","),
            })
            .collect()
    }

    /// Puts back an entry that could not be written, so its count is not lost.
    fn restore(&self, event: Event) {
        if let Event::RequestRefused { client, minute, count, reason } = event {
            let m = govbox_audit::parse_time(&minute).map_or(0, minute_of);
            let reasons: Vec<String> = reason.split(',').map(str::to_string).collect();
            self.add(m, &client, count, &reasons);
        }
    }

    /// Writes the tallies of ended minutes (all of them when `all`). Blocking: from the admin
    /// socket's blocking tasks and at shutdown.
    pub fn flush_blocking(&self, log: &Audit, all: bool) {
        let before = (!all).then(|| minute_of(OffsetDateTime::now_utc()));
        for ev in self.drain(before) {
            if let Err(e) = log.append_blocking(ev.clone()) {
                log::error!("audit: writing a request_refused entry failed, kept for the next try: {e}");
                self.restore(ev);
            }
        }
    }

    /// Writes each minute's tallies once it has ended, until the daemon stops.
    pub async fn flush_every_minute(self: std::sync::Arc<Self>, log: Audit) {
        loop {
            let now = OffsetDateTime::now_utc();
            let into_minute = now.unix_timestamp().rem_euclid(60) as u64;
            // A second past the boundary, so that the minute that just ended is complete.
            tokio::time::sleep(std::time::Duration::from_secs(61 - into_minute)).await;
            let (refusals, log) = (self.clone(), log.clone());
            let _ = tokio::task::spawn_blocking(move || refusals.flush_blocking(&log, false)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_client_and_minute_with_capped_reasons_and_pairs() {
        let r = Refusals::default();
        for _ in 0..1000 {
            r.add(100, "flood", 1, &["429 rate_limit_exceeded".into()]);
        }
        for code in ["400 invalid_json", "403 model_not_allowed", "413 body_too_large", "404 model_not_found"] {
            r.add(100, "flood", 1, &[code.into()]);
        }
        r.add(101, "flood", 1, &["400 invalid_json".into()]);
        let ev = r.drain(Some(101));
        assert_eq!(ev.len(), 1);
        let Event::RequestRefused { client, count, reason, minute } = &ev[0] else { unreachable!() };
        assert_eq!((client.as_str(), *count), ("flood", 1004));
        assert_eq!(reason, "429 rate_limit_exceeded,400 invalid_json,403 model_not_allowed,413 body_too_large");
        assert_eq!(minute, "1970-01-01T01:40:00.000Z");
        r.restore(ev[0].clone());
        assert_eq!(r.drain(None).len(), 2);

        for i in 0..MAX_PAIRS + 3 {
            r.add(5, &format!("c{i}"), 1, &[]);
        }
        let ev = r.drain(None);
        assert_eq!(ev.len(), MAX_PAIRS + 1);
        assert!(ev.iter().any(|e| matches!(e, Event::RequestRefused { client, count: 3, .. } if client == "other")));
    }
}
