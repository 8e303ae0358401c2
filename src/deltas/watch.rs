//! One chain streamed: the local member's watch of the whole keyspace from the revision after the
//! chain's last, its revisions gathered into segments closed on time or size, each sealed and committed
//! to every destination in turn. Ends when cancelled (the open segment is committed first) or when the
//! chain can no longer be continued without a hole, saying why: the caller then takes a full snapshot
//! and starts a new chain.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::manifest::{BodyFacts, SEGMENT_FORMAT, SegmentId, SegmentManifest};
use super::seal;
use super::segment::{self, Event, Lease, Revision, SegmentError, Writer};
use crate::crypto::PublicKey;
use crate::manifest::{ArtifactFacts, ClusterName, Compression};
use crate::store::Destination;

/// Where a chain goes on: the next segment's id, the first revision it holds, and the body the one
/// before it had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub id: SegmentId,
    pub base_revision: i64,
    pub first_revision: i64,
    pub previous_sha256: Option<String>,
}

impl Next {
    /// The first segment of a chain from `base`, which holds `base_revision`.
    pub fn first(base: crate::manifest::BackupId, base_revision: i64) -> Self {
        Next {
            id: SegmentId::new(base, 1),
            base_revision,
            first_revision: base_revision.saturating_add(1),
            previous_sha256: None,
        }
    }

    /// After the committed segment `m`.
    pub fn after(m: &SegmentManifest) -> Option<Self> {
        Some(Next {
            id: m.id.next()?,
            base_revision: m.base_revision,
            first_revision: m.last_revision.saturating_add(1),
            previous_sha256: Some(m.body.sha256.clone()),
        })
    }
}

/// Where and how segments are written.
pub struct Sink<'a> {
    pub stores: &'a [Destination],
    pub cluster: ClusterName,
    pub compression: Compression,
    pub recipients: Vec<PublicKey>,
    pub host: String,
    pub member_id: String,
    /// The cluster's id (hex): recorded in every manifest, and a chain continues only in its cluster.
    pub cluster_id: String,
    pub max_interval: Duration,
    pub max_size: u64,
    /// Told of every commit and of what etcd says of its revision (for the state file and metrics).
    pub report: Option<tokio::sync::mpsc::UnboundedSender<Report>>,
}

/// What the stream tells whoever keeps its record.
#[derive(Debug, Clone)]
pub enum Report {
    /// A segment committed to every destination.
    Committed(Box<SegmentManifest>),
    /// etcd is at `revision`; the chain has committed up to `committed`.
    Heard { revision: i64, committed: i64, at: chrono::DateTime<Utc> },
}

impl Sink<'_> {
    fn tell(&self, report: Report) {
        if let Some(to) = &self.report {
            let _ = to.send(report);
        }
    }
}

/// Why a chain ended.
#[derive(Debug, thiserror::Error)]
pub enum Ended {
    #[error("stopped")]
    Cancelled,
    /// The cluster's stream lock was lost: another member may stream now; the open segment is not
    /// committed (it would race that member's).
    #[error("the lease of the cluster's delta stream was lost")]
    LockLost,
    /// etcd no longer holds the revisions the chain needs next.
    #[error("etcd compacted its history past revision {needed} (compacted to {compacted}): the chain cannot go on")]
    Compacted { needed: i64, compacted: i64 },
    /// The watch ended or was cancelled by etcd (it restarted, or the connection broke).
    #[error("the watch ended: {0}")]
    WatchLost(String),
    /// etcd sent a revision that does not follow the last (never expected: said as it is).
    #[error("the watch skipped revisions: {0}")]
    Gap(SegmentError),
    /// A segment could not be committed to every destination (`Cause::Exists`: another streamer
    /// committed it first).
    #[error("segment {id} could not be written: {error:#}")]
    Write { id: SegmentId, error: anyhow::Error },
    /// etcd could not be asked what the chain records (a lease's TTL).
    #[error("etcd did not answer: {0}")]
    Unanswered(String),
}

/// Streams the chain from `next` until `stop` (the open segment is committed first), `lost` (the
/// cluster's stream lock: nothing more is committed), or it cannot go on. Commits are never cancelled
/// half-way: a segment is committed to every destination or its chain ends. Each commit is reported
/// to the sink (nothing is kept here: a chain can run for days).
pub async fn stream(
    client: &mut Client,
    mut next: Next,
    sink: &Sink<'_>,
    stop: &CancellationToken,
    lost: &CancellationToken,
) -> Ended {
    stream_from(client, &mut next, sink, stop, lost).await
}

/// How long one question to etcd besides the watch may take.
const QUESTION: Duration = Duration::from_secs(10);

