//! Restore drills: prove a backup restores by restoring it into a temporary data dir, starting a
//! throwaway etcd on loopback, and comparing what that member serves with what the manifest recorded.
//! The comparison and the member's command line are pure; the rest is thin glue around `restore`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::Utc;

use crate::config::Settings;
use crate::manifest::Manifest;
use crate::restore::Selector;
use tokio_util::sync::CancellationToken;

/// What a member restored from the backup must serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub revision: i64,
    pub keys: u64,
}

/// What the throwaway member served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub revision: i64,
    pub keys: u64,
}

/// The revision and key count a restored member must serve, from the database status in the manifest.
pub fn expected(manifest: &Manifest) -> Result<Expected, String> {
    let status = manifest.snapshot.status.ok_or_else(|| {
        format!("the manifest of {} records no database status (it predates drills): drill a newer backup", manifest.id)
    })?;
    Ok(Expected { revision: status.served_revision(), keys: status.live_keys })
}

/// Compares the member with the manifest; the error says both.
pub fn compare(expected: Expected, observed: Observed) -> Result<(), String> {
    let mut wrong = Vec::new();
    if observed.revision != expected.revision {
        wrong.push(format!("revision {} where the manifest says {}", observed.revision, expected.revision));
    }
    if observed.keys != expected.keys {
        wrong.push(format!("{} keys where the manifest says {}", observed.keys, expected.keys));
    }
    if wrong.is_empty() { Ok(()) } else { Err(format!("the restored member serves {}", wrong.join(" and "))) }
}

/// The backup's chain of delta segments in `holder`, if it has one, replayed to its end: the member
/// must be at the chain's last revision and hold the keys the streamer counted there.
async fn drill_chain(
    settings: &Settings,
    holder: &crate::store::Destination,
    base: &Manifest,
    identities: &crate::restore::Identities,
    etcd_bin: Option<&Path>,
    scratch: &Path,
    cancel: &CancellationToken,
) -> Result<Option<ChainDrill>> {
    let Some(status) = &base.snapshot.status else { return Ok(None) };
    let listing = holder.list().await?;
    if !listing.segments.iter().any(|p| p.id.base() == &base.id) {
        return Ok(None);
    }
    let (segments, rejected) =
        crate::deltas::stored::read_chain(&**holder, &listing.segments, &base.id, &settings.cluster).await;
    // A segment manifest of this chain that does not check out is a fault of the chain, wherever it is.
    if let Some((name, why)) = rejected.first() {
        bail!("the chain of {} holds a segment whose manifest does not check out: {name}: {why}", base.id);
    }
    let chain = crate::deltas::chain::follow(&base.id, status.served_revision(), &segments);
    if let Some(broken) = &chain.broken {
        bail!("{broken}");
    }
    let Some(last) = chain.segments.last() else { return Ok(None) };
    let chosen = crate::deltas::point::Chosen {
        holder,
        base: base.clone(),
        segments: chain.segments.iter().map(|s| (*s).clone()).collect(),
        reach: last.last_revision,
    };
    let work = scratch.join("chain");
    std::fs::create_dir(&work).with_context(|| format!("cannot create '{}'", work.display()))?;
    let target = crate::deltas::chain::Target::Revision(last.last_revision);
    let end = work.join("end.db");
    let ask = crate::deltas::point::Ask {
        target,
        identities,
        settings,
        etcd_bin,
        output: &end,
        keep: crate::restore::Keep::Scratch,
        cancel,
    };
    let at = crate::deltas::point::restore_to(&chosen, &ask, &work)
        .await
        .with_context(|| format!("the chain of delta segments of {} cannot be replayed", base.id))?;
    let observed = Observed { revision: at.revision, keys: at.keys };
    // The stream counts the keys when it commits a segment; without that count (etcd could not tell:
    // compacted meanwhile, or down as the watch was lost) the keys are not checked, and the report says so.
    let Some(keys) = last.live_keys else {
        compare(Expected { revision: last.last_revision, keys: at.keys }, observed)
            .map_err(|e| anyhow!("the chain of {} to segment {}: {e}", base.id, last.id))?;
        tracing::warn!(segment = %last.id, "the stream recorded no key count for the chain's last segment: only its revision was checked");
        return Ok(Some(ChainDrill { segments: chain.segments.len(), observed, keys_checked: false }));
    };
    let expected = Expected { revision: last.last_revision, keys };
    compare(expected, observed).map_err(|e| anyhow!("the chain of {} to segment {}: {e}", base.id, last.id))?;
    Ok(Some(ChainDrill { segments: chain.segments.len(), observed, keys_checked: true }))
}

