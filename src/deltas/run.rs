//! The daemon's delta stream (`[deltas] enabled`): the chain from the newest full backup, continued from
//! its last committed segment (after a restart too), streamed while this member holds the cluster's
//! stream (cluster mode: a lock under a renewed lease, so another member takes over if this one dies).
//! A new full backup starts a new chain; a chain that cannot go on without a hole (compacted history,
//! a lost watch, a break found in the store, a failed write) asks the daemon for a full backup at once
//! and waits for it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::chain::follow;
use super::lock::{AbortOnDrop, hold};
use super::manifest::SegmentManifest;
use super::stored::read_chain;
use super::watch::{Ended, Next, Sink, stream};
use crate::config::{CoordinationMode, DeltasSettings, Settings};
use crate::manifest::BackupId;
use crate::store::{Destination, Kind, Listing};

/// How the stream and the daemon talk: the stream asks for a full backup now; the daemon says when one
/// was recorded.
#[derive(Clone)]
pub struct Signals {
    pub backup_now: mpsc::Sender<String>,
    pub backup_recorded: Arc<Notify>,
}

/// How a chain ended, for the loop.
enum Outcome {
    /// The daemon is stopping.
    Stopped,
    /// A newer full backup was recorded: start its chain.
    NewBase,
    /// No chain can go on: a full backup is needed first (why). `overtaken`: etcd compacted the
    /// revisions after the base before its chain could start (the backup took longer than etcd keeps
    /// its history).
    NeedBackup { after: Option<BackupId>, why: String, overtaken: bool },
    /// No backup yet: the daemon takes its first one on its own.
    NoBase,
    /// Something passing (etcd restarted, the lock moved, another streamer wrote first): the chain is
    /// read again from the store and goes on from its last committed segment.
    Retry(String),
    /// This member is a learner: etcd serves it no watch; it streams once promoted.
    Learner,
}

