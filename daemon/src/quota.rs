//! Per-client limits: requests per minute (a token bucket in memory) and tokens per UTC day
//! (counted in sled at `STATE/state/quota`, so that a restart does not hand out a fresh budget).
//!
//! The budget is checked before a request starts and charged when it ends, with what it really
//! used, so the last request of a day may take a client a little over its budget; it never
//! starts a request once the budget is spent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use govbox_provisioning::ClientRecord;

use crate::api::error::ApiError;

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

    /// Takes one request from the client's bucket, or says how long to wait.
    pub fn take_request(&self, client: &ClientRecord, now: Instant) -> Result<(), ApiError> {
        let Some(rpm) = client.rpm.filter(|&r| r > 0) else {
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
        Err(ApiError::RateLimited { rpm, retry_after })
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

    /// Refuses the request when today's budget is spent.
    pub fn check_budget(&self, client: &ClientRecord) -> Result<(), ApiError> {
        let Some(budget) = client.tokens_per_day else {
            return Ok(());
        };
        let now = time::OffsetDateTime::now_utc();
        if self.used_on(&client.name, now) < budget {
            return Ok(());
        }
        let midnight = now.date().next_day().map(|d| d.midnight().assume_utc());
        let retry_after = midnight.map_or(86_400, |m| (m - now).whole_seconds().max(1) as u64);
        Err(ApiError::BudgetExhausted { budget, retry_after })
    }

    /// Adds `tokens` to the client's count for today.
    pub fn charge(&self, client: &str, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let key = Self::key(client, time::OffsetDateTime::now_utc());
        let r = self.db.update_and_fetch(key, |old| {
            let prev = old.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes);
            Some(prev.saturating_add(tokens).to_be_bytes().to_vec())
        });
        if let Err(e) = r {
            log::error!("token budget store: charging client '{client}' failed: {e}");
        }
    }

    /// Writes pending counts to disk (at shutdown).
    pub fn flush(&self) {
        if let Err(e) = self.db.flush() {
            log::error!("token budget store: flush failed: {e}");
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
            cert_sha256: None,
            cert_not_after: 0,
            token_sha256: None,
            revoked: false,
            created: 0,
        }
    }

    #[test]
    fn rate_bucket_refills_over_the_minute() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quotas::open(&dir.path().join("q")).unwrap();
        let c = client(Some(2), None);
        let t0 = Instant::now();
        q.take_request(&c, t0).unwrap();
        q.take_request(&c, t0).unwrap();
        match q.take_request(&c, t0) {
            Err(ApiError::RateLimited { rpm: 2, retry_after }) => assert_eq!(retry_after, 30),
            other => panic!("{other:?}"),
        }
        q.take_request(&c, t0 + Duration::from_secs(31)).unwrap();
        q.take_request(&client(None, None), t0).unwrap();
    }

    #[test]
    fn budget_is_counted_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let c = client(None, Some(10));
        {
            let q = Quotas::open(&dir.path().join("q")).unwrap();
            q.check_budget(&c).unwrap();
            q.charge("app", 7);
            q.check_budget(&c).unwrap();
            q.charge("app", 7);
            assert_eq!(q.used_today("app"), 14);
            assert!(matches!(q.check_budget(&c), Err(ApiError::BudgetExhausted { budget: 10, .. })));
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
