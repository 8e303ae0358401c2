//! Cluster mode's part of a run: ask etcd for the schedule slot (or learn why not: a learner, no
//! leader, a password login that cannot be had), believe a slot record only when the shared bucket holds
//! its backup, and record the slot after the backup.

use std::time::Duration;

use chrono::Utc;

use super::{BackupRequest, Outcome};
use crate::config::Settings;

/// Whether this run goes ahead (holding the slot, if cluster mode gave it one; an emergency when the
/// cluster has no quorum, with the member already connected: without quorum its revision cannot move)
/// or leaves the slot.
pub(super) enum Turn {
    Go(Option<Box<crate::coordination::Held>>, bool, Option<Box<crate::etcd::Member>>),
    Leave(Outcome),
}

/// Cluster mode's part of a daemon's run: ask for the slot. A member that cannot be reached goes ahead
/// (its backup fails, and is retried, as in member mode).
pub(super) async fn coordinate(settings: &Settings, request: &BackupRequest) -> Turn {
    use crate::coordination::{Claim, claim};
    let coordination = &settings.coordination;
    let (Some(slot), Some(etcd)) = (request.slot, &settings.etcd) else { return Turn::Go(None, false, None) };
    if !slot.claim || coordination.mode != crate::config::CoordinationMode::Cluster {
        return Turn::Go(None, false, None);
    }
    let at = crate::coordination::slot::slot_text(slot.at);
    let member = match connect_for_slot(etcd, &at).await {
        Ok(member) => member,
        Err(turn) => return turn,
    };
    let believe = |id| -> futures::future::BoxFuture<'_, bool> { Box::pin(in_the_bucket(settings, id)) };
    match claim(&member, coordination, slot.at, slot.until, &request.stopping, &request.cancel, &believe).await {
        Claim::Alone => Turn::Go(None, false, None),
        Claim::Held(held) => {
            tracing::info!(slot = %at, "this member takes the slot");
            Turn::Go(Some(held), false, None)
        }
        Claim::Covered(record) => Turn::Leave(Outcome::Covered(record)),
        Claim::Busy if request.stopping.is_cancelled() => {
            Turn::Leave(Outcome::Skipped(format!("slot {at}: the daemon is stopping")))
        }
        Claim::Busy => Turn::Leave(Outcome::Skipped(format!("slot {at}: another member still holds it"))),
        Claim::Learner(record) => Turn::Leave(Outcome::Learner(record)),
        Claim::NoQuorum(why) => {
            tracing::warn!(slot = %at, %why, "the cluster has no quorum: taking an emergency backup of this member");
            Turn::Go(None, true, Some(Box::new(member)))
        }
        Claim::Denied(why) | Claim::Unusable(why) => {
            tracing::warn!(slot = %at, %why, "cluster mode is not possible; backing up as in member mode");
            Turn::Go(None, false, None)
        }
    }
}

/// Whether a slot record's backup `id` may be believed: unless the shared bucket says it does not hold
/// it (a planted record names a backup nobody took). Without S3, or when S3 cannot be asked, there is
/// nothing shared to check against (each member's local folder is its own): the record is believed.
async fn in_the_bucket(settings: &Settings, id: crate::manifest::BackupId) -> bool {
    let Some(s3) = &settings.s3 else { return true };
    match crate::store::s3::S3Store::new(s3, &settings.cluster).await {
        Ok(store) => store.manifest_found(&id).await.unwrap_or(true),
        Err(_) => true,
    }
}

/// The member, connected for cluster mode; or what the run does without it. A password login is refused
/// to a learner and needs a leader: the member is asked why, without a login, and an election is waited
/// out (up to 3 s) before the run fails. Any other failure goes ahead (the backup fails, and is retried,
/// as in member mode).
async fn connect_for_slot(etcd: &crate::config::EtcdSettings, at: &str) -> Result<crate::etcd::Member, Turn> {
    let mut waited = Duration::ZERO;
    loop {
        let failed = match crate::etcd::connect(etcd).await {
            Ok(member) => return Ok(member),
            Err(e) => e,
        };
        if etcd.auth.is_none() {
            return Err(Turn::Go(None, false, None));
        }
        match crate::etcd::status_without_login(etcd).await {
            Some((true, _)) => return Err(Turn::Leave(Outcome::Learner(None))),
            Some((false, false)) if waited < crate::coordination::ELECTION => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                waited += Duration::from_millis(500);
            }
            Some((false, false)) => {
                return Err(Turn::Leave(Outcome::Failed(crate::errors::classified(
                    crate::errors::Cause::Unreachable,
                    format!(
                        "slot {at}: etcd has had no leader for {}, and its password login (etcd.username) needs \
                         one, so no emergency backup can be taken; log in with a client certificate (etcd.cert, \
                         its CN the user) to back up a cluster that has lost its quorum ({failed:#})",
                        humantime::format_duration(crate::coordination::ELECTION)
                    ),
                ))));
            }
            _ => return Err(Turn::Go(None, false, None)),
        }
    }
}

/// After a run that held its slot: the record of the backup that covers it (none if it failed: the next
/// member takes the slot). A one-shot backup in cluster mode counts for its slot if no member covered it.
pub(super) async fn finish_slot(
    settings: &Settings,
    request: &BackupRequest,
    held: Option<Box<crate::coordination::Held>>,
    outcome: &Outcome,
) {
    let (Some(slot), Outcome::Committed(report)) = (request.slot, outcome) else {
        if let Some(held) = held {
            held.finish(None).await;
        }
        return;
    };
    let m = &report.manifest;
    let record = crate::coordination::slot::Record {
        slot: slot.at,
        member_id: m.etcd.member_id.to_ascii_lowercase(),
        member_name: m.etcd.member_name.clone(),
        backup_id: m.id.clone(),
        revision: m.etcd.revision,
        time: Utc::now(),
    };
    match held {
        Some(held) => held.finish(Some(record)).await,
        None if !slot.claim && settings.coordination.mode == crate::config::CoordinationMode::Cluster => {
            if let Some(Ok(member)) = match &settings.etcd {
                Some(etcd) => Some(crate::etcd::connect(etcd).await),
                None => None,
            } && member.voters.is_some_and(|v| v > 1)
            {
                crate::coordination::record_unless_covered(&member, &settings.coordination, &record).await;
            }
        }
        None => {}
    }
}
