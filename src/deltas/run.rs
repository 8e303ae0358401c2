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
use super::stored::read_all;
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
    /// No chain can go on: a full backup is needed first (why).
    NeedBackup { after: Option<BackupId>, why: String },
    /// No backup yet: the daemon takes its first one on its own.
    NoBase,
}

/// Runs until `cancel`; never fails: what goes wrong is logged and retried.
pub async fn run(settings: Settings, deltas: DeltasSettings, signals: Signals, cancel: CancellationToken) {
    let mut retry = Duration::from_secs(1);
    loop {
        if cancel.is_cancelled() {
            return;
        }
        match one_chain(&settings, &deltas, &signals, &cancel).await {
            Ok(Outcome::Stopped) => return,
            Ok(Outcome::NewBase) => retry = Duration::from_secs(1),
            Ok(Outcome::NoBase) => {
                tracing::info!("delta segments start once the first full backup is committed");
                wait_for_newer_base(&settings, None, &signals, &cancel).await;
            }
            Ok(Outcome::NeedBackup { after, why }) => {
                tracing::warn!(%why, "the delta chain cannot go on: taking a full backup now to start a new one");
                let _ = signals.backup_now.try_send(why);
                wait_for_newer_base(&settings, after.as_ref(), &signals, &cancel).await;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), retry_in = %humantime::format_duration(retry), "the delta stream stopped");
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

/// The newest committed backup whose database revision is known (it can be a base), with that revision.
fn newest_base(listing: &Listing) -> Option<(BackupId, i64)> {
    listing
        .backups
        .iter()
        .find_map(|b| Some((b.manifest.id.clone(), b.manifest.snapshot.status.as_ref()?.served_revision())))
}

async fn one_chain(
    settings: &Settings,
    deltas: &DeltasSettings,
    signals: &Signals,
    cancel: &CancellationToken,
) -> Result<Outcome> {
    let member = crate::etcd::connect(settings.etcd()?).await?;
    let mut client = member.client();
    // Cluster mode: one stream for the cluster, held under a lease.
    let held = match settings.coordination.mode {
        CoordinationMode::Cluster if member.voters.is_some_and(|v| v > 1) || member.learner => {
            match hold(&mut client, settings, cancel).await? {
                Some(held) => Some(held),
                None => return Ok(Outcome::Stopped),
            }
        }
        _ => None,
    };
    let (stores, errors) = crate::store::open_all(settings).await;
    if let Some((kind, e)) = errors.into_iter().next() {
        return Err(e.context(format!("cannot open {}", kind.title())));
    }
    let home = home(&stores).ok_or_else(|| anyhow!("no destination"))?;
    let listing = home.list().await?;
    let Some((base, base_revision)) = newest_base(&listing) else {
        return Ok(Outcome::NoBase);
    };
    let pairs: Vec<_> = listing.segments.iter().filter(|p| p.id.base() == &base).cloned().collect();
    let (segments, _) = read_all(&**home, &pairs, &settings.cluster).await;
    let chain = follow(&base, base_revision, &segments);
    if let Some(broken) = chain.broken {
        return Ok(Outcome::NeedBackup { after: Some(base), why: broken.to_string() });
    }
    let next = match chain.segments.last() {
        Some(last) => Next::after(last).ok_or_else(|| anyhow!("the chain from {base} is at its longest"))?,
        None => Next::first(base.clone(), base_revision),
    };
    tracing::info!(base = %base, segment = %next.id, from_revision = next.first_revision, "streaming delta segments");
    // The chain ends when the daemon stops, the stream's lease is lost, or a newer base is recorded.
    let chain_cancel = held.as_ref().map_or_else(|| cancel.child_token(), |h| h.lost.clone());
    let stop_on_stop = {
        let (cancel, chain_cancel) = (cancel.clone(), chain_cancel.clone());
        tokio::spawn(async move {
            cancel.cancelled().await;
            chain_cancel.cancel();
        })
    };
    let new_base = {
        let (settings, signals, chain_cancel, base) =
            (settings.clone(), signals.clone(), chain_cancel.clone(), base.clone());
        tokio::spawn(async move {
            loop {
                signals.backup_recorded.notified().await;
                if newer_base_than(&settings, Some(&base)).await {
                    chain_cancel.cancel();
                    return;
                }
            }
        })
    };
    let sink = Sink {
        stores: &stores,
        cluster: settings.cluster.clone(),
        compression: settings.compression,
        recipients: settings.encryption.recipients.clone(),
        host: crate::host::hostname(),
        member_id: member.facts.member_id.clone(),
        max_interval: deltas.max_interval,
        max_size: deltas.max_size,
    };
    let streamed = stream(&mut client, next, &sink, &chain_cancel).await;
    stop_on_stop.abort();
    new_base.abort();
    if let Some(held) = held {
        held.release(&mut client).await;
    }
    Ok(match streamed.ended {
        Ended::Cancelled if cancel.is_cancelled() => Outcome::Stopped,
        Ended::Cancelled => Outcome::NewBase,
        ended => Outcome::NeedBackup { after: Some(base), why: ended.to_string() },
    })
}

/// Whether `home` holds a backup that can be a base, newer than `than`.
async fn newer_base_than(settings: &Settings, than: Option<&BackupId>) -> bool {
    let (stores, _) = crate::store::open_all(settings).await;
    let Some(home) = home(&stores) else { return false };
    match home.list().await {
        Ok(listing) => newest_base(&listing).is_some_and(|(id, _)| than.is_none_or(|t| &id > t)),
        Err(_) => false,
    }
}

/// Waits until a base newer than `after` is recorded (checked when the daemon records a backup, and
/// every minute), or `cancel`.
async fn wait_for_newer_base(
    settings: &Settings,
    after: Option<&BackupId>,
    signals: &Signals,
    cancel: &CancellationToken,
) {
    loop {
        tokio::select! {
            () = signals.backup_recorded.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = cancel.cancelled() => return,
        }
        if newer_base_than(settings, after).await {
            return;
        }
    }
}

/// The cluster's stream, held by this member.
struct Held {
    lease: i64,
    lock_key: Vec<u8>,
    lost: CancellationToken,
    renewing: tokio::task::JoinHandle<()>,
}

impl Held {
    async fn release(self, client: &mut etcd_client::Client) {
        self.renewing.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), client.unlock(self.lock_key)).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), client.lease_revoke(self.lease)).await;
    }
}

/// Takes the cluster's stream lock (`<prefix>deltas`), waiting while another member holds it; `None`
/// if cancelled first.
async fn hold(
    client: &mut etcd_client::Client,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<Option<Held>> {
    let ttl = settings.coordination.lease_ttl;
    let lease = client.lease_grant(ttl.as_secs().max(2) as i64, None).await?.id();
    let lost = cancel.child_token();
    let renewing =
        tokio::spawn(crate::coordination::renew(client.clone(), lease, ttl, lost.clone(), "the delta stream"));
    let name = format!("{}deltas", settings.coordination.prefix);
    let options = etcd_client::LockOptions::new().with_lease(lease);
    tokio::select! {
        locked = client.lock(name.as_str(), Some(options)) => match locked {
            Ok(locked) => Ok(Some(Held { lease, lock_key: locked.key().to_vec(), lost, renewing })),
            Err(e) => {
                renewing.abort();
                let _ = client.lease_revoke(lease).await;
                Err(e.into())
            }
        },
        () = cancel.cancelled() => {
            renewing.abort();
            let _ = client.lease_revoke(lease).await;
            Ok(None)
        }
    }
}