/// Restores the snapshot into a throwaway member and counts what it serves.
async fn serve_and_count(
    snapshot: &Path,
    data_dir: &Path,
    etcd: &Path,
    etcd_bin: Option<&Path>,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<Observed> {
    let (_member, mut client) = crate::throwaway::start(snapshot, data_dir, etcd, etcd_bin, settings, cancel).await?;
    let all = etcd_client::GetOptions::new().with_all_keys().with_count_only();
    let response = client.get("", Some(all)).await.context("cannot count the throwaway etcd's keys")?;
    Ok(Observed { revision: response.header().map_or(0, |h| h.revision()), keys: response.count() as u64 })
}

/// The result of a drill that ran.
#[derive(Debug, Clone)]
pub struct DrillReport {
    pub id: crate::manifest::BackupId,
    pub from: crate::store::Kind,
    pub observed: Observed,
    /// The control-plane files restored and checked from its files archive, if it has one.
    pub files: Option<usize>,
    /// Its chain of delta segments, replayed to its end and checked, if it has one.
    pub chain: Option<ChainDrill>,
    pub duration: Duration,
}

/// A chain of delta segments drilled: replayed to its end in a throwaway member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainDrill {
    pub segments: usize,
    pub observed: Observed,
    /// Whether the keys were compared with the stream's count (it may have none).
    pub keys_checked: bool,
}

/// Runs a drill: the identity and the etcd tools come from the arguments or the `[drill]` table.
pub async fn drill(
    settings: &Settings,
    selector: &Selector,
    identity: Option<&Path>,
    etcd_bin: Option<&Path>,
    cancel: &CancellationToken,
) -> (Option<crate::manifest::BackupId>, Result<DrillReport>) {
    let mut id = None;
    let result = async {
        let identity = identity.or(settings.drill.identity_file.as_deref()).ok_or_else(|| {
            anyhow!("a drill decrypts the backup: pass --identity FILE or set drill.identity_file in the config")
        })?;
        let etcd_bin = etcd_bin.or(settings.drill.etcd_bin.as_deref());
        let identities = std::sync::Arc::new(crate::crypto::read_identities(identity).map_err(|e| anyhow!(e))?);
        let etcd = crate::throwaway::etcd_binary(etcd_bin)?;
        crate::restore::restore_tool(etcd_bin)?;
        let started = std::time::Instant::now();
        let (destinations, _) = crate::store::open_all(settings).await;
        let found = crate::restore::find(&destinations, selector).await?;
        id = Some(found.manifest.id.clone());
        // The drill proves the copy a restore would use first (local, else S3), by its own manifest.
        let (holder, stored) = found.holders.first().context("no destination holds the backup")?;
        let m = stored.manifest.clone();
        let expected = expected(&m).map_err(|e| anyhow!(e))?;
        let scratch = crate::scratch::scratch_dir()?;
        let snapshot = scratch.path().join("snapshot.db");
        tracing::info!(id = %m.id, from = %holder.kind(), "drill: fetching and decrypting");
        crate::restore::fetch_and_decrypt(
            holder,
            &m,
            &identities,
            scratch.path(),
            &snapshot,
            crate::restore::Keep::Scratch,
            cancel,
        )
        .await
        .with_context(|| format!("the {} copy of {} cannot be restored", holder.kind(), m.id))?;
        let data = scratch.path().join("data");
        let observed = serve_and_count(&snapshot, &data, &etcd, etcd_bin, settings, cancel).await?;
        compare(expected, observed).map_err(|e| anyhow!("{}: {e}", m.id))?;
        // Its files archive too: every file restored (into the scratch dir) and checked.
        let files = match &m.files {
            Some(_) => {
                let into = crate::restore::files::Into::Folder { dir: scratch.path().join("files"), force: false };
                let opened =
                    crate::restore::files::open_copy(holder, &m, Some(&identities), scratch.path(), &into, cancel)
                        .await
                        .with_context(|| {
                            format!("the {} copy of {}'s files archive cannot be restored", holder.kind(), m.id)
                        })?;
                Some(opened.files)
            }
            None => None,
        };
        let chain = drill_chain(settings, holder, &m, &identities, etcd_bin, scratch.path(), cancel).await?;
        Ok(DrillReport { id: m.id.clone(), from: holder.kind(), observed, files, chain, duration: started.elapsed() })
    }
    .await;
    // Whatever a step said when it was stopped (its etcd killed under it, say), the drill was interrupted.
    let result = result.map_err(|e| if cancel.is_cancelled() { crate::interrupt::Interrupted.into() } else { e });
    (id, result)
}

