//! The history of runs: every backup's and drill's outcome goes to the journal (telemetry), the state
//! file (changed under its lock, since the daemon, one-shot backups and drills all change it) and the
//! metrics file, here and nowhere else.

use std::path::Path;

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::state::{Failure, State, Success};

/// Records a run's outcome: the journal entry, the state file, the metrics.
pub async fn record_backup(
    settings: &Settings,
    state_dir: &Path,
    started: DateTime<Utc>,
    outcome: &crate::backup::Outcome,
) {
    match outcome {
        crate::backup::Outcome::Committed(report) => {
            crate::telemetry::backup_committed(report);
            report.pruned.iter().for_each(crate::telemetry::pruned);
            if !report.failed.is_empty() {
                crate::telemetry::backup_failed(
                    &crate::backup::failures(report),
                    &crate::store::Kind::join(&report.failed.iter().map(|f| f.0).collect::<Vec<_>>(), ","),
                );
            }
        }
        crate::backup::Outcome::Unchanged { revision } => {
            tracing::info!(revision, "etcd's revision has not changed since the last backup; nothing uploaded");
        }
        crate::backup::Outcome::Failed(e) => crate::telemetry::backup_failed(&format!("{e:#}"), ""),
        crate::backup::Outcome::Skipped(why) => tracing::warn!(%why, "backup skipped"),
        crate::backup::Outcome::Learner(_) => tracing::info!("{LEARNER}"),
        crate::backup::Outcome::Covered(r) => tracing::info!(
            slot = %crate::coordination::slot::slot_text(r.slot), member = %r.member_name, member_id = %r.member_id,
            backup_id = %r.backup_id, "slot {} covered by member {} (backup {})",
            r.slot.format("%Y-%m-%d %H:%M:%S"), r.member_name, r.backup_id
        ),
    }
    persist(settings, state_dir, |state| {
        state.last_attempt = Some(started);
        match outcome {
            crate::backup::Outcome::Committed(report) => {
                for p in &report.pruned {
                    state.backups.insert(p.destination, p.decisions.iter().filter(|d| d.keep).count());
                }
                if !report.pruned.is_empty() {
                    let future: std::collections::BTreeSet<crate::manifest::BackupId> = report
                        .pruned
                        .iter()
                        .flat_map(|p| &p.decisions)
                        .filter(|d| d.reasons.contains(&crate::retention::Reason::FutureDated))
                        .map(|d| d.id.clone())
                        .collect();
                    state.future_dated = future.into_iter().collect();
                }
                let m = &report.manifest;
                state.last_success = Some(Success {
                    time: m.created,
                    id: m.id.clone(),
                    revision: m.etcd.revision,
                    artifact_size: m.artifact.size,
                    duration_ms: m.duration_ms,
                    destinations: report.committed.clone(),
                    unchanged: false,
                });
                if report.failed.is_empty() {
                    state.runs.ok += 1;
                } else {
                    state.last_failure = Some(Failure { time: started, error: crate::backup::failures(report) });
                    state.runs.failed += 1;
                }
            }
            crate::backup::Outcome::Unchanged { .. } => {
                if let Some(s) = &mut state.last_success {
                    s.time = started;
                    s.unchanged = true;
                }
                state.runs.unchanged += 1;
            }
            crate::backup::Outcome::Failed(e) => {
                state.last_failure = Some(Failure { time: started, error: format!("{e:#}") });
                state.runs.failed += 1;
            }
            crate::backup::Outcome::Skipped(why) => {
                state.last_skip = Some(Failure { time: started, error: why.clone() });
                state.runs.skipped += 1;
            }
            crate::backup::Outcome::Learner(record) => {
                state.last_skip = Some(Failure { time: started, error: LEARNER.to_string() });
                state.last_covered = record.clone().or(state.last_covered.take());
                state.runs.skipped += 1;
            }
            crate::backup::Outcome::Covered(r) => {
                state.last_covered = Some(r.clone());
                state.runs.covered += 1;
            }
        }
    })
    .await;
}

/// Why a learner's daemon does not back up.
const LEARNER: &str = "this member is a learner: etcd serves learners only status and serializable reads, so a learner never takes a slot; the voting members back up";

/// Changes the state file (under its lock: the daemon, one-shot backups and drills all change it) and
/// rewrites the metrics from the result, which it returns. Failures are logged, never fatal to a run.
pub async fn persist(settings: &Settings, state_dir: &Path, change: impl FnOnce(&mut State)) -> State {
    let lock = crate::state::StateLock::take(state_dir).await;
    let mut state = State::load(state_dir);
    change(&mut state);
    let held = match lock {
        Ok(lock) => state.save(state_dir).await.map(|()| lock),
        Err(e) => Err(e),
    };
    if let Err(e) = &held {
        tracing::error!(error = %format!("{e:#}"), "cannot save the state file");
    }
    // Still under the lock, so the metrics file is never older than the state file.
    write_metrics(settings, &state).await;
    drop(held);
    state
}

async fn write_metrics(settings: &Settings, state: &State) {
    if let Some(path) = &settings.metrics_textfile
        && let Err(e) = crate::metrics::write(path, &crate::metrics::render(state, settings.cluster.as_str())).await
    {
        tracing::error!(error = %format!("{e:#}"), "cannot write the metrics file");
    }
}

/// Records a drill's result: the journal entry, the state file, the metrics.
pub async fn record_drill(
    settings: &Settings,
    state_dir: &Path,
    started: DateTime<Utc>,
    id: Option<&crate::manifest::BackupId>,
    result: &anyhow::Result<crate::drill::DrillReport>,
) -> crate::state::State {
    match result {
        Ok(report) => crate::telemetry::drill_passed(report),
        Err(e) => crate::telemetry::drill_failed(id, &format!("{e:#}")),
    }
    persist(settings, state_dir, |state| match result {
        Ok(report) => {
            state.drills.ok += 1;
            state.last_proven = Some(crate::state::Proven {
                time: started,
                id: report.id.clone(),
                revision: report.observed.revision,
                keys: report.observed.keys,
            });
        }
        Err(e) => {
            state.drills.failed += 1;
            state.last_drill_failure =
                Some(crate::state::DrillFailure { time: started, id: id.cloned(), error: format!("{e:#}") });
        }
    })
    .await
}

/// A drill's end: recorded (`record_drill`) and told to `[notify]` (into `alerts`), unless it was
/// interrupted, which proved nothing either way and is neither. The state as saved, if it was recorded.
pub async fn finish_drill(
    settings: &Settings,
    state_dir: &Path,
    started: DateTime<Utc>,
    id: Option<&crate::manifest::BackupId>,
    result: &anyhow::Result<crate::drill::DrillReport>,
    alerts: &mut crate::alerts::Pending,
) -> Option<crate::state::State> {
    if result.as_ref().is_err_and(|e| e.downcast_ref::<crate::interrupt::Interrupted>().is_some()) {
        return None;
    }
    let state = record_drill(settings, state_dir, started, id, result).await;
    crate::drill::notify(settings, id, result, alerts);
    Some(state)
}
