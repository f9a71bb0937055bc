//! The update journal: where root's `govbox update` records a step that govboxd could not take
//! over its admin socket (it is stopped, starting, or being replaced), for govboxd to import into
//! the audit log at its next start.
//!
//! ```text
//! ROOT/update-journal.jsonl   one JSON object per line: journal id, sequence number, time, step,
//!                             detail (0644, root-owned; only appended to)
//! ```
//!
//! Root never opens the service's state folder (a symlink planted there would make root write
//! wherever it points), and govboxd never writes the install folder (it is read-only to it). So
//! each side keeps its own half: root appends here; govboxd remembers in its state folder the
//! last `(journal, seq)` it imported ([`JournalMark`]) and imports what follows, in order, each
//! entry tagged with [`JournalEntry::tag`] so that an import cut short between the audit append
//! and the mark is recognised at the next start instead of repeated.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::UpdateError;
use super::layout::{InstallRoot, now_rfc3339};
use crate::fsutil::random_hex;

type Result<T> = std::result::Result<T, UpdateError>;

/// The journal's file name in the install folder.
pub const JOURNAL_NAME: &str = "update-journal.jsonl";
/// The largest journal read or appended to (about 10,000 entries, a thousand updates).
pub const JOURNAL_LIMIT: u64 = 4 << 20;
/// The longest step and detail kept; longer ones are cut (they are written by root, but read by
/// the daemon, which treats them as outside data).
const STEP_LIMIT: usize = 64;
const DETAIL_LIMIT: usize = 4096;

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    /// The journal's id (random, chosen when the file is started).
    pub journal: String,
    /// 1, 2, 3, ... within the journal.
    pub seq: u64,
    /// When root recorded the step (RFC 3339).
    pub time: String,
    /// The step, as [`crate::update::UpdateHost::record`] names it.
    pub step: String,
    /// Its detail.
    pub detail: String,
}

impl JournalEntry {
    /// What the imported audit entry's detail ends with: names the entry exactly once.
    pub fn tag(&self) -> String {
        format!("[update journal {} #{}, recorded {}]", self.journal, self.seq, self.time)
    }

    /// This entry's position, as a mark.
    pub fn mark(&self) -> JournalMark {
        JournalMark { journal: self.journal.clone(), seq: self.seq }
    }
}

/// The last journal entry govboxd imported: `JOURNAL_ID SEQ` in its state folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalMark {
    /// The journal's id.
    pub journal: String,
    /// The last imported sequence number.
    pub seq: u64,
}

impl JournalMark {
    /// Parses `JOURNAL_ID SEQ`.
    pub fn parse(text: &str) -> Option<Self> {
        let (journal, seq) = text.trim().split_once(' ')?;
        let ok = !journal.is_empty() && journal.len() <= 64 && journal.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then_some(())?;
        Some(Self { journal: journal.to_string(), seq: seq.parse().ok()? })
    }

    /// `JOURNAL_ID SEQ\n`.
    pub fn to_line(&self) -> String {
        format!("{} {}\n", self.journal, self.seq)
    }
}

/// The entries of `entries` (one journal, in order) that come after `mark`: all of them when the
/// mark is of another journal (the file was started again) or there is none.
pub fn after_mark<'a>(entries: &'a [JournalEntry], mark: Option<&JournalMark>) -> &'a [JournalEntry] {
    let from = match mark {
        Some(m) => entries.iter().position(|e| e.journal != m.journal || e.seq > m.seq).unwrap_or(entries.len()),
        None => 0,
    };
    &entries[from..]
}

impl InstallRoot {
    /// `ROOT/update-journal.jsonl`.
    pub fn journal_file(&self) -> PathBuf {
        self.path().join(JOURNAL_NAME)
    }

