//! The one logging module: journald when systemd connected stderr to the journal, plain stderr
//! lines otherwise.
//!
//! What may be logged is decided where each line is written, and the rule is short: request id,
//! client name, model, endpoint, status, token counts and latency. Never a prompt, an answer, a
//! token id, a key, a bearer token or a request body, at any level. Other crates' log lines are
//! capped at `warn` whatever the configured level, because their debug output is not ours to vet.

use std::io::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};

use log::{LevelFilter, Log, Metadata, Record};

/// The level of govbox's own lines; raised by `-v`, changed on SIGHUP.
static OWN_LEVEL: AtomicUsize = AtomicUsize::new(LevelFilter::Info as usize);
/// Other crates never log above this.
const FOREIGN_MAX: LevelFilter = LevelFilter::Warn;

/// The config's `log_level`: one of `error`, `warn`, `info`, `debug`, `trace`, lower case
/// (`log`'s own parser would also take `off` and any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLevel(pub LevelFilter);

/// A `log_level` that is not one of the five names.
#[derive(Debug, thiserror::Error)]
#[error("\"{0}\" is not a log level: must be one of error, warn, info, debug, trace")]
pub struct UnknownLogLevel(String);

impl std::str::FromStr for LogLevel {
    type Err = UnknownLogLevel;

    fn from_str(name: &str) -> Result<Self, UnknownLogLevel> {
        let level = match name {
            "error" => LevelFilter::Error,
            "warn" => LevelFilter::Warn,
            "info" => LevelFilter::Info,
            "debug" => LevelFilter::Debug,
            "trace" => LevelFilter::Trace,
            _ => return Err(UnknownLogLevel(name.to_string())),
        };
        Ok(LogLevel(level))
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.as_str().to_ascii_lowercase())
    }
}

/// `base` raised by `verbose` steps (`-v` is debug over info, `-vv` trace).
pub fn raise(base: LevelFilter, verbose: u8) -> LevelFilter {
    let mut level = base;
    for _ in 0..verbose {
        level = match level {
            LevelFilter::Off => LevelFilter::Error,
            LevelFilter::Error => LevelFilter::Warn,
            LevelFilter::Warn => LevelFilter::Info,
            LevelFilter::Info => LevelFilter::Debug,
            _ => LevelFilter::Trace,
        };
    }
    level
}

fn own_level() -> LevelFilter {
    match OWN_LEVEL.load(Ordering::Relaxed) {
        0 => LevelFilter::Off,
        1 => LevelFilter::Error,
        2 => LevelFilter::Warn,
        3 => LevelFilter::Info,
        4 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Sets the level of govbox's own lines.
pub fn set_level(level: LevelFilter) {
    OWN_LEVEL.store(level as usize, Ordering::Relaxed);
    log::set_max_level(level);
}

enum Sink {
    Journal(systemd_journal_logger::JournalLog),
    Stderr,
}

struct Logger {
    sink: Sink,
}

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        let own = m.target().starts_with("govbox");
        let max = if own { own_level() } else { own_level().min(FOREIGN_MAX) };
        m.level() <= max
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        match &self.sink {
            Sink::Journal(j) => j.log(record),
            Sink::Stderr => {
                let now = time::OffsetDateTime::now_utc();
                let ts = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
                // One write per line so concurrent lines do not interleave.
                let line = format!("{ts} {:<5} {}: {}\n", record.level(), record.target(), record.args());
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

/// Installs the logger at `level`. Returns which sink was chosen, for the first log line.
pub fn init(level: LevelFilter) -> &'static str {
    let (sink, name) = if systemd_journal_logger::connected_to_journal() {
        match systemd_journal_logger::JournalLog::new() {
            Ok(j) => (Sink::Journal(j.with_syslog_identifier("govboxd".into())), "journald"),
            Err(_) => (Sink::Stderr, "stderr (journald socket unavailable)"),
        }
    } else {
        (Sink::Stderr, "stderr")
    };
    // A second init (only possible in tests) keeps the first logger.
    let _ = log::set_boxed_logger(Box::new(Logger { sink }));
    set_level(level);
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_raise() {
        assert_eq!("debug".parse::<LogLevel>().unwrap(), LogLevel(LevelFilter::Debug));
        assert!("DEBUG".parse::<LogLevel>().is_err() && "off".parse::<LogLevel>().is_err());
        assert_eq!(LogLevel(LevelFilter::Warn).to_string(), "warn");
        assert_eq!(raise(LevelFilter::Info, 1), LevelFilter::Debug);
        assert_eq!(raise(LevelFilter::Info, 5), LevelFilter::Trace);
        assert_eq!(raise(LevelFilter::Warn, 0), LevelFilter::Warn);
    }

    #[test]
    fn foreign_crates_stay_at_warn() {
        set_level(LevelFilter::Trace);
        let l = Logger { sink: Sink::Stderr };
        let md = |target, level| Metadata::builder().target(target).level(level).build();
        assert!(l.enabled(&md("govbox_daemon::api", log::Level::Trace)));
        assert!(!l.enabled(&md("rustls::server", log::Level::Debug)));
        assert!(l.enabled(&md("sled", log::Level::Warn)));
        set_level(LevelFilter::Info);
    }
}
