//! Getting a backup back: choose it among every destination's backups, get one good copy of it
//! (`artifact`: checked, decrypted, decompressed), and restore that into a new data dir (`etcdutl`).

mod artifact;
mod etcdutl;
pub mod files;
mod hashing;

pub use artifact::{Keep, Plain, check_artifact, check_copy, check_file, decrypt_from, fetch_and_decrypt};
pub use etcdutl::{
    Bump, DEFAULT_BUMP, MemberFlags, check_new_data_dir, restore_into, restore_tool, searched, tool_dirs,
};

use anyhow::{Result, anyhow};

use crate::manifest::{BackupId, Manifest};
use crate::store::{Destination, Stored};

/// Where a restore goes: a new data dir (as this member, with etcd's tools from this folder or PATH), or
/// the plain snapshot as a new file.
pub enum Target {
    DataDir(std::path::PathBuf, MemberFlags, Option<std::path::PathBuf>),
    File(std::path::PathBuf),
}

impl Target {
    /// Refuses a target a restore could not finish into, before anything is fetched: a data dir that is
    /// not new, no etcd tool to restore with, a file that exists.
    pub fn check(&self) -> Result<()> {
        match self {
            Target::DataDir(dir, _, etcd_bin) => {
                check_new_data_dir(dir)?;
                restore_tool(etcd_bin.as_deref())?;
            }
            // symlink_metadata: a dangling symlink exists too, and renaming over it would replace the link.
            Target::File(file) if file.symlink_metadata().is_ok() => {
                return Err(anyhow!("'{}' already exists: choose a new file", file.display()));
            }
            Target::File(_) => {}
        }
        Ok(())
    }
}

/// Which backup: an id, the newest, or the newest before a time.
#[derive(Debug, Clone)]
pub enum Selector {
    Id(BackupId),
    Latest,
    Before(chrono::DateTime<chrono::Utc>),
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        if text == "latest" { Ok(Selector::Latest) } else { BackupId::parse(text).map(Selector::Id) }
    }

    /// The id this selector picks among every destination's backups at `now`. `latest` and `--before`
    /// never pick a backup dated in the future (a wrong clock when it was taken) while another exists:
    /// its date says nothing about how new its data is. Nor an emergency backup whose data is older than
    /// its date (`stale_emergency`).
    pub fn pick(&self, backups: &[&Stored], now: chrono::DateTime<chrono::Utc>) -> Option<BackupId> {
        let fresh: Vec<&Stored> = backups.iter().copied().filter(|b| !stale_emergency(b, backups)).collect();
        let backups = if matches!(self, Selector::Id(_)) || fresh.is_empty() { backups } else { &fresh[..] };
        let ids = backups.iter().map(|b| &b.manifest.id);
        let newest = |ids: Vec<&BackupId>| -> Option<BackupId> {
            let (present, future): (Vec<&BackupId>, Vec<&BackupId>) =
                ids.into_iter().partition(|id| !crate::retention::is_future_dated(id, now));
            present.into_iter().max().or_else(|| future.into_iter().max()).cloned()
        };
        match self {
            Selector::Id(id) => ids.into_iter().find(|i| *i == id).cloned(),
            Selector::Latest => newest(ids.collect()),
            Selector::Before(t) => newest(ids.filter(|id| id.created() < *t).collect()),
        }
    }
}

/// An emergency backup (taken without quorum, perhaps by a member cut off from a majority that kept
/// going) whose data is older than its date: another backup taken up to a day before it holds a higher
/// revision. `latest` passes it over.
fn stale_emergency(b: &Stored, all: &[&Stored]) -> bool {
    let id = &b.manifest.id;
    b.manifest.is_emergency()
        && all.iter().any(|o| {
            let other = &o.manifest.id;
            other.revision() > id.revision()
                && other.created() <= id.created()
                && id.created() - other.created() <= chrono::TimeDelta::days(1)
        })
}

/// The chosen backup and the destinations that hold it, local first, each with its own manifest: every
/// copy is checked against the manifest stored beside it, so one damaged manifest condemns one copy.
pub struct Found<'a> {
    /// The first holder's manifest, for messages.
    pub manifest: Manifest,
    pub holders: Vec<(&'a Destination, Stored)>,
}