    /// Appends one step, durably, and returns it. Creates the journal (with a new id) when there
    /// is none. The file is opened without following a symlink.
    pub fn journal_append(&self, step: &str, detail: &str) -> Result<JournalEntry> {
        let path = self.journal_file();
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o644)
            .custom_flags(nix_o_nofollow())
            .open(&path)
            .map_err(|e| UpdateError::io("opening the update journal", &path, e))?;
        let text = read_limited(&mut f, &path)?;
        let last = parse_lines(&text).pop();
        let entry = JournalEntry {
            journal: match &last {
                Some(l) => l.journal.clone(),
                None => random_hex(8)?,
            },
            seq: last.as_ref().map_or(1, |l| l.seq + 1),
            time: now_rfc3339(),
            step: cut(step, STEP_LIMIT),
            detail: cut(detail, DETAIL_LIMIT),
        };
        let mut line = if text.is_empty() || text.ends_with('\n') { String::new() } else { "\n".to_string() };
        line.push_str(
            &serde_json::to_string(&entry)
                .map_err(|e| UpdateError::CorruptState { path: path.clone(), reason: e.to_string() })?,
        );
        line.push('\n');
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| UpdateError::io("appending to", &path, e))?;
        Ok(entry)
    }
}

/// Reads a journal: its well-formed entries of its latest journal id, in order. A line that does
/// not parse (a torn last line after a power loss) is skipped; no journal is no entries.
pub fn read_journal(path: &Path) -> Result<Vec<JournalEntry>> {
    let mut f = match OpenOptions::new().read(true).custom_flags(nix_o_nofollow()).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(UpdateError::io("opening the update journal", path, e)),
    };
    let text = read_limited(&mut f, path)?;
    let mut entries = parse_lines(&text);
    if let Some(last) = entries.last().map(|e| e.journal.clone()) {
        entries.retain(|e| e.journal == last);
    }
    Ok(entries)
}

fn read_limited(f: &mut File, path: &Path) -> Result<String> {
    f.seek(SeekFrom::Start(0)).map_err(|e| UpdateError::io("reading the update journal", path, e))?;
    let mut bytes = Vec::new();
    f.take(JOURNAL_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| UpdateError::io("reading the update journal", path, e))?;
    if bytes.len() as u64 > JOURNAL_LIMIT {
        return Err(UpdateError::CorruptState {
            path: path.to_path_buf(),
            reason: format!("the update journal is larger than its {JOURNAL_LIMIT}-byte limit"),
        });
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn parse_lines(text: &str) -> Vec<JournalEntry> {
    let mut out: Vec<JournalEntry> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(e) = serde_json::from_str::<JournalEntry>(line) else { continue };
        // Within one journal, sequence numbers only rise; anything else is not ours to import.
        if out.last().is_some_and(|l| l.journal == e.journal && e.seq <= l.seq) {
            continue;
        }
        out.push(e);
    }
    out
}

fn cut(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A symlink at the journal's name is refused, not followed (`ELOOP`).
const fn nix_o_nofollow() -> i32 {
    libc::O_NOFOLLOW
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_follow_each_other_and_the_mark_selects_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let root = InstallRoot::new(dir.path());
        let a = root.journal_append("refused", "junk.gbu: bad").unwrap();
        let b = root.journal_append("trial_boot", &"x".repeat(10_000)).unwrap();
        assert_eq!((a.seq, b.seq, a.journal == b.journal), (1, 2, true));
        assert!(b.detail.len() < 4200);
        // A torn line (power loss) is skipped and the next append starts on a new line.
        std::fs::OpenOptions::new().append(true).open(root.journal_file()).unwrap().write_all(b"{\"jour").unwrap();
        let c = root.journal_append("committed", "slot b").unwrap();
        let all = read_journal(&root.journal_file()).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(after_mark(&all, None).len(), 3);
        assert_eq!(after_mark(&all, Some(&a.mark())), &all[1..]);
        assert_eq!(after_mark(&all, Some(&c.mark())).len(), 0);
        let other = JournalMark { journal: "00".into(), seq: 9 };
        assert_eq!(after_mark(&all, Some(&other)).len(), 3, "a new journal is imported whole");
        assert_eq!(JournalMark::parse(&c.mark().to_line()), Some(c.mark()));
        assert_eq!(JournalMark::parse("zz 1"), None);
    }

    #[test]
    fn a_symlinked_journal_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = InstallRoot::new(dir.path().join("opt"));
        std::fs::create_dir(root.path()).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.journal_file()).unwrap();
        assert!(root.journal_append("x", "y").is_err());
        assert!(!dir.path().join("elsewhere").exists());
    }
}
