//! Commands that read backups back: verify, drill and restore.

use crate::config::Settings;
use crate::config::units::format_size;
use crate::restore::{Selector, Target as RestoreTarget};
use anyhow::Result;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{Failure, destinations, fail_if, print_json, print_line};

pub(super) async fn verify(
    settings: &Settings,
    selector: &Selector,
    identity: Option<&std::path::Path>,
    cancel: &CancellationToken,
    json: bool,
) -> Result<(), Failure> {
    let identities = match identity {
        Some(path) => Some(std::sync::Arc::new(crate::crypto::read_identities(path).map_err(|e| anyhow::anyhow!(e))?)),
        None => None,
    };
    let (destinations, setup_errors) = destinations(settings).await;
    let mut errors = setup_errors.clone();
    let found = crate::restore::find(&destinations, selector).await?;
    let checked_as = crate::verify::depth(identities.as_ref());
    let mut copies = Vec::new();
    crate::verify::check_copies(&found, identities.as_ref(), cancel, |check| {
        let (destination, m) = (check.destination, &found.manifest);
        let mut copy = crate::json::Copy {
            destination,
            ok: check.result.is_ok(),
            checked: checked_as,
            revision: None,
            keys: None,
            hash: None,
            error: None,
        };
        match check.result {
            Ok(Some(s)) => {
                (copy.revision, copy.keys, copy.hash) =
                    (Some(s.served_revision()), Some(s.live_keys), Some(format!("{:x}", s.hash)));
                if !json {
                    out!(
                        "{destination} {}: OK (decrypted, decompressed, trailer, sizes and database structure check out; revision {}, {} keys ({} with history), hash {:x})",
                        m.id,
                        s.served_revision(),
                        s.live_keys,
                        s.total_key,
                        s.hash
                    );
                }
            }
            Ok(None) if !json => out!("{destination} {}: OK (artifact size and sha256 match the manifest)", m.id),
            Ok(None) => {}
            Err(e) => {
                copy.error = Some(format!("{e:#}"));
                errors.push(format!("{destination}: {e:#}"));
            }
        }
        copies.push(copy);
    })
    .await?;
    if json {
        let ok = errors.is_empty();
        print_json(&crate::json::Verify { ok, id: found.manifest.id.to_string(), copies, errors: setup_errors })?;
    }
    fail_if(errors, &format!("backup {} did not verify", found.manifest.id))
}

pub(super) async fn drill(
    settings: &Settings,
    selector: &Selector,
    identity: Option<&std::path::Path>,
    etcd_bin: Option<&std::path::Path>,
    cancel: &CancellationToken,
    json: bool,
) -> Result<(), Failure> {
    let started = Utc::now();
    let (id, result) = crate::drill::drill(settings, selector, identity, etcd_bin, cancel).await;
    let mut alerts = crate::alerts::Pending::default();
    let state_dir = crate::host::state_dir();
    crate::history::finish_drill(settings, &state_dir, started, id.as_ref(), &result, &mut alerts).await;
    // The notifications are sent before the process ends (each bounded by notify.timeout).
    alerts.wait().await;
    if json {
        print_json(&crate::json::Drill::of(id.as_ref(), &result))?;
    }
    let report = result?;
    if json {
        return Ok(());
    }
    let files = report.files.map_or(String::new(), |n| format!(", and its {n} control-plane files restored as listed"));
    let files = match report.chain {
        Some(c) => format!(
            "{files}; its {} delta segments replayed to revision {} with {} keys, as the stream counted them",
            c.segments, c.observed.revision, c.observed.keys
        ),
        None => files,
    };
    out!(
        "drill passed: {} (from {}) restored, and a throwaway etcd served revision {} with {} keys, as the manifest says{files} ({})",
        report.id,
        report.from,
        report.observed.revision,
        report.observed.keys,
        humantime::format_duration(std::time::Duration::from_millis(report.duration.as_millis() as u64))
    );
    Ok(())
}

