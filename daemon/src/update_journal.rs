//! At start, govboxd takes the steps that root's `govbox update` could not hand it over the
//! admin socket (it was stopped or starting) from the root-owned update journal
//! (`ROOT/update-journal.jsonl`, see `govbox_images::update::read_journal`) into the audit log.
//!
//! Root never writes the state folder and govboxd never writes the install folder, so the mark of
//! what was imported is govboxd's own: `STATE/update-journal.imported` (`JOURNAL_ID SEQ`), written
//! after each entry is durable in the audit log. Every imported entry ends with the journal
//! entry's tag; if govboxd dies between an append and its mark, the next start finds that tag on
//! the log's last entry and moves the mark instead of appending the entry again. So each journal
//! entry is in the audit log exactly once, in journal order.

use std::path::{Path, PathBuf};

use govbox_audit::{AuditHandle, Event};
use govbox_images::update::{InstallRoot, JournalEntry, JournalMark, after_mark, read_journal};
use govbox_provisioning::Overwrite;

use crate::auditing::Audit;

/// The mark's file name in the state folder.
const MARK_NAME: &str = "update-journal.imported";

/// Why the journal could not be imported (govboxd starts anyway and tries again next start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalImportError {
    /// The journal could not be read.
    #[error("reading the update journal: {0}")]
    Read(#[from] govbox_images::update::UpdateError),
    /// The audit log refused an entry.
    #[error("appending an imported update entry to the audit log: {0}")]
    Audit(#[from] govbox_audit::AuditError),
    /// The mark could not be written.
    #[error("writing {}: {source}", path.display())]
    Mark {
        /// The mark file.
        path: PathBuf,
        /// Why.
        source: govbox_provisioning::ProvisionError,
    },
}

/// Imports what follows the mark; returns how many entries were appended.
pub async fn import(install_root: &Path, state_dir: &Path, audit: &Audit) -> Result<usize, JournalImportError> {
    let root = InstallRoot::new(install_root);
    let entries = read_journal(&root.journal_file())?;
    let mark_path = state_dir.join(MARK_NAME);
    let mark = std::fs::read_to_string(&mark_path).ok().and_then(|t| JournalMark::parse(&t));
    let mut pending = after_mark(&entries, mark.as_ref());
    // An append whose mark was not written: it is the log's last entry.
    if let Some(first) = pending.first()
        && last_update_detail(audit).is_some_and(|d| d.ends_with(&first.tag()))
    {
        write_mark(&mark_path, first)?;
        pending = &pending[1..];
    }
    for e in pending {
        let detail = format!("{} {}", e.detail, e.tag());
        audit.append(Event::Update { step: e.step.clone(), detail }).await?;
        write_mark(&mark_path, e)?;
    }
    Ok(pending.len())
}

fn last_update_detail(audit: &AuditHandle) -> Option<String> {
    match audit.tail(1).ok()?.pop()?.event {
        Event::Update { detail, .. } => Some(detail),
        _ => None,
    }
}

fn write_mark(path: &Path, e: &JournalEntry) -> Result<(), JournalImportError> {
    govbox_provisioning::write_file(
        path,
        e.mark().to_line().as_bytes(),
        0o600,
        Overwrite::Replace,
        "update journal mark",
    )
    .map_err(|source| JournalImportError::Mark { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use govbox_audit::{AuditKeys, AuditLog, AuditOptions};
    use govbox_provisioning::SigningKey;

    fn update_entries(log: &AuditHandle) -> Vec<(String, String)> {
        log.tail(100)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.event {
                Event::Update { step, detail } => Some((step, detail)),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn each_journal_entry_is_imported_once_in_order_even_when_the_mark_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let (opt, state) = (dir.path().join("opt"), dir.path().join("state"));
        std::fs::create_dir_all(&state).unwrap();
        let keys = AuditKeys::new(SigningKey::generate().unwrap(), [7; 32]);
        let cpu = govbox_drivers::cpu::CpuBackend::new(1).unwrap();
        let metrics = crate::metrics::Metrics::new(&govbox_drivers::Backend::info(&cpu), &[]);
        let log = Audit::new(
            AuditHandle::InProcess(AuditLog::open(dir.path().join("audit"), keys, AuditOptions::default()).unwrap()),
            &metrics,
        );
        let root = InstallRoot::new(&opt);
        std::fs::create_dir_all(&opt).unwrap();
        assert_eq!(import(&opt, &state, &log).await.unwrap(), 0, "no journal, nothing to do");

        root.journal_append("trial_boot", "slot b: start 1 of 3").unwrap();
        root.journal_append("reverted", "back on slot a").unwrap();
        assert_eq!(import(&opt, &state, &log).await.unwrap(), 2);
        assert_eq!(import(&opt, &state, &log).await.unwrap(), 0, "imported entries are not repeated");
        let got = update_entries(&log);
        assert_eq!(got.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["trial_boot", "reverted"]);
        assert!(got[1].1.starts_with("back on slot a [update journal "), "{}", got[1].1);

        // govboxd died after appending entry 3 and before marking it: the mark still says 2.
        let third = root.journal_append("committed", "slot a").unwrap();
        let before_third = std::fs::read_to_string(state.join(MARK_NAME)).unwrap();
        assert_eq!(import(&opt, &state, &log).await.unwrap(), 1);
        std::fs::write(state.join(MARK_NAME), before_third).unwrap();
        root.journal_append("refused", "junk.gbu").unwrap();
        assert_eq!(import(&opt, &state, &log).await.unwrap(), 1, "entry 3 is recognised, only 4 is new");
        let steps: Vec<String> = update_entries(&log).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, ["trial_boot", "reverted", "committed", "refused"]);
        assert_eq!(std::fs::read_to_string(state.join(MARK_NAME)).unwrap(), format!("{} 4\n", third.journal));
        // Imported entries count for /metrics like every other append.
        assert_eq!(metrics.audit_entries.get(), log.tree_size(), "govbox_audit_entries_total");
        tokio::task::block_in_place(|| log.close()).unwrap();
    }
}
