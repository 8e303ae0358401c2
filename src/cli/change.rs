//! Commands that change backups: backup, prune, delete, pin and unpin.

use crate::backup::BackupRequest;
use crate::backup::{Outcome, run_once};
use crate::config::Settings;
use crate::config::units::format_size;
use crate::history::record_backup;
use crate::manifest::BackupId;
use crate::prune::{PruneOptions, PruneReport, prune};
use crate::restore::Selector;
use crate::store::Destination;
use anyhow::Result;
use chrono::{DateTime, Utc};

use super::{Failure, destinations, fail_if, print_json, print_line};

pub(super) async fn backup(
    settings: &Settings,
    request: BackupRequest,
    wait: std::time::Duration,
    json: bool,
) -> Result<(), Failure> {
    let state_dir = crate::host::state_dir();
    let mut alerts = crate::alerts::Pending::default();
    let (started, outcome) = run_once(settings, &request, &state_dir, wait, 1, &mut alerts).await;
    record_backup(settings, &state_dir, started, &outcome).await;
    // The notifications are sent before the process ends (each bounded by notify.timeout).
    alerts.wait().await;
    if json {
        let shape = match &outcome {
            Outcome::Committed(report) => crate::json::Backup::committed(report),
            Outcome::Unchanged { revision } => crate::json::Backup::unchanged(*revision),
            Outcome::Failed(e) => crate::json::Backup::not_committed("failed", format!("{e:#}")),
            Outcome::Skipped(why) => crate::json::Backup::not_committed("skipped", why.clone()),
            Outcome::Learner(_) => {
                crate::json::Backup::not_committed("skipped", "this member is a learner".to_string())
            }
            Outcome::Covered(r) => crate::json::Backup::not_committed(
                "covered",
                format!("member {} covered the slot with backup {}", r.member_name, r.backup_id),
            ),
        };
        print_json(&shape)?;
    }
    let report = match outcome {
        Outcome::Committed(report) => *report,
        Outcome::Unchanged { revision } => {
            if !json {
                out!("etcd's revision {revision} has not changed since the last backup: nothing to do");
            }
            return Ok(());
        }
        Outcome::Failed(e) => return Err(e.into()),
        Outcome::Skipped(why) => return Err(anyhow::anyhow!(why).into()),
        Outcome::Learner(_) => {
            if !json {
                out!("this member is a learner, which never backs up");
            }
            return Ok(());
        }
        Outcome::Covered(r) => {
            if !json {
                out!("member {} covered this slot with backup {}: nothing to do", r.member_name, r.backup_id);
            }
            return Ok(());
        }
    };
    let m = &report.manifest;
    if !json {
        out!(
            "backup {} (revision {}, {} → {}) committed in: {}",
            m.id,
            m.etcd.revision,
            format_size(m.snapshot.size),
            format_size(m.artifact.size),
            crate::store::Kind::join(&report.committed, ", ")
        );
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        let lines: Vec<String> = report.failed.iter().map(|(d, e)| format!("{d}: {e}")).collect();
        let every = crate::store::Kind::configured(settings).iter().all(|k| report.committed.contains(k));
        let what =
            if every { "is committed, but not everything went well" } else { "is NOT committed in every destination" };
        Err(anyhow::anyhow!("backup {} {what}:\n  {}", m.id, lines.join("\n  ")).into())
    }
}

pub(super) async fn prune_all(
    settings: &Settings,
    dry_run: bool,
    now: DateTime<Utc>,
    json: bool,
) -> Result<(), Failure> {
    let (destinations, mut errors) = destinations(settings).await;
    let mut reports = Vec::new();
    for destination in &destinations {
        let options = PruneOptions {
            policy: destination.kind().policy(settings).clone(),
            timezone: settings.timezone,
            now,
            leftover_grace: settings.leftover_grace,
            dry_run,
            this_run: None,
            segments_keep_for: settings.deltas.as_ref().and_then(|d| d.keep_for),
        };
        match prune(destination, &options).await {
            Ok(report) => {
                errors.extend(report.errors.iter().map(|e| format!("{}: {e}", destination.kind())));
                reports.push(report);
            }
            Err(e) => errors.push(format!("{}: {e:#}", destination.kind())),
        }
    }
    if json {
        out!("{}", serde_json::to_string_pretty(&reports).map_err(anyhow::Error::from)?);
    } else {
        for r in &reports {
            print_prune(r, settings.leftover_grace);
        }
    }
    fail_if(errors, "pruning did not finish everywhere")
}

pub(super) fn print_prune(r: &PruneReport, grace: std::time::Duration) {
    let kept = r.decisions.iter().filter(|d| d.keep).count();
    out!("{} ({}): {} backups, keep {kept}, remove {}", r.destination, r.place, r.decisions.len(), r.removed());
    for d in &r.decisions {
        let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
        out!("  {:<8} {:<44} {}", if d.keep { "keep" } else { "remove" }, d.id.to_string(), reasons.join(", "));
    }
    for l in &r.leftovers {
        let action = if l.clean { "clean" } else { "leave" };
        let age =
            if l.clean { String::new() } else { format!(" (younger than {})", humantime::format_duration(grace)) };
        out!("  {action:<8} {:<44} {} since {}{age}", l.name, l.kind, l.time.format("%Y-%m-%d %H:%M:%S UTC"));
    }
    for i in &r.ignored {
        out!("  {:<8} {:<44} {}", "ignored", i.name, i.why);
    }
    if r.dry_run {
        out!("  (dry run: nothing was removed)");
    }
}

/// The destinations holding backup `id`, with how each holds it. Listing errors go to `errors`, and so
/// does "not found" when no destination holds it and none failed to list.
pub(super) async fn holding<'a>(
    destinations: &'a [Destination],
    id: &BackupId,
    errors: &mut Vec<String>,
) -> Vec<(&'a Destination, crate::store::Stored)> {
    let selector = Selector::Id(id.clone());
    let (found, unlisted) = crate::restore::locate(destinations, &selector).await;
    errors.extend(unlisted);
    let holders = found.map(|f| f.holders).unwrap_or_default();
    if holders.is_empty() && errors.is_empty() {
        errors.push(format!("{} (see etcd-backupd list)", crate::restore::not_found(&selector)));
    }
    holders
}

pub(super) async fn delete(settings: &Settings, id: &BackupId, force: bool) -> Result<(), Failure> {
    let (destinations, mut errors) = destinations(settings).await;
    for (destination, stored) in holding(&destinations, id, &mut errors).await {
        if stored.pinned && !force {
            errors.push(format!(
                "{}: {id} is pinned; unpin it first (etcd-backupd unpin {id}) or pass --force",
                destination.kind()
            ));
            continue;
        }
        match destination.remove(&[&stored]).await.pop() {
            Some((_, why)) => errors.push(format!("{}: {why}", destination.kind())),
            None => {
                tracing::info!(destination = %destination.kind(), id = %id, "deleted backup");
                out!("deleted {id} from {}", destination.kind());
            }
        }
    }
    fail_if(errors, "delete did not finish")
}

pub(super) async fn set_pin(settings: &Settings, id: &BackupId, pinned: bool) -> Result<(), Failure> {
    let (destinations, mut errors) = destinations(settings).await;
    for (destination, _) in holding(&destinations, id, &mut errors).await {
        match destination.set_pin(id, pinned).await {
            Ok(()) => out!("{} {id} in {}", if pinned { "pinned" } else { "unpinned" }, destination.kind()),
            Err(e) => errors.push(format!("{}: {e:#}", destination.kind())),
        }
    }
    fail_if(errors, if pinned { "pin did not finish" } else { "unpin did not finish" })
}
