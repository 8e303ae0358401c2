//! Cluster mode: the daemons of one etcd cluster take each schedule slot once, through etcd itself. A
//! member asks for a slot with etcd's lock service, under a lease it renews while it backs up: if it
//! dies, the lease lapses and the next member waiting takes the slot. The member that covered a slot
//! leaves a small record (`slot::Record`); the others read it and skip. Nothing else is written to etcd.

pub mod slot;

use std::time::Duration;

use chrono::{DateTime, Utc};
use etcd_client::{Client, Compare, CompareOp, GetOptions, LockOptions, Txn, TxnOp};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::CoordinationSettings;
use crate::errors::Cause;
use crate::etcd::Member;
use crate::manifest::BackupId;
use slot::{Keys, Record, Role};

/// Whether a slot record's backup is believed (it is in the shared bucket).
pub type Believe<'a> = dyn Fn(BackupId) -> futures::future::BoxFuture<'a, bool> + Send + Sync + 'a;

/// How a member stands toward one slot, once it asked.
pub enum Claim {
    /// The only voting member: it backs up on its own and writes nothing to etcd.
    Alone,
    /// This member holds the slot: back up, then `Held::finish`.
    Held(Box<Held>),
    /// Another member covered the slot.
    Covered(Record),
    /// Another member still holds the slot at its end (a long backup); this one leaves it.
    Busy,
    /// A learner never takes a slot (the record, if one is there yet).
    Learner(Option<Record>),
    /// The lock could not be had for want of quorum: back up this member, labelled an emergency.
    NoQuorum(String),
    /// The etcd user may not write the prefix: back up as in member mode, and say how to fix it.
    Denied(String),
    /// etcd answered but takes no writes (NOSPACE, too many requests): back up as in member mode, and
    /// say why. Not an emergency: the cluster has its quorum.
    Unusable(String),
}

/// A slot this member holds: the lock key and the lease it renews.
pub struct Held {
    client: Client,
    keys: Keys,
    slot: DateTime<Utc>,
    lease: i64,
    lock_key: Vec<u8>,
    renewing: JoinHandle<()>,
    /// The run's cancellation, and also cancelled when etcd says the lease is gone or it could not be
    /// renewed before its TTL ran out: another member may hold the slot by then.
    lost: CancellationToken,
}

impl Drop for Held {
    /// Without `finish` (a panic, a killed task), renewal stops and the lease lapses within its TTL.
    fn drop(&mut self) {
        self.renewing.abort();
    }
}

