//! Per-client limits: requests per minute (a token bucket in memory; clients without a rate of
//! their own get `[serving] default_client_rpm`) and tokens per UTC day (counted in sled at
//! `STATE/state/quota`, so that a restart does not hand out a fresh budget).
//!
//! The budget is never overspent, however many requests run at once: before a request is admitted
//! to the engine, the most it can use (prompt plus `max_tokens`, bounded by the context) is
//! reserved, in one atomic update of the day's count that refuses the request when the
//! reservation does not fit. When the answer ends (finished, cancelled, failed or timed out) the
//! [`Reservation`] is settled: the part it did not use goes back. A request that never reaches the
//! engine gives the whole reservation back. A crash keeps what was reserved charged: the count
//! errs towards the client having used more, never less.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use govbox_provisioning::ClientRecord;

/// Why the quota store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// sled failed.
    #[error("opening the token-budget store {}: {source}", path.display())]
    Open {
        /// The database folder.
        path: std::path::PathBuf,
        /// sled's error.
        source: sled::Error,
    },
}

/// Why a client's request is refused by its limits (HTTP 429 at the HTTP edge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaRefusal {
    /// Over the client's requests per minute.
    #[error("rate limit of {rpm} requests per minute reached; retry in {retry_after} s")]
    RateLimited {
        /// The limit.
        rpm: u32,
        /// Seconds until a request will be accepted.
        retry_after: u64,
    },
    /// The client's daily token budget is spent.
    #[error("daily budget of {budget} tokens is spent; it renews at 00:00 UTC, in {retry_after} s")]
    BudgetExhausted {
        /// The budget.
        budget: u64,
        /// Seconds until midnight UTC.
        retry_after: u64,
    },
    /// The request could use more tokens (prompt plus `max_tokens`) than the client has left today.
    #[error(
        "this request may use up to {wanted} tokens (its prompt and max_tokens), but only {left} of the \
         daily budget of {budget} tokens are left (requests still running hold a part of it until they \
         end); lower max_tokens, or retry when the budget renews at 00:00 UTC, in {retry_after} s"
    )]
    BudgetTooSmall {
        /// The budget.
        budget: u64,
        /// Tokens neither used nor reserved today.
        left: u64,
        /// What the request would reserve.
        wanted: u64,
        /// Seconds until midnight UTC.
        retry_after: u64,
    },
}

impl QuotaRefusal {
    /// A stable short code.
    pub fn code(&self) -> &'static str {
        match self {
            QuotaRefusal::RateLimited { .. } => "rate_limit_exceeded",
            QuotaRefusal::BudgetExhausted { .. } | QuotaRefusal::BudgetTooSmall { .. } => "token_budget_exceeded",
        }
    }

    /// Whether the daily token budget (not the request rate) refused it.
    pub fn is_budget(&self) -> bool {
        !matches!(self, QuotaRefusal::RateLimited { .. })
    }

    /// Seconds until a request can be accepted.
    pub fn retry_after(&self) -> u64 {
        match self {
            QuotaRefusal::RateLimited { retry_after, .. }
            | QuotaRefusal::BudgetExhausted { retry_after, .. }
            | QuotaRefusal::BudgetTooSmall { retry_after, .. } => *retry_after,
        }
    }
}

#[derive(Debug)]
struct Bucket {
    rpm: u32,
    tokens: f64,
    updated: Instant,
}

/// sled's page cache for the budget store (sled's default is 1 GiB). It holds one small counter per
/// client with a token budget and day (`DATE/client`), updated once per request, so 8 MiB caches
/// the days in use on any real box; a fixed cap keeps govboxd's memory bounded (tests/RELIABILITY.md,
/// caches).
const QUOTA_CACHE_BYTES: u64 = 8 << 20;

/// Rate buckets and the daily budget store.
#[derive(Debug)]
pub struct Quotas {
    buckets: Mutex<HashMap<String, Bucket>>,
    db: sled::Db,
}

impl Quotas {
    /// Opens (or creates) the budget store in `db_dir`.
    pub fn open(db_dir: &Path) -> Result<Self, QuotaError> {
        let db = sled::Config::new()
            .path(db_dir)
            .cache_capacity(QUOTA_CACHE_BYTES)
            .open()
            .map_err(|source| QuotaError::Open { path: db_dir.to_path_buf(), source })?;
        Ok(Quotas { buckets: Mutex::new(HashMap::new()), db })
    }

