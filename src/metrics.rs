//! The Prometheus textfile for node_exporter's textfile collector: rendered from the state (pure),
//! written atomically (a `.part` file that the collector ignores, then a rename).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::state::State;

/// Renders the metrics of `state` in the Prometheus text format.
pub fn render(state: &State, cluster: &str) -> String {
    let mut out = String::new();
    let c = escape(cluster);
    let mut gauge = |name: &str, help: &str, value: Option<f64>| {
        let _ = writeln!(out, "# HELP etcd_backupd_{name} {help}\n# TYPE etcd_backupd_{name} gauge");
        if let Some(v) = value {
            let _ = writeln!(out, "etcd_backupd_{name}{{cluster=\"{c}\"}} {v}");
        }
    };
    let ok = state.last_success.as_ref();
    gauge(
        "last_success_timestamp_seconds",
        "Time of the last committed (or unchanged) backup.",
        ok.map(|s| s.time.timestamp() as f64),
    );
    gauge(
        "last_covered_timestamp_seconds",
        "Cluster mode: when another member committed the backup of the last slot this member rightly skipped.",
        state.last_covered.as_ref().map(|r| r.time.timestamp() as f64),
    );
    gauge(
        "last_failure_timestamp_seconds",
        "Time of the last failed backup.",
        state.last_failure.as_ref().map(|f| f.time.timestamp() as f64),
    );
    gauge("last_duration_seconds", "Duration of the last committed backup.", ok.map(|s| s.duration_ms as f64 / 1000.0));
    gauge("last_artifact_bytes", "Size of the last committed artifact.", ok.map(|s| s.artifact_size as f64));
    gauge("last_revision", "etcd revision of the last committed backup.", ok.map(|s| s.revision as f64));
    gauge(
        "next_run_timestamp_seconds",
        "Time of the next scheduled backup.",
        state.next_run.map(|t| t.timestamp() as f64),
    );
    gauge(
        "last_proven_timestamp_seconds",
        "Time of the last drill that restored a backup and found it as its manifest says.",
        state.last_proven.as_ref().map(|p| p.time.timestamp() as f64),
    );
    gauge(
        "last_proven_revision",
        "etcd revision of the backup the last passing drill restored.",
        state.last_proven.as_ref().map(|p| p.revision as f64),
    );
    gauge(
        "last_drill_failure_timestamp_seconds",
        "Time of the last failed drill.",
        state.last_drill_failure.as_ref().map(|f| f.time.timestamp() as f64),
    );
    gauge(
        "future_dated_backups",
        "Backups dated in the future (a wrong clock), kept and counted for no retention rule.",
        Some(state.future_dated.len() as f64),
    );
    let d = state.deltas.as_ref();
    gauge(
        "delta_covered_until_timestamp_seconds",
        "[deltas]: every change up to this time is in a committed delta segment (restore --at reaches it).",
        d.and_then(|d| d.covered_until).map(|t| t.timestamp_millis() as f64 / 1000.0),
    );
    gauge(
        "delta_last_revision",
        "[deltas]: the last revision a committed delta segment holds (restore --revision reaches it).",
        d.map(|d| d.last_revision as f64),
    );
    gauge(
        "delta_lag_revisions",
        "[deltas]: revisions etcd had made that no committed segment held, when the stream last heard from etcd.",
        d.map(|d| d.lag_revisions as f64),
    );
    let mut counter = |name: &str, help: &str, value: Option<u64>| {
        let _ = writeln!(out, "# HELP etcd_backupd_{name} {help}\n# TYPE etcd_backupd_{name} counter");
        if let Some(v) = value {
            let _ = writeln!(out, "etcd_backupd_{name}{{cluster=\"{c}\"}} {v}");
        }
    };
    counter("delta_segments_total", "[deltas]: delta segments this host committed.", d.map(|d| d.segments));
    counter(
        "delta_bytes_total",
        "[deltas]: bytes of delta segments (encrypted) this host committed.",
        d.map(|d| d.bytes),
    );
    // The chain streamed, by its base's id: one series, which changes with each new base.
    let _ = writeln!(
        out,
        "# HELP etcd_backupd_delta_chain_info [deltas]: the chain this host streams, by its base backup's id.\n# TYPE etcd_backupd_delta_chain_info gauge"
    );
    if let Some(d) = d.filter(|d| !d.chain.is_empty()) {
        let _ = writeln!(out, "etcd_backupd_delta_chain_info{{cluster=\"{c}\",chain=\"{}\"}} 1", escape(&d.chain));
    }
    let _ = writeln!(
        out,
        "# HELP etcd_backupd_drills_total Restore drills by result.\n# TYPE etcd_backupd_drills_total counter"
    );
    for (result, n) in [("ok", state.drills.ok), ("failed", state.drills.failed)] {
        let _ = writeln!(out, "etcd_backupd_drills_total{{cluster=\"{c}\",result=\"{result}\"}} {n}");
    }
    let _ =
        writeln!(out, "# HELP etcd_backupd_runs_total Backup runs by result.\n# TYPE etcd_backupd_runs_total counter");
    for (result, n) in [
        ("ok", state.runs.ok),
        ("failed", state.runs.failed),
        ("unchanged", state.runs.unchanged),
        ("skipped", state.runs.skipped),
        ("covered", state.runs.covered),
    ] {
        let _ = writeln!(out, "etcd_backupd_runs_total{{cluster=\"{c}\",result=\"{result}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP etcd_backupd_backups Committed backups per destination.\n# TYPE etcd_backupd_backups gauge"
    );
    for (destination, n) in &state.backups {
        let _ = writeln!(
            out,
            "etcd_backupd_backups{{cluster=\"{c}\",destination=\"{}\"}} {n}",
            escape(destination.as_str())
        );
    }
    out
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes the metrics file atomically.
pub async fn write(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().context("metrics.textfile has no folder")?;
    let name = path.file_name().and_then(|n| n.to_str()).context("metrics.textfile has no file name")?;
    crate::files::write_atomic(dir, name, text.as_bytes())
        .await
        .with_context(|| format!("cannot write metrics.textfile '{}'", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Failure;
    use chrono::TimeZone;

    #[test]
    fn renders_every_metric_with_labels() {
        let t = chrono::Utc.with_ymd_and_hms(2026, 11, 22, 6, 0, 0).unwrap();
        let mut s = State {
            last_success: Some(crate::state::sample_success(t)),
            last_failure: Some(Failure { time: t, error: "boom".into() }),
            ..State::default()
        };
        s.runs.ok = 4;
        s.runs.failed = 1;
        s.backups.insert(crate::store::Kind::Local, 3);
        s.backups.insert(crate::store::Kind::S3, 7);
        s.last_proven =
            Some(crate::state::Proven { time: t, id: crate::state::sample_success(t).id, revision: 48000, keys: 12 });
        s.drills.failed = 2;
        s.runs.covered = 5;
        s.last_covered = Some(crate::coordination::slot::Record {
            slot: t,
            member_id: "a".into(),
            member_name: "m2".into(),
            backup_id: crate::manifest::BackupId::new(t, 1, "a"),
            revision: 1,
            time: t,
        });
        s.deltas = Some(crate::state::DeltaState {
            chain: "20261122T060000Z-r48211-a\"".into(),
            last_revision: 48300,
            lag_revisions: 2,
            segments: 9,
            bytes: 4096,
            covered_until: Some(t),
            ..Default::default()
        });
        let text = render(&s, "prod\"east");
        let chain =
            "etcd_backupd_delta_chain_info{cluster=\"prod\\\"east\",chain=\"20261122T060000Z-r48211-a\\\"\"} 1\n";
        assert!(text.contains(chain), "{text}");
        for line in [
            "etcd_backupd_delta_covered_until_timestamp_seconds{cluster=\"prod\\\"east\"} 1795327200\n",
            "etcd_backupd_delta_last_revision{cluster=\"prod\\\"east\"} 48300\n",
            "etcd_backupd_delta_lag_revisions{cluster=\"prod\\\"east\"} 2\n",
            "etcd_backupd_delta_segments_total{cluster=\"prod\\\"east\"} 9\n",
            "etcd_backupd_delta_bytes_total{cluster=\"prod\\\"east\"} 4096\n",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.contains("etcd_backupd_last_covered_timestamp_seconds{cluster=\"prod\\\"east\"} 1795327200\n"));
        assert!(text.contains("etcd_backupd_runs_total{cluster=\"prod\\\"east\",result=\"covered\"} 5\n"));
        assert!(
            text.contains("etcd_backupd_last_success_timestamp_seconds{cluster=\"prod\\\"east\"} 1795327200\n"),
            "{text}"
        );
        assert!(text.contains("etcd_backupd_last_duration_seconds{cluster=\"prod\\\"east\"} 1.5\n"));
        assert!(text.contains("etcd_backupd_last_revision{cluster=\"prod\\\"east\"} 48211\n"));
        assert!(text.contains("etcd_backupd_runs_total{cluster=\"prod\\\"east\",result=\"ok\"} 4\n"));
        assert!(text.contains("etcd_backupd_backups{cluster=\"prod\\\"east\",destination=\"s3\"} 7\n"));
        assert!(text.contains("etcd_backupd_last_proven_timestamp_seconds{cluster=\"prod\\\"east\"} 1795327200\n"));
        assert!(text.contains("etcd_backupd_last_proven_revision{cluster=\"prod\\\"east\"} 48000\n"));
        assert!(text.contains("etcd_backupd_drills_total{cluster=\"prod\\\"east\",result=\"failed\"} 2\n"));
        // Every sample line belongs to a declared metric.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} undeclared");
        }
    }

    #[test]
    fn a_fresh_state_has_types_but_no_samples_for_unknowns() {
        let text = render(&State::default(), "default");
        assert!(text.contains("# TYPE etcd_backupd_last_success_timestamp_seconds gauge"));
        assert!(!text.contains("etcd_backupd_last_success_timestamp_seconds{"));
        assert!(text.contains("etcd_backupd_runs_total{cluster=\"default\",result=\"failed\"} 0"));
    }
}