/// Asks for `slot`: at once for a healthy follower, after `leader_delay` for the leader, a member with
/// an alarm or one that lags, never for a learner. Waits for the lock until `until` (the next slot).
/// `cancel` stops the asking (the daemon is stopping); `run` is the run's own cancellation, which the
/// backup of a held slot stops on (`Held::cancel`), as on a lost lease. A record found for the slot
/// counts only if `believe` says so (its backup is in the shared bucket): one that does not is planted,
/// and this member takes the slot (its record then replaces the planted one).
pub async fn claim(
    member: &Member,
    settings: &CoordinationSettings,
    slot: DateTime<Utc>,
    until: DateTime<Utc>,
    cancel: &CancellationToken,
    run: &CancellationToken,
    believe: &Believe<'_>,
) -> Claim {
    let keys = Keys::new(&settings.prefix);
    let mut client = member.client();
    let mut role = slot::role(member.health().await);
    if role == Role::Leaderless {
        role = tokio::select! {
            role = leader_elected(member) => role,
            () = cancel.cancelled() => return Claim::Busy,
        };
        if role == Role::Leaderless {
            let waited = humantime::format_duration(ELECTION);
            return Claim::NoQuorum(format!("the member has known no leader for {waited}"));
        }
    }
    let Some(wait) = slot::wait_before_asking(role, settings.leader_delay) else {
        let record = read_record(&mut client, &keys, slot, true).await.ok().flatten();
        return Claim::Learner(record);
    };
    if role == Role::Alone {
        return Claim::Alone;
    }
    if let Role::Deferring(why) = role {
        tracing::info!(slot = %slot::slot_text(slot), why = why.as_str(), wait = %humantime::format_duration(wait), "leaving the slot to a follower first");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => return Claim::Busy,
        }
        match read_record(&mut client, &keys, slot, false).await {
            Ok(Some(record)) if believe(record.backup_id.clone()).await => return Claim::Covered(record),
            Ok(_) => {}
            Err(e) => return unavailable(e, &keys),
        }
    }
    let ttl = i64::try_from(settings.lease_ttl.as_secs().max(2)).unwrap_or(30);
    let lease = match tokio::time::timeout(QUESTION, client.lease_grant(ttl, None)).await {
        Ok(Ok(lease)) => lease.id(),
        Ok(Err(e)) => return unavailable(e, &keys),
        Err(_) => {
            return Claim::NoQuorum(format!("etcd granted no lease within {}", humantime::format_duration(QUESTION)));
        }
    };
    let lost = run.child_token();
    let renewing = tokio::spawn(renew(client.clone(), lease, settings.lease_ttl, lost.clone(), "the slot"));
    // Stops renewing whatever way this function ends before the slot is held (a dropped future too).
    let renewing = AbortOnDrop(Some(renewing));
    let left = (until - Utc::now()).to_std().unwrap_or(Duration::ZERO).max(Duration::from_secs(1));
    let name = keys.lock(slot);
    // The lock, or why not: the slot ended (or the daemon is stopping) with it still another member's,
    // or the cluster lost its leader meanwhile (the holder's lease cannot lapse then: an emergency).
    let locked = tokio::select! {
        locked = tokio::time::timeout(left, client.lock(name.as_str(), Some(LockOptions::new().with_lease(lease)))) => {
            locked.map_err(|_| Box::new(Claim::Busy)).and_then(|l| l.map_err(|e| Box::new(unavailable(e, &keys))))
        }
        () = cancel.cancelled() => Err(Box::new(Claim::Busy)),
        () = lost.cancelled() => Err(Box::new(Claim::NoQuorum("the lease asked for the slot was lost while waiting".into()))),
        () = leader_lost(member) => Err(Box::new(Claim::NoQuorum(format!(
            "the member lost its leader while waiting for the slot, and none was elected within {}",
            humantime::format_duration(ELECTION)
        )))),
    };
    let lock_key = match locked {
        Ok(locked) => locked.key().to_vec(),
        Err(why) => {
            drop(renewing);
            let _ = tokio::time::timeout(QUESTION, client.lease_revoke(lease)).await;
            return *why;
        }
    };
    let renewing = renewing.take();
    let held = Held { client, keys, slot, lease, lock_key, renewing, lost };
    let mut client = held.client.clone();
    match read_record(&mut client, &held.keys, slot, false).await {
        Ok(Some(record)) if believe(record.backup_id.clone()).await => {
            held.finish(None).await;
            Claim::Covered(record)
        }
        Ok(Some(record)) => {
            tracing::warn!(slot = %slot::slot_text(slot), backup_id = %record.backup_id, "the slot's record names a backup the bucket does not hold: this member takes the slot");
            Claim::Held(Box::new(held))
        }
        Ok(None) => Claim::Held(Box::new(held)),
        Err(e) => {
            held.finish(None).await;
            unavailable(e, &Keys::new(&settings.prefix))
        }
    }
}

/// How long one question to etcd may take before the cluster counts as without quorum.
const QUESTION: Duration = Duration::from_secs(5);

/// How long a member without a leader waits for one to be elected before the cluster counts as
/// without quorum (an election takes one or two of etcd's election timeouts, 1 s by default).
pub const ELECTION: Duration = Duration::from_secs(3);

/// Returns once the member has had no leader for `ELECTION` (checked every second); never otherwise.
async fn leader_lost(member: &Member) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if !member.knows_leader().await && leader_elected(member).await == Role::Leaderless {
            return;
        }
    }
}

/// The member's role once a leader is known, or `Leaderless` after `ELECTION`.
async fn leader_elected(member: &Member) -> Role {
    let deadline = tokio::time::Instant::now() + ELECTION;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let role = slot::role(member.health().await);
        if role != Role::Leaderless || tokio::time::Instant::now() >= deadline {
            return role;
        }
    }
}

/// A task aborted when this is dropped, unless taken.
struct AbortOnDrop(Option<JoinHandle<()>>);