    /// Takes one request from the client's bucket (`default_rpm` when the client has no rate of
    /// its own; 0 means none), or says how long to wait.
    pub fn take_request(&self, client: &ClientRecord, default_rpm: u32, now: Instant) -> Result<(), QuotaRefusal> {
        let Some(rpm) = client.rpm.or(Some(default_rpm)).filter(|&r| r > 0) else {
            return Ok(());
        };
        // A panic while holding the lock cannot leave a bucket half-updated, so poison is harmless.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(client.name.clone()).or_insert(Bucket { rpm, tokens: rpm as f64, updated: now });
        if b.rpm != rpm {
            *b = Bucket { rpm, tokens: rpm as f64, updated: now };
        }
        let per_sec = rpm as f64 / 60.0;
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * per_sec).min(rpm as f64);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let retry_after = ((1.0 - b.tokens) / per_sec).ceil() as u64;
        Err(QuotaRefusal::RateLimited { rpm, retry_after })
    }

    fn key(client: &str, now: time::OffsetDateTime) -> Vec<u8> {
        let d = now.date();
        format!("{:04}-{:02}-{:02}/{client}", d.year(), u8::from(d.month()), d.day()).into_bytes()
    }

    /// Tokens the client has used today (UTC).
    pub fn used_today(&self, client: &str) -> u64 {
        self.used_on(client, time::OffsetDateTime::now_utc())
    }

    fn used_on(&self, client: &str, now: time::OffsetDateTime) -> u64 {
        match self.db.get(Self::key(client, now)) {
            Ok(Some(v)) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX),
            Ok(None) => 0,
            // Fail closed: an unreadable count is a spent budget.
            Err(_) => u64::MAX,
        }
    }

    /// Refuses the request when today's budget is spent (a cheap early check; [`Quotas::reserve`]
    /// is what keeps the budget).
    pub fn check_budget(&self, client: &ClientRecord) -> Result<(), QuotaRefusal> {
        let Some(budget) = client.tokens_per_day else {
            return Ok(());
        };
        let now = time::OffsetDateTime::now_utc();
        if self.used_on(&client.name, now) < budget {
            return Ok(());
        }
        Err(QuotaRefusal::BudgetExhausted { budget, retry_after: until_midnight(now) })
    }

    /// Reserves `tokens` (the most the request can use) against the client's budget for today, or
    /// refuses the request when they do not fit in what is left. Without a budget nothing is
    /// reserved, and [`Reservation::settle`] counts what was used.
    pub fn reserve(&self, client: &ClientRecord, tokens: u64) -> Result<Reservation, QuotaRefusal> {
        let now = time::OffsetDateTime::now_utc();
        let key = Self::key(&client.name, now);
        let mut reservation =
            Reservation { db: self.db.clone(), key, client: client.name.clone(), reserved: 0, settled: false };
        let Some(budget) = client.tokens_per_day else {
            return Ok(reservation);
        };
        let mut before = 0;
        let r = self.db.fetch_and_update(&reservation.key, |old| {
            before = decode(old);
            match before.checked_add(tokens).filter(|&n| n <= budget) {
                Some(n) => Some(n.to_be_bytes().to_vec()),
                None => old.map(<[u8]>::to_vec),
            }
        });
        let retry_after = until_midnight(now);
        match r {
            Ok(_) if before.saturating_add(tokens) <= budget => {
                reservation.reserved = tokens;
                Ok(reservation)
            }
            Ok(_) if before < budget => {
                Err(QuotaRefusal::BudgetTooSmall { budget, left: budget - before, wanted: tokens, retry_after })
            }
            Ok(_) => Err(QuotaRefusal::BudgetExhausted { budget, retry_after }),
            Err(e) => {
                // Fail closed: a count that cannot be read or written is a spent budget.
                log::error!("token budget store: reserving for client '{}' failed: {e}", client.name);
                Err(QuotaRefusal::BudgetExhausted { budget, retry_after })
            }
        }
    }

    /// Writes pending counts to disk (at shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.db.flush() {
            log::error!("token budget store: flush failed: {e}");
        }
    }
}

fn decode(v: Option<&[u8]>) -> u64 {
    v.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes)
}

fn until_midnight(now: time::OffsetDateTime) -> u64 {
    let midnight = now.date().next_day().map(|d| d.midnight().assume_utc());
    midnight.map_or(86_400, |m| (m - now).whole_seconds().max(1) as u64)
}

/// Adds `delta` (a charge, or a refund when negative) to the count under `key`, never below 0.
fn add(db: &sled::Db, key: &[u8], client: &str, delta: i128) {
    if delta == 0 {
        return;
    }
    let r = db.update_and_fetch(key, |old| {
        let n = (i128::from(decode(old)) + delta).clamp(0, i128::from(u64::MAX)) as u64;
        Some(n.to_be_bytes().to_vec())
    });
    if let Err(e) = r {
        log::error!("token budget store: updating client '{client}' failed: {e}");
    }
}