async fn stream_from(
    client: &mut Client,
    next: &mut Next,
    sink: &Sink<'_>,
    cancel: &CancellationToken,
    lost: &CancellationToken,
) -> Ended {
    let options = WatchOptions::new().with_all_keys().with_start_revision(next.first_revision).with_progress_notify();
    let mut watch = match client.watch("\0", Some(options)).await {
        Ok(watch) => watch,
        Err(e) => return Ended::WatchLost(format!("cannot watch etcd: {e}")),
    };
    let mut writer = Writer::starting_at(next.first_revision);
    let mut leases: HashSet<i64> = HashSet::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    // While nothing changes, etcd is asked every `max_interval` where it stands: its answer says the
    // chain covers every change until then (the state file and the metrics say so).
    let mut ask = tokio::time::interval(sink.max_interval);
    ask.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let message = tokio::select! {
            message = watch.message() => message,
            () = due => {
                if let Err(ended) = close(client, next, sink, &mut writer).await {
                    return ended;
                }
                deadline = None;
                continue;
            }
            () = lost.cancelled() => return Ended::LockLost,
            _ = ask.tick(), if writer.is_empty() => {
                if let Err(e) = watch.request_progress().await {
                    return Ended::WatchLost(format!("cannot ask etcd for the watch's progress: {e}"));
                }
                continue;
            }
            () = cancel.cancelled() => {
                // What was received is committed before stopping: nothing the watch saw is lost.
                return close(client, next, sink, &mut writer).await.err().unwrap_or(Ended::Cancelled);
            }
        };
        // Every revision received is whole (etcd sends a revision's events in one response): when the
        // watch ends, what it delivered is committed first, so a member that dies loses only what it
        // never sent.
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                return commit_then(client, next, sink, &mut writer, "etcd closed the watch".into()).await;
            }
            Err(e) => return commit_then(client, next, sink, &mut writer, e.to_string()).await,
        };
        if response.compact_revision() > 0 {
            return Ended::Compacted { needed: writer_next(&writer, next), compacted: response.compact_revision() };
        }
        if response.canceled() {
            let why = format!("etcd cancelled the watch: {}", response.cancel_reason());
            return commit_then(client, next, sink, &mut writer, why).await;
        }
        if let Some(header) = response.header() {
            let committed = next.first_revision.saturating_sub(1);
            sink.tell(Report::Heard { revision: header.revision(), committed, at: Utc::now() });
        }
        let events = response.events().iter().filter_map(event_of);
        for mut revision in segment::group(events, Utc::now()) {
            revision.leases = match new_leases(client, &revision, &mut leases).await {
                Ok(new) => new,
                Err(e) => return e,
            };
            if let Err(e) = writer.push(&revision) {
                return Ended::Gap(e);
            }
        }
        if writer.summary().is_some() && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + sink.max_interval);
        }
        if writer.len() as u64 >= sink.max_size {
            if let Err(ended) = close(client, next, sink, &mut writer).await {
                return ended;
            }
            deadline = None;
        }
    }
}

/// Commits the open segment, then ends with the watch lost (or with why the commit failed).
async fn commit_then(client: &mut Client, next: &mut Next, sink: &Sink<'_>, writer: &mut Writer, why: String) -> Ended {
    match close(client, next, sink, writer).await {
        Ok(()) => Ended::WatchLost(why),
        Err(ended) => ended,
    }
}

/// The revision the chain needs next.
fn writer_next(writer: &Writer, next: &Next) -> i64 {
    writer.summary().map_or(next.first_revision, |s| s.last_revision.saturating_add(1))
}

/// etcd-client's event as the segment's; an event without a key-value (never sent) is dropped, and
/// `Writer::push` then names what is missing.
fn event_of(e: &etcd_client::Event) -> Option<Event> {
    let kv = e.kv()?;
    Some(match e.event_type() {
        EventType::Put => {
            Event::put(kv.key(), kv.value(), kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease())
        }
        EventType::Delete => Event::delete(kv.key(), kv.mod_revision()),
    })
}

/// The leases `revision`'s puts use that this chain has not recorded, with their granted TTL as etcd
/// tells it now (1 s for one etcd says is gone: its keys' deletion follows in a later revision). etcd
/// not answering ends the chain's stream (it is resumed from its last segment), never a guess.
async fn new_leases(client: &mut Client, revision: &Revision, seen: &mut HashSet<i64>) -> Result<Vec<Lease>, Ended> {
    let mut out = Vec::new();
    for event in revision.events.iter().filter(|e| e.is_put()) {
        let id = event.kv().lease;
        if id == 0 || seen.contains(&id) {
            continue;
        }
        let answer = match tokio::time::timeout(QUESTION, client.lease_time_to_live(id, None)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(Ended::Unanswered(format!("the TTL of lease {id:x}: {e}"))),
            Err(_) => return Err(Ended::Unanswered(format!("the TTL of lease {id:x}: no answer"))),
        };
        let ttl = if answer.ttl() < 0 { 1 } else { answer.granted_ttl().max(1) };
        seen.insert(id);
        out.push(Lease { id, ttl });
    }
    Ok(out)
}

