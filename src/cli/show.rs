//! Commands that only read: check-config's summary, status and list.

use crate::config::units::format_size;
use crate::config::{self, Settings};
use anyhow::Result;
use chrono::Utc;

use super::{Failure, destinations, print_line};

pub(super) fn print_summary(path: &std::path::Path, s: &Settings) {
    out!("{}: OK", path.display());
    match &s.etcd {
        Some(etcd) => {
            let auth = match (&etcd.client_cert, &etcd.auth) {
                (Some(_), _) => " (TLS client certificate)",
                (None, Some(_)) => " (user and password)",
                (None, None) => "",
            };
            out!("  etcd:       {}{auth}", etcd.endpoints.join(", "));
        }
        None => out!(
            "  etcd:       none: a verification host (verify, restore, drill, list and prune work; backup and run need [etcd])"
        ),
    }
    out!("  cluster:    {}", s.cluster);
    out!("  local:      {}", s.local.dir.join(s.cluster.as_str()).display());
    match &s.s3 {
        Some(s3) => out!(
            "  s3:         s3://{}/{}{}/{}",
            s3.bucket,
            s3.prefix,
            s.cluster,
            s3.endpoint.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
        ),
        None => out!("  s3:         not configured (backups stay on this host)"),
    }
    out!("  recipients: {}", s.encryption.recipients.len());
    match s.max_rate {
        Some(rate) => out!("  max rate:   {}/s read from etcd ([backup] max_rate)", format_size(rate.get())),
        None => out!("  max rate:   none: the snapshot is read as fast as etcd sends it"),
    }
    for w in config::secret_warnings(s) {
        out!("warning: {}: {}", w.key, w.message);
    }
}

/// Cluster mode's line of check-config: the prefix, and, where etcd has users (the config names one),
/// whether this one may use it, or the command that lets it. A member that cannot be reached is only
/// mentioned: check-config also runs where etcd is not.
pub(super) async fn check_coordination(settings: &Settings) {
    let c = &settings.coordination;
    if c.mode == config::CoordinationMode::Member {
        out!("  coordination: member mode (every member's daemon backs up on its own)");
        return;
    }
    out!("  coordination: cluster mode, one backup per slot, under {} in etcd", c.prefix);
    let Some(etcd) = &settings.etcd else { return };
    if etcd.auth.is_none() && etcd.client_cert.is_none() {
        return;
    }
    match crate::etcd::connect(etcd).await {
        Ok(member) => match crate::coordination::check_access(&member, c).await {
            crate::coordination::Access::Granted => {
                out!("  coordination: the etcd user may read and write {}", c.prefix)
            }
            crate::coordination::Access::Denied(why) => out!("warning: coordination: {why}"),
            crate::coordination::Access::Unknown(why) => out!(
                "  coordination: etcd could not say whether its user may use {} ({why}); it needs: {}",
                c.prefix,
                crate::coordination::grant_command(c)
            ),
        },
        Err(e) => out!(
            "  coordination: etcd could not be asked whether its user may use {} ({e:#}); it needs: {}",
            c.prefix,
            crate::coordination::grant_command(c)
        ),
    }
}