pub(super) async fn restore(
    settings: &Settings,
    selector: &Selector,
    identity: &std::path::Path,
    target: Option<RestoreTarget>,
    files: Option<crate::restore::files::Into>,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let identities = crate::crypto::read_identities(identity).map_err(|e| anyhow::anyhow!(e))?;
    // Refuse a bad target before fetching anything.
    if let Some(target) = &target {
        target.check()?;
    }
    let (destinations, _) = destinations(settings).await;
    let found = crate::restore::find(&destinations, selector).await?;
    let m = found.manifest.clone();
    let scratch = crate::scratch::scratch_dir()?;
    let identities = std::sync::Arc::new(identities);
    // The files first: quick, and a file in the way is better found before the snapshot's restore.
    if let Some(into) = &files {
        if m.files.is_none() {
            return Err(anyhow::anyhow!("backup {} has no files archive (it was taken without [files])", m.id).into());
        }
        let opened = crate::restore::files::open_first_good(&found, &identities, scratch.path(), into, cancel).await?;
        if let crate::restore::files::Into::Folder { dir, .. } = into {
            out!(
                "extracted {} files ({}) of {} into {}, each as its manifest lists it (sha256, mode, mtime)",
                opened.files,
                format_size(opened.bytes),
                m.id,
                dir.display()
            );
        }
    }
    // The node procedure of the distribution the backup's files came from, with these paths.
    let preset = m.files.as_ref().and_then(|f| f.preset);
    let procedure = preset.map(|p| {
        let files_dir = match &files {
            Some(crate::restore::files::Into::Folder { dir, .. }) => Some(dir.as_path()),
            _ => None,
        };
        let (data_dir, snapshot) = match &target {
            Some(RestoreTarget::DataDir(dir, ..)) => (Some(dir.as_path()), None),
            Some(RestoreTarget::File(file)) => (None, Some(file.as_path())),
            None => (None, None),
        };
        (p, crate::archive::preset::procedure(p, data_dir, files_dir, snapshot))
    });
    let print_procedure = || {
        if let Some((preset, lines)) = &procedure {
            out!("the node procedure for {} (the backup's [files] preset):", preset.as_str());
            for (i, line) in lines.iter().enumerate() {
                out!("  {}. {line}", i + 1);
            }
        }
    };
    let Some(target) = target else {
        print_procedure();
        return Ok(());
    };
    let (snapshot, keep) = match &target {
        RestoreTarget::File(file) => (file.clone(), crate::restore::Keep::Durable),
        RestoreTarget::DataDir(..) => (scratch.path().join("snapshot.db"), crate::restore::Keep::Scratch),
    };
    // Local first; a damaged or unreadable copy falls back to the next destination that holds it.
    let plain = crate::restore::first_good_copy(&found, &identities, scratch.path(), &snapshot, keep, cancel).await?;
    match target {
        RestoreTarget::File(file) => {
            out!(
                "wrote the snapshot of {} (revision {}, {}) to {}",
                m.id,
                m.etcd.revision,
                format_size(plain.size),
                file.display()
            );
            out!("it is exactly what etcd sent: `etcdutl snapshot restore {}` checks its hash", file.display());
            kubernetes_hint();
        }
        RestoreTarget::DataDir(dir, flags, etcd_bin) => {
            let bump = crate::restore::restore_into(&snapshot, &dir, &flags, etcd_bin.as_deref(), cancel)?;
            let _ = std::fs::remove_file(&snapshot);
            out!("restored {} (revision {}) into {}", m.id, m.etcd.revision, dir.display());
            tell_bump(&bump, m.etcd.revision);
            if procedure.is_none() {
                generic_next_steps(&m, &flags, &dir);
            }
        }
    }
    print_procedure();
    Ok(())
}

/// What to do after a restore into a data dir, for any etcd.
fn generic_next_steps(m: &crate::manifest::Manifest, flags: &crate::restore::MemberFlags, dir: &std::path::Path) {
    out!("next steps, on every member:");
    if flags.initial_cluster.as_deref().is_some_and(|c| c.contains(',')) {
        out!(
            "  0. restore {} the same way (done on this one): the same --initial-cluster and \
             --initial-cluster-token, the member's own --name and --initial-advertise-peer-urls",
            m.id
        );
    }
    out!("  1. stop the Kubernetes API servers (kubeadm: move kube-apiserver.yaml out of /etc/kubernetes/manifests)");
    out!("  2. stop etcd");
    out!("  3. move the old data dir aside and put {} in its place (keep owner and mode 0700)", dir.display());
    out!("  4. start etcd and check `etcdctl endpoint status`, then start the API servers");
}

/// Says what became of the revision of a data dir restored from a snapshot at `revision`.
pub(super) fn tell_bump(bump: &crate::restore::Bump, revision: i64) {
    match bump {
        crate::restore::Bump::Raised(by) => out!(
            "the revision is raised by {by} to {} and marked compacted: Kubernetes' watch caches and \
             informers will list afresh rather than serve what they held",
            revision.saturating_add(i64::try_from(*by).unwrap_or(i64::MAX))
        ),
        crate::restore::Bump::Unsupported(tool) => out!(
            "warning: {} does not offer --bump-revision and --mark-compacted (etcd 3.5.10 added them): \
             the restored revision is the snapshot's, {revision}, lower than what the API servers and their \
             clients last saw, so their watch caches may keep serving stale objects. Restart every \
             kube-apiserver and every controller after etcd is back, or restore again with a newer \
             etcdutl (--etcd-bin); --no-bump-revision silences this where no Kubernetes uses this etcd",
            tool.display()
        ),
        crate::restore::Bump::Off => {}
    }
}

/// For a snapshot file: what a restore of it under Kubernetes needs.
pub(super) fn kubernetes_hint() {
    out!(
        "under Kubernetes, add `--bump-revision {} --mark-compacted` (etcdutl 3.5.10+) so that watch caches start over",
        crate::restore::DEFAULT_BUMP
    );
}