/// Commits the open segment, if any, to every destination (never cancelled half-way); the chain then
/// goes on after it.
async fn close(client: &mut Client, next: &mut Next, sink: &Sink<'_>, writer: &mut Writer) -> Result<(), Ended> {
    if writer.is_empty() {
        return Ok(());
    }
    let Some((body, summary)) = std::mem::take(writer).finish() else { return Ok(()) };
    let id = next.id.clone();
    let failed = |error: anyhow::Error| Ended::Write { id: id.clone(), error };
    let sealed = seal::seal(&body, sink.compression, &sink.recipients).map_err(|e| failed(anyhow::anyhow!(e)))?;
    // None when etcd cannot tell (compacted meanwhile, or down as the watch was lost): checked otherwise
    // on resume.
    let live_keys = count_at(client, summary.last_revision).await.ok().flatten();
    let manifest = SegmentManifest {
        format_version: SEGMENT_FORMAT,
        id: id.clone(),
        cluster: sink.cluster.clone(),
        host: sink.host.clone(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        member_id: sink.member_id.clone(),
        cluster_id: sink.cluster_id.clone(),
        base_revision: next.base_revision,
        first_revision: summary.first_revision,
        last_revision: summary.last_revision,
        revisions: summary.revisions,
        events: summary.events,
        first_received: summary.first_received,
        last_received: summary.last_received,
        closed: Utc::now().max(summary.last_received),
        previous_sha256: next.previous_sha256.clone(),
        live_keys,
        body: BodyFacts { size: body.len() as u64, sha256: hex::encode(Sha256::digest(&body)) },
        artifact: ArtifactFacts {
            name: id.artifact_name(sink.compression),
            size: sealed.artifact.len() as u64,
            sha256: sealed.sha256.clone(),
            compression: sink.compression.kind(),
            compression_level: sink.compression.level(),
            encryption: "age".into(),
            recipients: sink.recipients.iter().map(|r| r.as_str().to_string()).collect(),
        },
    };
    let never = CancellationToken::new();
    // The destination chains are continued from (S3 when configured) first: a stream stopped between
    // two writes goes on from there, and the other is written again (the same body counts as done).
    let mut stores: Vec<&Destination> = sink.stores.iter().collect();
    stores.sort_by_key(|s| s.kind() != crate::store::Kind::S3);
    for store in stores {
        super::stored::write(&**store, &sealed, &manifest, &never)
            .await
            .map_err(|e| failed(e.context(format!("writing to {}", store.kind().title()))))?;
    }
    tracing::info!(
        message_id = crate::telemetry::MESSAGE_DELTA_COMMITTED,
        segment = %manifest.id,
        first_revision = manifest.first_revision,
        last_revision = manifest.last_revision,
        events = manifest.events,
        bytes = manifest.artifact.size,
        "delta segment committed"
    );
    *next = Next::after(&manifest).ok_or_else(|| failed(anyhow::anyhow!("the chain is at its longest")))?;
    *writer = Writer::starting_at(next.first_revision);
    sink.tell(Report::Committed(Box::new(manifest)));
    Ok(())
}

/// The revisions and events etcd's history holds from `first` to `last`, read again by a watch;
/// `Ok(None)` if etcd has compacted them.
pub async fn recount(client: &mut Client, first: i64, last: i64) -> Result<Option<(u64, u64)>, String> {
    let options = WatchOptions::new().with_all_keys().with_start_revision(first);
    let read = async {
        let mut watch = client.watch("\0", Some(options)).await.map_err(|e| e.to_string())?;
        let (mut revisions, mut events, mut seen) = (0u64, 0u64, None);
        // A revision's events come in one response: after the one holding `last`, nothing is missing.
        while seen != Some(last) {
            let Some(response) = watch.message().await.map_err(|e| e.to_string())? else {
                return Err("etcd closed the watch".to_string());
            };
            if response.compact_revision() > 0 {
                return Ok(None);
            }
            if response.canceled() {
                return Err(format!("etcd cancelled the watch: {}", response.cancel_reason()));
            }
            for revision in response.events().iter().filter_map(|e| e.kv().map(|kv| kv.mod_revision())) {
                if revision > last {
                    return Ok(Some((revisions, events)));
                }
                if seen != Some(revision) {
                    revisions += 1;
                    seen = Some(revision);
                }
                events += 1;
            }
        }
        Ok(Some((revisions, events)))
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.unwrap_or_else(|_| Err("no answer in 60 s".to_string()))
}

/// The keys in the cluster at `revision`, as etcd counts them; `Ok(None)` if etcd has compacted that
/// revision (told by the gRPC code, not the text); `Err` if it could not be asked.
pub async fn count_at(client: &mut Client, revision: i64) -> Result<Option<u64>, String> {
    let options = GetOptions::new().with_all_keys().with_count_only().with_revision(revision);
    match tokio::time::timeout(QUESTION, client.get("\0", Some(options))).await {
        Ok(Ok(answer)) => {
            u64::try_from(answer.count()).map(Some).map_err(|_| format!("etcd counted {}", answer.count()))
        }
        Ok(Err(etcd_client::Error::GRpcStatus(status))) if status.code() == tonic::Code::OutOfRange => Ok(None),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".to_string()),
    }
}
