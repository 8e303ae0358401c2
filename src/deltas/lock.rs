//! The cluster's delta stream lock (`<prefix>deltas`), held under a renewed lease by the member that
//! streams, and the task owner both use.

use std::time::Duration;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// A task aborted when this is dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl AbortOnDrop {
    /// Waits for the task to end on its own.
    pub async fn finish(mut self) {
        let task = std::mem::replace(&mut self.0, tokio::spawn(async {}));
        let _ = task.await;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The cluster's stream, held by this member; released (unlocked, lease revoked) however it is dropped.
pub struct Held {
    client: etcd_client::Client,
    lease: i64,
    lock_key: Vec<u8>,
    /// Cancelled when the lease could not be renewed: another member may hold the stream.
    pub lost: CancellationToken,
    renewing: AbortOnDrop,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewing.0.abort();
        let (mut client, lease, key) = (self.client.clone(), self.lease, std::mem::take(&mut self.lock_key));
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), client.unlock(key)).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), client.lease_revoke(lease)).await;
        });
    }
}

/// Takes the cluster's stream lock (`<prefix>deltas`), waiting while another member holds it; `None`
/// if cancelled first. The lease is revoked on every way out.
pub async fn hold(
    client: &mut etcd_client::Client,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<Option<Held>> {
    let ttl = settings.coordination.lease_ttl;
    let lease = client.lease_grant(ttl.as_secs().max(2) as i64, None).await?.id();
    let lost = CancellationToken::new();
    let renewing = AbortOnDrop(tokio::spawn(crate::coordination::renew(
        client.clone(),
        lease,
        ttl,
        lost.clone(),
        "the delta stream",
    )));
    let mut held = Held { client: client.clone(), lease, lock_key: Vec::new(), lost, renewing };
    let name = format!("{}deltas", settings.coordination.prefix);
    let options = etcd_client::LockOptions::new().with_lease(lease);
    tokio::select! {
        locked = client.lock(name.as_str(), Some(options)) => {
            held.lock_key = locked?.key().to_vec();
            Ok(Some(held))
        }
        () = cancel.cancelled() => Ok(None),
    }
}