pub(super) fn status(settings: &Settings, json: bool) -> Result<(), Failure> {
    let state_dir = crate::host::state_dir();
    let state = crate::state::State::load(&state_dir);
    let now = Utc::now();
    let interval = state
        .schedule_interval_secs
        .map(std::time::Duration::from_secs)
        .or_else(|| settings.schedule.schedule.interval_around(now));
    // A slot another member covered is as fresh as a backup of this member's.
    let last = state.last_success.as_ref().map(|s| s.time).max(state.last_covered.as_ref().map(|r| r.time));
    let freshness = crate::state::Freshness::of(last, interval, now);
    let overdue = freshness != crate::state::Freshness::Fresh;
    if json {
        let value = serde_json::json!({ "state": state, "overdue": overdue, "state_dir": state_dir });
        out!("{}", serde_json::to_string_pretty(&value).map_err(anyhow::Error::from)?);
    } else {
        out!("{}", crate::daemon::status_line(&state, false));
        if let Some(r) = &state.last_covered {
            out!(
                "slot {} covered by member {} (backup {})",
                r.slot.format("%Y-%m-%d %H:%M:%S UTC"),
                r.member_name,
                r.backup_id
            );
        }
        if let Some(s) = &state.last_skip {
            out!("last skipped: {} {}", s.time.format("%Y-%m-%d %H:%M:%S UTC"), s.error);
        }
        if let Some(f) = &state.last_failure {
            out!("last failure: {} {}", f.time.format("%Y-%m-%d %H:%M:%S UTC"), f.error);
        }
        for (destination, n) in &state.backups {
            out!("{destination}: {n} backups");
        }
        out!(
            "runs: {} ok, {} failed, {} unchanged, {} skipped",
            state.runs.ok,
            state.runs.failed,
            state.runs.unchanged,
            state.runs.skipped
        );
        match &state.last_proven {
            Some(p) => out!(
                "last proven restorable: {} (drill at {}: revision {}, {} keys)",
                p.id,
                p.time.format("%Y-%m-%d %H:%M:%S UTC"),
                p.revision,
                p.keys
            ),
            None => out!("last proven restorable: never (run `etcd-backupd drill`)"),
        }
        if let Some(f) = &state.last_drill_failure {
            out!("last failed drill: {} {}", f.time.format("%Y-%m-%d %H:%M:%S UTC"), f.error);
        }
        if !state.future_dated.is_empty() {
            out!(
                "warning: {} backups are dated in the future (a clock was wrong when they were taken): {}; they are kept and count for no retention rule: check the clocks, then delete them once newer backups exist",
                state.future_dated.len(),
                state.future_dated.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            );
        }
    }
    match freshness.problem() {
        Some(problem) => Err(anyhow::anyhow!(problem).into()),
        None => Ok(()),
    }
}

pub(super) async fn list(settings: &Settings, json: bool) -> Result<(), Failure> {
    let (destinations, mut errors) = destinations(settings).await;
    let catalog = crate::store::catalog::catalog(&destinations, &settings.cluster).await;
    errors.extend(catalog.errors);
    let rows = catalog.rows;
    if json {
        let text = serde_json::to_string_pretty(&rows).map_err(anyhow::Error::from)?;
        out!("{text}");
    } else {
        out!(
            "{:<44} {:<20} {:>10} {:>9} {:>11} {:>11}  {:<20} STORED IN",
            "ID",
            "CREATED (UTC)",
            "REVISION",
            "KEYS",
            "DB SIZE",
            "SIZE",
            "LABEL"
        );
        for r in &rows {
            let m = &r.manifest;
            let pinned = if r.pinned { " (pinned)" } else { "" };
            let files = m.files.as_ref().map_or(String::new(), |f| format!(" (+ {} files)", f.entries.len()));
            let status = m.snapshot.status;
            out!(
                "{:<44} {:<20} {:>10} {:>9} {:>11} {:>11}  {:<20} {}{pinned}{files}",
                m.id.to_string(),
                m.created.format("%Y-%m-%d %H:%M:%S").to_string(),
                status.map_or(m.etcd.revision, |s| s.revision),
                status.map_or("-".to_string(), |s| s.live_keys.to_string()),
                format_size(status.map_or(m.etcd.db_size, |s| s.total_size)),
                format_size(m.artifact.size),
                m.label.as_deref().unwrap_or("-"),
                crate::store::Kind::join(&r.destinations, ","),
            );
            if let Some(chain) = &r.chain {
                out!(
                    "  + {} delta segment{} ({}): restorable to any revision up to {}, any time up to {}{}",
                    chain.segments,
                    if chain.segments == 1 { "" } else { "s" },
                    chain.destination,
                    chain.until_revision,
                    chain.until.format("%Y-%m-%d %H:%M:%S UTC"),
                    chain.broken.as_ref().map_or(String::new(), |b| format!("; BROKEN: {b}"))
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("cannot list every destination:\n  {}", errors.join("\n  ")).into())
    }
}