/// Records a drill in the state file, the journal and the metrics; returns the state as saved.
/// Tells `[notify]` how a drill went: the webhooks (`drill_success`, `drill_failure`) and the drills'
/// own check (`notify.drill_healthchecks`). Never fails or delays anything.
pub fn notify(
    settings: &Settings,
    id: Option<&crate::manifest::BackupId>,
    result: &Result<DrillReport>,
    pending: &mut crate::alerts::Pending,
) {
    use crate::alerts::Kind;
    let (event, revision, error) = match result {
        Ok(report) => (Kind::DrillSuccess, Some(report.observed.revision), None),
        Err(e) => (Kind::DrillFailure, None, Some(format!("{e:#}"))),
    };
    let event = crate::alerts::Event {
        event,
        cluster: settings.cluster.to_string(),
        host: crate::host::hostname(),
        time: Utc::now(),
        backup_id: id.map(ToString::to_string),
        revision,
        snapshot_bytes: None,
        artifact_bytes: None,
        committed: Vec::new(),
        error,
        covered_by: None,
    };
    crate::alerts::send(&settings.notify, event, pending);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(revision: i64, compact_revision: i64, live_keys: u64) -> crate::snapshot::bbolt::Status {
        crate::snapshot::bbolt::Status {
            hash: 1,
            revision,
            total_key: 99,
            live_keys,
            compact_revision,
            total_size: 1 << 20,
        }
    }

    #[test]
    fn the_expected_revision_accounts_for_compaction() {
        let mut m = crate::manifest::tests::sample();
        m.snapshot.status = Some(status(120, 0, 40));
        assert_eq!(expected(&m), Ok(Expected { revision: 120, keys: 40 }));
        m.snapshot.status = Some(status(120, 125, 40));
        assert_eq!(expected(&m), Ok(Expected { revision: 125, keys: 40 }), "a compaction past the last key");
        m.snapshot.status = None;
        assert!(expected(&m).unwrap_err().contains("drill a newer backup"));
    }

    #[test]
    fn compare_names_every_difference() {
        let e = Expected { revision: 10, keys: 3 };
        assert_eq!(compare(e, Observed { revision: 10, keys: 3 }), Ok(()));
        assert_eq!(
            compare(e, Observed { revision: 9, keys: 3 }).unwrap_err(),
            "the restored member serves revision 9 where the manifest says 10"
        );
        assert_eq!(
            compare(e, Observed { revision: 10, keys: 0 }).unwrap_err(),
            "the restored member serves 0 keys where the manifest says 3"
        );
        assert!(compare(e, Observed { revision: 1, keys: 1 }).unwrap_err().contains(" and "));
    }
}