impl AbortOnDrop {
    fn take(mut self) -> JoinHandle<()> {
        self.0.take().expect("taken once, by value")
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl Held {
    /// What the backup holding this slot stops on: the run's cancellation (`claim`'s `run`), or the
    /// slot's lease lost (another member may hold the slot by then).
    pub fn cancel(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Leaves the slot: writes `record` (the backup that covers it) while the lock is still this
    /// member's, trims old records, unlocks and revokes the lease. Without a record (the backup failed)
    /// the next member waiting takes the slot.
    pub async fn finish(self, record: Option<Record>) {
        let mut client = self.client.clone();
        if let Some(record) = record {
            let key = self.keys.record(self.slot);
            let txn = Txn::new()
                .when([Compare::version(self.lock_key.clone(), CompareOp::Greater, 0)])
                .and_then([TxnOp::put(key.as_str(), record.to_json(), None)]);
            match tokio::time::timeout(QUESTION, client.txn(txn)).await.unwrap_or_else(|_| Err(no_answer())) {
                Ok(done) if done.succeeded() => {
                    tracing::info!(slot = %slot::slot_text(self.slot), id = %record.backup_id, "slot recorded")
                }
                Ok(_) => {
                    tracing::warn!(slot = %slot::slot_text(self.slot), "the slot's lock lapsed before its record was written (lease_ttl too short?); another member may back up this slot too")
                }
                Err(e) => {
                    tracing::warn!(slot = %slot::slot_text(self.slot), error = %crate::errors::chain(&e), "cannot record the slot")
                }
            }
            let _ = tokio::time::timeout(QUESTION, trim(&mut client, &self.keys)).await;
        }
        let _ = tokio::time::timeout(QUESTION, client.unlock(self.lock_key.clone())).await;
        let _ = tokio::time::timeout(QUESTION, client.lease_revoke(self.lease)).await;
        self.renewing.abort();
    }
}

/// Records `record` for its slot unless one is there (a one-shot backup counts for its slot).
pub async fn record_unless_covered(member: &Member, settings: &CoordinationSettings, record: &Record) {
    let keys = Keys::new(&settings.prefix);
    let mut client = member.client();
    let key = keys.record(record.slot);
    let txn = Txn::new().when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key.as_str(),
        record.to_json(),
        None,
    )]);
    if let Err(e) = client.txn(txn).await {
        tracing::warn!(error = %crate::errors::chain(&e), "cannot record the slot this backup covers");
    }
    trim(&mut client, &keys).await;
}

/// What etcd said of the user's access to the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Granted,
    /// Refused, with the fix.
    Denied(String),
    /// No answer that says either (no quorum, a learner, a timeout), and why.
    Unknown(String),
}

/// Whether the etcd user may read and write the prefix, asked without writing: a transaction whose
/// condition never holds still has every key it names checked against the user's permissions.
pub async fn check_access(member: &Member, settings: &CoordinationSettings) -> Access {
    let keys = Keys::new(&settings.prefix);
    let mut client = member.client();
    let probe = keys.record(DateTime::<Utc>::UNIX_EPOCH);
    let txn = Txn::new().when([Compare::version(probe.as_str(), CompareOp::Less, 0)]).and_then([
        TxnOp::put(probe.as_str(), "", None),
        TxnOp::get(keys.prefix(), Some(GetOptions::new().with_prefix())),
    ]);
    match tokio::time::timeout(QUESTION, client.txn(txn)).await {
        Ok(Ok(_)) => Access::Granted,
        Ok(Err(e)) => match unavailable(e, &keys) {
            Claim::Denied(why) => Access::Denied(why),
            Claim::NoQuorum(why) | Claim::Unusable(why) => Access::Unknown(why),
            _ => Access::Unknown("no answer".into()),
        },
        Err(_) => Access::Unknown(format!("no answer within {}", humantime::format_duration(QUESTION))),
    }
}

/// The command that gives a role read and write on the prefix.
pub fn grant_command(settings: &CoordinationSettings) -> String {
    format!("etcdctl role grant-permission <role> readwrite --prefix=true {}", settings.prefix)
}

/// Renews `lease` (of `held`, as logs say it: "the slot", "the delta stream") every third of `ttl`
/// until aborted. A renewal that fails (a leader election, a broken stream) is tried again on a new
/// stream. `lost` is cancelled, and renewing ends, when etcd says the lease is gone, or when it could
/// not be renewed before its deadline while the cluster has a leader (which expires leases). Without a
/// leader no lease expires and no other member can take what it holds: the work goes on.
pub(crate) async fn renew(mut client: Client, lease: i64, ttl: Duration, lost: CancellationToken, held: &'static str) {
    let mut deadline = tokio::time::Instant::now() + ttl;
    loop {
        match tokio::time::timeout(ttl / 3, client.lease_keep_alive(lease)).await {
            Ok(Ok((mut keeper, mut answers))) => loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(ttl / 3, answers.message()).await {
                    Ok(Ok(Some(answer))) if answer.ttl() > 0 => {
                        deadline = tokio::time::Instant::now() + Duration::from_secs(answer.ttl().unsigned_abs());
                    }
                    Ok(Ok(Some(_))) => return lease_gone(lease, &lost, held),
                    _ => break,
                }
                tokio::time::sleep(ttl / 3).await;
            },
            // etcd-client's answer when etcd no longer knows the lease.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => return lease_gone(lease, &lost, held),
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            let leaderless =
                matches!(tokio::time::timeout(ttl / 3, client.status()).await, Ok(Ok(s)) if s.leader() == 0);
            if !leaderless {
                tracing::error!(
                    lease,
                    "the lease of {held} could not be renewed in time: stopping, another member may hold {held}"
                );
                lost.cancel();
                return;
            }
            // No leader, so no lease expires: keep backing up, and keep trying.
            deadline = tokio::time::Instant::now() + ttl;
        }
        tokio::time::sleep((ttl / 10).min(Duration::from_millis(500))).await;
    }
}