/// Tokens reserved for one request on the day it was admitted. Dropped unsettled (the request
/// never ran), it gives them all back.
#[derive(Debug)]
pub struct Reservation {
    db: sled::Db,
    key: Vec<u8>,
    client: String,
    reserved: u64,
    settled: bool,
}

impl Reservation {
    /// The request is over and used `used` tokens: what was reserved beyond that goes back (on
    /// the day it was reserved, even after midnight).
    pub fn settle(mut self, used: u64) {
        self.settled = true;
        add(&self.db, &self.key, &self.client, i128::from(used) - i128::from(self.reserved));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            add(&self.db, &self.key, &self.client, -i128::from(self.reserved));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn client(rpm: Option<u32>, budget: Option<u64>) -> ClientRecord {
        ClientRecord {
            name: "app".into(),
            models: vec![],
            scopes: vec![govbox_provisioning::Scope::Inference],
            rpm,
            tokens_per_day: budget,
            max_concurrent: None,
            cert_sha256: None,
            cert_not_after: 0,
            token_sha256: None,
            revoked: false,
            created: 0,
            allow_special_tokens: false,
            policy: None,
        }
    }

    #[test]
    fn rate_bucket_refills_over_the_minute_and_the_default_applies() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quotas::open(&dir.path().join("q")).unwrap();
        let c = client(Some(2), None);
        let t0 = Instant::now();
        q.take_request(&c, 0, t0).unwrap();
        q.take_request(&c, 0, t0).unwrap();
        match q.take_request(&c, 0, t0) {
            Err(QuotaRefusal::RateLimited { rpm: 2, retry_after }) => assert_eq!(retry_after, 30),
            other => panic!("{other:?}"),
        }
        q.take_request(&c, 0, t0 + Duration::from_secs(31)).unwrap();
        // No rate of its own: the box's default, and none when that is 0.
        let mut other = client(None, None);
        other.name = "other".into();
        q.take_request(&other, 1, t0).unwrap();
        assert!(matches!(q.take_request(&other, 1, t0), Err(QuotaRefusal::RateLimited { rpm: 1, .. })));
        other.name = "free".into();
        for _ in 0..100 {
            q.take_request(&other, 0, t0).unwrap();
        }
    }

    #[test]
    fn reservations_never_let_the_budget_be_overspent_and_refund_the_unused_part() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quotas::open(&dir.path().join("q")).unwrap();
        let c = client(None, Some(50));
        // 16 at once, each able to use 30: only one fits.
        let held: Vec<_> = (0..16).map(|_| q.reserve(&c, 30)).collect();
        let ok: Vec<_> = held.into_iter().filter_map(Result::ok).collect();
        assert_eq!((ok.len(), q.used_today("app")), (1, 30));
        match q.reserve(&c, 30) {
            Err(QuotaRefusal::BudgetTooSmall { budget: 50, left: 20, wanted: 30, .. }) => {}
            other => panic!("{other:?}"),
        }
        // It used 12 of its 30: 18 come back.
        ok.into_iter().for_each(|r| r.settle(12));
        assert_eq!(q.used_today("app"), 12);
        // One that never ran gives everything back.
        drop(q.reserve(&c, 38).unwrap());
        assert_eq!(q.used_today("app"), 12);
        q.reserve(&c, 38).unwrap().settle(38);
        assert!(matches!(q.reserve(&c, 1), Err(QuotaRefusal::BudgetExhausted { budget: 50, .. })));
        assert!(matches!(q.check_budget(&c), Err(QuotaRefusal::BudgetExhausted { .. })));
    }

    #[test]
    fn use_is_counted_without_a_budget_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Quotas::open(&dir.path().join("q")).unwrap();
            q.reserve(&client(None, None), 0).unwrap().settle(14);
            assert_eq!(q.used_today("app"), 14);
            assert!(matches!(q.check_budget(&client(None, Some(10))), Err(QuotaRefusal::BudgetExhausted { .. })));
            q.flush();
        }
        // sled's flusher thread lets go of the file lock a moment after the handle is dropped:
        // poll the reopen with a deadline rather than assume it is immediate.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let q = loop {
            match Quotas::open(&dir.path().join("q")) {
                Ok(q) => break q,
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("reopening the quota store: {e}"),
            }
        };
        assert_eq!(q.used_today("app"), 14);
        assert!(q.check_budget(&client(None, None)).is_ok());
    }
}
