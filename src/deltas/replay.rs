//! Segments replayed into a throwaway etcd restored from their base snapshot: one transaction per
//! original revision, in order, so that every revision number, create revision and version comes out
//! as the original's; each transaction's revision is checked against the original's, and a replay
//! that drifts stops, naming where. Leases the segments record are granted again with their ID and
//! granted TTL (a grant makes no revision), and every lease is kept alive while the replay runs: a
//! lease expiring in the throwaway member would delete keys at a revision the original never had.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use etcd_client::{Client, LeaseGrantOptions, PutOptions, Txn, TxnOp};
use tokio_util::sync::CancellationToken;

use super::segment::Revision;

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The throwaway member answered a transaction with another revision than the original's.
    #[error(
        "replaying revision {expected} made revision {got}: the restored member does not follow the original (a lease expired in it, or its base is not the chain's)"
    )]
    Diverged { expected: i64, got: i64 },
    #[error("replaying revision {revision} failed: {why}")]
    Failed { revision: i64, why: String },
}

/// Replays `revisions` (in order, following the member's current revision) up to and including
/// `until`; returns the last revision replayed. `granted` holds the leases granted so far.
pub async fn replay(
    client: &mut Client,
    revisions: &[Revision],
    until: i64,
    granted: &mut HashSet<i64>,
) -> Result<Option<i64>, ReplayError> {
    let mut last = None;
    for revision in revisions.iter().take_while(|r| r.revision <= until) {
        let failed = |why: String| ReplayError::Failed { revision: revision.revision, why };
        for lease in &revision.leases {
            if granted.insert(lease.id) {
                // A lease the base snapshot already holds is granted already: that is no failure.
                let known = client.leases().await.map_err(|e| failed(e.to_string()))?;
                if !known.leases().iter().any(|l| l.id() == lease.id) {
                    client
                        .lease_grant(lease.ttl, Some(LeaseGrantOptions::new().with_id(lease.id)))
                        .await
                        .map_err(|e| failed(format!("cannot grant lease {:x}: {e}", lease.id)))?;
                }
            }
        }
        let ops: Vec<TxnOp> = revision
            .events
            .iter()
            .map(|event| {
                let kv = event.kv();
                if event.is_put() {
                    let options = (kv.lease != 0).then(|| PutOptions::new().with_lease(kv.lease));
                    TxnOp::put(kv.key.clone(), kv.value.clone(), options)
                } else {
                    TxnOp::delete(kv.key.clone(), None)
                }
            })
            .collect();
        let answer = client.txn(Txn::new().and_then(ops)).await.map_err(|e| failed(e.to_string()))?;
        let got = answer.header().map_or(0, |h| h.revision());
        if got != revision.revision {
            return Err(ReplayError::Diverged { expected: revision.revision, got });
        }
        last = Some(got);
    }
    Ok(last)
}

/// Keeps every lease of the member alive until `stop` is cancelled, renewing each once a second on a
/// stream of its own; a lease that is gone is let go.
pub async fn keep_leases_alive(mut client: Client, stop: CancellationToken) {
    type Keeper = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);
    let mut keepers: HashMap<i64, Keeper> = HashMap::new();
    loop {
        if let Ok(leases) = client.leases().await {
            let live: HashSet<i64> = leases.leases().iter().map(|l| l.id()).collect();
            keepers.retain(|id, _| live.contains(id));
            for id in live {
                if let std::collections::hash_map::Entry::Vacant(slot) = keepers.entry(id)
                    && let Ok(keeper) = client.lease_keep_alive(id).await
                {
                    slot.insert(keeper);
                }
            }
        }
        for (keeper, answers) in keepers.values_mut() {
            if keeper.keep_alive().await.is_ok() {
                // The answer is not needed; reading it keeps the stream from filling.
                let _ = tokio::time::timeout(Duration::from_millis(100), answers.message()).await;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
    }
}