fn lease_gone(lease: i64, lost: &CancellationToken, held: &str) {
    tracing::error!(lease, "etcd says the lease of {held} is gone: stopping, another member may hold {held}");
    lost.cancel();
}

/// A timeout of a question to etcd, as etcd's own deadline error (so that it reads as no quorum).
fn no_answer() -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(format!(
        "no answer within {}",
        humantime::format_duration(QUESTION)
    )))
}

/// The record of `slot`, checked (`Record::parse`); `serializable` for a learner.
async fn read_record(
    client: &mut Client,
    keys: &Keys,
    slot: DateTime<Utc>,
    serializable: bool,
) -> Result<Option<Record>, etcd_client::Error> {
    let options = if serializable { GetOptions::new().with_serializable() } else { GetOptions::new() };
    let found = tokio::time::timeout(QUESTION, client.get(keys.record(slot), Some(options)))
        .await
        .map_err(|_| no_answer())??;
    let Some(kv) = found.kvs().first() else { return Ok(None) };
    match Record::parse(kv.value(), slot, Utc::now()) {
        Ok(record) => Ok(Some(record)),
        Err(why) => {
            tracing::warn!(key = %keys.record(slot), %why, "ignoring a slot record that does not check out");
            Ok(None)
        }
    }
}

/// Deletes all but the newest `slot::KEEP_RECORDS` records.
async fn trim(client: &mut Client, keys: &Keys) {
    let Ok(found) = client.get(keys.records(), Some(GetOptions::new().with_prefix().with_keys_only())).await else {
        return;
    };
    let names: Vec<Vec<u8>> = found.kvs().iter().map(|kv| kv.key().to_vec()).collect();
    for key in slot::stale_records(keys, &names, slot::KEEP_RECORDS, Utc::now()) {
        let _ = client.delete(key, None).await;
    }
}

/// What an etcd error means for a claim: the user may not use the prefix, etcd refuses writes, or the
/// cluster cannot decide (no answer).
fn unavailable(e: etcd_client::Error, keys: &Keys) -> Claim {
    let chain = crate::errors::chain(&e);
    let exhausted = matches!(&e, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::ResourceExhausted);
    if crate::etcd::cause(&e) == Cause::Auth {
        Claim::Denied(format!(
            "{chain}: the etcd user needs read and write on the prefix: etcdctl role grant-permission <role> readwrite --prefix=true {}",
            keys.prefix()
        ))
    } else if exhausted {
        Claim::Unusable(format!(
            "{chain}: etcd takes no writes; if its NOSPACE alarm is raised: compact, `etcdctl defrag`, then `etcdctl alarm disarm`"
        ))
    } else {
        Claim::NoQuorum(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd refusing the prefix names the fix; a full etcd takes no writes but has its quorum; no
    /// answer counts as a cluster that cannot decide.
    #[test]
    fn a_refusal_names_the_grant_a_full_etcd_is_unusable_and_no_answer_is_no_quorum() {
        let keys = Keys::new("/etcd-backupd/prod/");
        let denied = etcd_client::Error::GRpcStatus(tonic::Status::new(
            tonic::Code::PermissionDenied,
            "etcdserver: permission denied",
        ));
        match unavailable(denied, &keys) {
            Claim::Denied(why) => assert!(
                why.contains("etcdctl role grant-permission <role> readwrite --prefix=true /etcd-backupd/prod/"),
                "{why}"
            ),
            _ => panic!("a refusal is Denied"),
        }
        let timeout = etcd_client::Error::GRpcStatus(tonic::Status::new(
            tonic::Code::Unavailable,
            "etcdserver: request timed out",
        ));
        assert!(matches!(unavailable(timeout, &keys), Claim::NoQuorum(_)));
        assert!(matches!(unavailable(no_answer(), &keys), Claim::NoQuorum(_)), "our own timeout is no quorum");
        let corrupt =
            etcd_client::Error::GRpcStatus(tonic::Status::new(tonic::Code::DataLoss, "etcdserver: corrupt cluster"));
        assert!(matches!(unavailable(corrupt, &keys), Claim::NoQuorum(_)), "only a full etcd is told to defrag");
        let nospace = etcd_client::Error::GRpcStatus(tonic::Status::new(
            tonic::Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ));
        match unavailable(nospace, &keys) {
            Claim::Unusable(why) => assert!(why.contains("etcdctl alarm disarm"), "{why}"),
            _ => panic!("NOSPACE is not a lost quorum"),
        }
    }
}