/// Runs until `cancel`; never fails: what goes wrong is logged and retried.
pub async fn run(settings: Settings, deltas: DeltasSettings, signals: Signals, cancel: CancellationToken) {
    let mut retry = Duration::from_secs(1);
    // New bases in a row whose chain could not start: compacted before it could.
    let mut overtaken_in_a_row = 0u32;
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let outcome = match one_chain(&settings, &deltas, &signals, &cancel).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Retry(format!("{e:#}")),
        };
        overtaken_in_a_row = match &outcome {
            Outcome::NeedBackup { overtaken: true, .. } => overtaken_in_a_row + 1,
            _ => 0,
        };
        match outcome {
            Outcome::Stopped => return,
            Outcome::NewBase => retry = Duration::from_secs(1),
            Outcome::NoBase => {
                tracing::info!("delta segments start once the first full backup is committed");
                wait_for_newer_base(&settings, None, &signals, &cancel, None).await;
            }
            // A second full backup at once would take as long and be overtaken again: one backup after
            // another, and still no chain. The next scheduled backup tries again.
            Outcome::NeedBackup { after, why, .. } if overtaken_in_a_row >= 2 => {
                tracing::error!(
                    message_id = crate::telemetry::MESSAGE_CHAIN_ENDED,
                    %why,
                    "twice in a row etcd compacted the history a new delta chain needs before its full backup was committed: \
                     full backups take longer than etcd keeps its history. No full backup is taken for it now; the next \
                     scheduled backup tries again. Make backups faster (the upload), or have etcd keep more history \
                     (etcd --auto-compaction-retention, kube-apiserver --etcd-compaction-interval)"
                );
                wait_for_newer_base(&settings, after.as_ref(), &signals, &cancel, None).await;
            }
            Outcome::NeedBackup { after, why, .. } => {
                tracing::warn!(
                    message_id = crate::telemetry::MESSAGE_CHAIN_ENDED,
                    %why,
                    "the delta chain cannot go on: taking a full backup now to start a new one"
                );
                wait_for_newer_base(&settings, after.as_ref(), &signals, &cancel, Some(why)).await;
            }
            Outcome::Learner | Outcome::Retry(_) => {
                if let Outcome::Retry(why) = &outcome {
                    tracing::warn!(%why, retry_in = %humantime::format_duration(retry), "the delta stream stopped; it goes on from its last committed segment");
                } else {
                    tracing::info!("this member is a learner: it streams delta segments once promoted");
                }
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = cancel.cancelled() => return,
                }
                retry = (retry * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// The destination a chain is continued from: the shared one (S3) when configured, as every member's
/// chain lands there; else the local folder.
fn home(stores: &[Destination]) -> Option<&Destination> {
    stores.iter().find(|s| s.kind() == Kind::S3).or_else(|| stores.first())
}

/// The newest committed backup that can be a base (its database revision is known, it is not dated in
/// the future, and in member mode it is this member's: each member follows its own chain), with that
/// revision and the cluster it was taken of.
fn newest_base(listing: &Listing, member: Option<&str>) -> Option<(BackupId, i64, String)> {
    let now = chrono::Utc::now();
    listing.backups.iter().find_map(|b| {
        let id = &b.manifest.id;
        let mine = member.is_none_or(|m| id.member() == m);
        let usable = mine && !crate::retention::is_future_dated(id, now);
        let revision = b.manifest.snapshot.status.as_ref()?.served_revision();
        usable.then(|| (id.clone(), revision, b.manifest.etcd.cluster_id.to_ascii_lowercase()))
    })
}

async fn one_chain(
    settings: &Settings,
    deltas: &DeltasSettings,
    signals: &Signals,
    cancel: &CancellationToken,
) -> Result<Outcome> {
    let member = crate::etcd::connect(settings.etcd()?).await?;
    if member.learner {
        return Ok(Outcome::Learner);
    }
    let mut client = member.client();
    // Cluster mode: one stream for the cluster, held under a lease (unless this is the only voter).
    let cluster_mode = settings.coordination.mode == CoordinationMode::Cluster;
    let held = if cluster_mode && member.voters != Some(1) {
        match hold(&mut client, settings, cancel).await? {
            Some(held) => Some(held),
            None => return Ok(Outcome::Stopped),
        }
    } else {
        None
    };
    let (stores, errors) = crate::store::open_all(settings).await;
    if let Some((kind, e)) = errors.into_iter().next() {
        return Err(e.context(format!("cannot open {}", kind.title())));
    }
    let home = home(&stores).ok_or_else(|| anyhow!("no destination"))?;
    let listing = home.list().await?;
    let own = member.facts.member_id.to_ascii_lowercase();
    let Some((base, base_revision, base_cluster)) = newest_base(&listing, (!cluster_mode).then_some(own.as_str()))
    else {
        return Ok(Outcome::NoBase);
    };
    let cluster_id = member.facts.cluster_id.to_ascii_lowercase();
    let need = |why: String| Ok(Outcome::NeedBackup { after: Some(base.clone()), why, overtaken: false });
    if base_cluster != cluster_id {
        return need(format!(
            "the newest backup, {base}, is of cluster {base_cluster}, not of this one ({cluster_id})"
        ));
    }
    let (segments, _) = read_chain(&**home, &listing.segments, &base, &settings.cluster).await;
    let chain = follow(&base, base_revision, &segments);
    if let Some(broken) = chain.broken {
        return need(broken.to_string());
    }
    if let Some(other) = chain.segments.iter().find(|s| s.cluster_id.to_ascii_lowercase() != cluster_id) {
        return need(format!("segment {} follows cluster {}, not this one ({cluster_id})", other.id, other.cluster_id));
    }
    let next = match chain.segments.last() {
        Some(last) => Next::after(last).ok_or_else(|| anyhow!("the chain from {base} is at its longest"))?,
        None => Next::first(base.clone(), base_revision),
    };
    // A chain ahead of etcd's history is not this history (a restored cluster reuses revisions). The
    // cluster's revision now, by a linearizable read (the chain may be another member's, written while
    // this one waited for the lock).
    let now = client.get("\0", Some(etcd_client::GetOptions::new().with_count_only())).await?;
    let current = now.header().map_or(0, |h| h.revision());
    if next.first_revision.saturating_sub(1) > current {
        return need(format!(
            "the chain from {base} reaches revision {}, ahead of etcd's {current}: etcd's history is not the chain's",
            next.first_revision - 1,
        ));
    }
    // The chain's last segment must be this history's too (planted, it could be anything the public
    // recipients and sha256s allow): what etcd's history holds there must be what it records.
    if let Some(last) = chain.segments.last()
        && let Some(why) = unlike_history(&mut client, last).await?
    {
        return need(why);
    }
    tracing::info!(base = %base, segment = %next.id, from_revision = next.first_revision, "streaming delta segments");
    // The chain ends, its open segment committed, when the daemon stops or a newer base is recorded.
    let stop = cancel.child_token();
    let new_base = {
        let (settings, signals, stop, base) = (settings.clone(), signals.clone(), stop.clone(), base.clone());
        let own = (!cluster_mode).then_some(own.clone());
        AbortOnDrop(tokio::spawn(async move {
            loop {
                signals.backup_recorded.notified().await;
                if newer_base_than(&settings, Some(&base), own.as_deref()).await {
                    stop.cancel();
                    return;
                }
            }
        }))
    };
    let (report, reports) = tokio::sync::mpsc::unbounded_channel();
    let recording = AbortOnDrop(tokio::spawn(record(settings.clone(), base.clone(), reports)));
    let sink = Sink {
        stores: &stores,
        cluster: settings.cluster.clone(),
        compression: settings.compression,
        recipients: settings.encryption.recipients.clone(),
        host: crate::host::hostname(),
        member_id: own.clone(),
        cluster_id,
        max_interval: deltas.max_interval,
        max_size: deltas.max_size,
        report: Some(report),
    };
    let never = CancellationToken::new();
    let lost = held.as_ref().map_or(&never, |h| &h.lost);
    let ended = stream(&mut client, next, &sink, &stop, lost).await;
    // The record of the last commit is written before the chain's end is acted on.
    drop(sink);
    let _ = tokio::time::timeout(Duration::from_secs(5), recording.finish()).await;
    drop(new_base);
    drop(held);
    Ok(match ended {
        Ended::Cancelled if cancel.is_cancelled() => Outcome::Stopped,
        Ended::Cancelled => Outcome::NewBase,
        ended @ (Ended::LockLost | Ended::WatchLost(_) | Ended::Unanswered(_)) => Outcome::Retry(ended.to_string()),
        Ended::Write { error, .. } if crate::errors::cause_of(&error) == Some(crate::errors::Cause::Exists) => {
            Outcome::Retry(format!("another streamer committed the same segment first: {error:#}"))
        }
        ended @ Ended::Compacted { needed, .. } => {
            let overtaken = needed == base_revision.saturating_add(1);
            Outcome::NeedBackup { after: Some(base), why: ended.to_string(), overtaken }
        }
        ended => Outcome::NeedBackup { after: Some(base), why: ended.to_string(), overtaken: false },
    })
}

/// Why `last`, the segment a chain would go on after, is not etcd's history, if it is not (the host
/// cannot decrypt its segments to compare their events): etcd's count of the keys at its last revision
/// differs from the one it records; or, where it records none (etcd could not be asked when it was
/// committed: the watch was lost as etcd went down), the revisions and events etcd's history holds over
/// its range differ from its own counts. Nothing to say when etcd has compacted that history: the
/// watch's start then decides.
async fn unlike_history(client: &mut etcd_client::Client, last: &SegmentManifest) -> Result<Option<String>> {
    let Some(recorded) = last.live_keys else {
        let counted = super::watch::recount(client, last.first_revision, last.last_revision).await.map_err(|e| {
            anyhow!("cannot read revisions {} to {} again: {e}", last.first_revision, last.last_revision)
        })?;
        return Ok(match counted {
            Some((revisions, events)) if (revisions, events) != (last.revisions, last.events) => Some(format!(
                "segment {} records {} revisions and {} events from revision {} to {}, etcd's history holds {revisions} \
                 and {events}: the chain is not etcd's history",
                last.id, last.revisions, last.events, last.first_revision, last.last_revision
            )),
            _ => None,
        });
    };
    let counted = super::watch::count_at(client, last.last_revision)
        .await
        .map_err(|e| anyhow!("cannot count the keys at revision {}: {e}", last.last_revision))?;
    Ok(match counted {
        Some(counted) if counted != recorded => Some(format!(
            "segment {} records {recorded} keys at revision {}, etcd counts {counted}: the chain is not etcd's history",
            last.id, last.last_revision
        )),
        _ => None,
    })
}

/// Whether `home` holds a backup that can be a base (of `member`, in member mode), newer than `than`.
async fn newer_base_than(settings: &Settings, than: Option<&BackupId>, member: Option<&str>) -> bool {
    let (stores, _) = crate::store::open_all(settings).await;
    let Some(home) = home(&stores) else { return false };
    match home.list().await {
        Ok(listing) => newest_base(&listing, member).is_some_and(|(id, ..)| than.is_none_or(|t| &id > t)),
        Err(_) => false,
    }
}

/// Waits until a base newer than `after` is recorded (checked when the daemon records a backup, and
/// every minute), or `cancel`. With `ask` (why), asks the daemon for a full backup, and again, less and
/// less often, while none comes (a failed backup is no base).
async fn wait_for_newer_base(
    settings: &Settings,
    after: Option<&BackupId>,
    signals: &Signals,
    cancel: &CancellationToken,
    ask: Option<String>,
) {
    let mut again = Duration::from_secs(60);
    let mut asked = tokio::time::Instant::now();
    if let Some(why) = &ask {
        let _ = signals.backup_now.try_send(why.clone());
    }
    loop {
        tokio::select! {
            () = signals.backup_recorded.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = cancel.cancelled() => return,
        }
        // Any base newer than `after`: in member mode the loop picks this member's.
        if newer_base_than(settings, after, None).await {
            return;
        }
        if let Some(why) = &ask
            && asked.elapsed() >= again
        {
            let _ = signals.backup_now.try_send(why.clone());
            asked = tokio::time::Instant::now();
            again = (again * 2).min(Duration::from_secs(3600));
        }
    }
}

/// Keeps the stream's record in the state file (and so the metrics): at most once a second, what
/// the reports since said.
async fn record(
    settings: Settings,
    chain: BackupId,
    mut reports: tokio::sync::mpsc::UnboundedReceiver<super::watch::Report>,
) {
    use super::watch::Report;
    let state_dir = crate::host::state_dir();
    while let Some(first) = reports.recv().await {
        let mut batch = vec![first];
        tokio::time::sleep(Duration::from_secs(1)).await;
        while let Ok(more) = reports.try_recv() {
            batch.push(more);
        }
        crate::history::persist(&settings, &state_dir, |state| {
            let d = state.deltas.get_or_insert_with(Default::default);
            if d.chain != chain.to_string() {
                d.chain = chain.to_string();
            }
            for report in batch {
                match report {
                    Report::Committed(m) => {
                        d.segment = m.id.to_string();
                        d.last_revision = m.last_revision;
                        d.covered_until = Some(m.closed);
                        d.segments += 1;
                        d.bytes += m.artifact.size;
                    }
                    Report::Heard { revision, committed, at } => {
                        d.lag_revisions = (revision - committed).max(0);
                        if revision <= committed {
                            d.covered_until = Some(at);
                        }
                    }
                }
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Stored;

    fn stored(date: &str, revision: i64, member: &str, status: bool) -> Stored {
        let mut manifest = crate::manifest::tests::sample();
        let at = chrono::DateTime::parse_from_rfc3339(&format!("{date}T06:00:00Z")).unwrap().to_utc();
        manifest.id = BackupId::new(at, revision, member);
        manifest.snapshot.status = status.then(|| crate::snapshot::bbolt::Status {
            hash: 1,
            revision: revision + 5,
            total_key: 1,
            live_keys: 1,
            compact_revision: 0,
            total_size: 1,
        });
        Stored { manifest, pinned: false }
    }

    #[test]
    fn the_newest_base_has_a_known_revision_is_not_from_the_future_and_in_member_mode_is_ours() {
        // Newest first, as a listing is.
        let backups = vec![
            stored("2099-01-01", 9000, "a", true),
            stored("2026-11-25", 2500, "b", true),
            stored("2026-11-24", 2400, "a", false),
            stored("2026-11-20", 2000, "a", true),
        ];
        let listing = Listing { backups, ..Listing::default() };
        let pick = |member| newest_base(&listing, member).map(|(id, revision, _)| (id.revision(), revision));
        assert_eq!(pick(None), Some((2500, 2505)), "not the one dated 2099, nor one without a status");
        assert_eq!(pick(Some("a")), Some((2000, 2005)), "member mode: this member's own");
        assert_eq!(pick(Some("c")), None);
        let cluster = newest_base(&listing, None).map(|(.., cluster)| cluster);
        assert_eq!(cluster.as_deref(), Some("cdf818194e3a8c32"));
    }
}