/// Lists every destination and picks the backup among all of them (the newest of any destination is
/// `latest`): what was found (local first), and the destinations that could not be listed.
pub async fn locate<'a>(destinations: &'a [Destination], selector: &Selector) -> (Option<Found<'a>>, Vec<String>) {
    let mut listings = Vec::new();
    let mut errors = Vec::new();
    for d in destinations {
        match d.list().await {
            Ok(listing) => listings.push((d, listing)),
            Err(e) => errors.push(format!("{}: {e:#}", d.kind())),
        }
    }
    let all: Vec<&Stored> = listings.iter().flat_map(|(_, l)| l.backups.iter()).collect();
    let Some(id) = selector.pick(&all, chrono::Utc::now()) else { return (None, errors) };
    let holders: Vec<(&Destination, Stored)> = listings
        .into_iter()
        .filter_map(|(d, l)| l.backups.into_iter().find(|b| b.manifest.id == id).map(|s| (d, s)))
        .collect();
    let found = holders.first().map(|(_, s)| s.manifest.clone()).map(|manifest| Found { manifest, holders });
    (found, errors)
}

/// What no destination holds, for the error.
pub fn not_found(selector: &Selector) -> String {
    match selector {
        Selector::Id(id) => format!("no destination holds a backup {id}"),
        Selector::Latest => "no destination holds any backup".to_string(),
        Selector::Before(t) => format!("no backup was taken before {t}"),
    }
}

/// Finds a backup in the destinations (local first); a destination that cannot be listed matters only
/// when no other holds it.
pub async fn find<'a>(destinations: &'a [Destination], selector: &Selector) -> Result<Found<'a>> {
    let (found, errors) = locate(destinations, selector).await;
    found.ok_or_else(|| {
        let what = not_found(selector);
        if errors.is_empty() {
            anyhow!("{what} (see etcd-backupd list)")
        } else {
            anyhow!("{what}; also: {}", errors.join("; "))
        }
    })
}

/// Age identities, shared with the blocking task that decrypts.
pub type Identities = std::sync::Arc<Vec<Box<dyn age::Identity + Send + Sync>>>;

/// Makes one copy of `found` plain at `output`: the holders in order (local first), a damaged or
/// unreadable copy falling back to the next. `Err` names why each copy failed, or says the restore was
/// interrupted.
pub async fn first_good_copy(
    found: &Found<'_>,
    identities: &Identities,
    scratch: &std::path::Path,
    output: &std::path::Path,
    keep: Keep,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Plain> {
    let mut failures = Vec::new();
    for (holder, stored) in &found.holders {
        tracing::info!(id = %found.manifest.id, from = %holder.kind(), "restoring");
        match fetch_and_decrypt(holder, &stored.manifest, identities, scratch, output, keep, cancel).await {
            Ok(plain) => return Ok(plain),
            Err(e) => {
                tracing::warn!(from = %holder.kind(), error = %format!("{e:#}"), "this copy cannot be restored; trying the next");
                failures.push(format!("{}: {e:#}", holder.kind()));
            }
        }
    }
    if cancel.is_cancelled() {
        return Err(crate::interrupt::Interrupted.into());
    }
    Err(anyhow!("no copy of {} could be restored:\n  {}", found.manifest.id, failures.join("\n  ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn stored(minute: u32, revision: i64, emergency: bool) -> Stored {
        let mut manifest = crate::manifest::tests::sample();
        let at = Utc.with_ymd_and_hms(2026, 11, 22, 6, minute, 0).unwrap();
        manifest.id = BackupId::new(at, revision, "8e9e05c52164694d");
        manifest.created = at;
        manifest.etcd.revision = revision;
        manifest.label = emergency.then(|| crate::manifest::EMERGENCY_LABEL.to_string());
        Stored { manifest, pinned: false }
    }

    /// A member cut off from the majority takes emergency backups of its stale data while the majority
    /// backs up as usual: `latest` is the majority's backup, the newest data.
    #[test]
    fn latest_passes_over_an_emergency_backup_older_in_data_than_in_date() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 7, 0, 0).unwrap();
        let normal = stored(0, 5000, false);
        let stale = stored(1, 4000, true);
        let all = [&normal, &stale];
        assert_eq!(Selector::Latest.pick(&all, now), Some(normal.manifest.id.clone()));
        let before = Selector::Before(Utc.with_ymd_and_hms(2026, 11, 22, 6, 30, 0).unwrap());
        assert_eq!(before.pick(&all, now), Some(normal.manifest.id.clone()));
        assert_eq!(Selector::Id(stale.manifest.id.clone()).pick(&all, now), Some(stale.manifest.id.clone()));
        // An emergency backup that holds the newest data is the newest.
        let ahead = stored(2, 6000, true);
        assert_eq!(Selector::Latest.pick(&[&normal, &stale, &ahead], now), Some(ahead.manifest.id.clone()));
        // Alone, it is what there is.
        assert_eq!(Selector::Latest.pick(&[&stale], now), Some(stale.manifest.id.clone()));
    }
}
