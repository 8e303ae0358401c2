//! Cluster mode's decisions, without I/O: the keys of a slot under the prefix, the record the member
//! that covered a slot leaves (read back as untrusted input), which member may take a slot and after
//! how long, and which old records go. Pure.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::manifest::BackupId;

/// A member this many revisions behind the cluster lags (the two are read one after the other, so a
/// busy cluster moves on between them).
pub const LAG_TOLERANCE: i64 = 1000;

/// How a slot is written in keys: `20261122T060000Z`, so that keys sort by time.
const SLOT_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// The largest record read back; anything bigger is not ours.
pub const MAX_RECORD_BYTES: usize = 4096;

/// Records kept under the prefix: the newest this many slots'; older ones are deleted by the member that
/// writes a new one.
pub const KEEP_RECORDS: usize = 64;

/// A slot's text in keys and messages.
pub fn slot_text(slot: DateTime<Utc>) -> String {
    slot.format(SLOT_FORMAT).to_string()
}

/// The keys of one cluster's coordination, all under its prefix (`/etcd-backupd/<cluster>/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// `prefix` as configured (validated: absolute, ends in `/`).
    pub fn new(prefix: &str) -> Keys {
        Keys { prefix: prefix.to_string() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lock (etcd's lock service) that the member taking `slot` holds while it backs up.
    pub fn lock(&self, slot: DateTime<Utc>) -> String {
        format!("{}lock/{}", self.prefix, slot_text(slot))
    }

    /// Where the record of `slot` is kept.
    pub fn record(&self, slot: DateTime<Utc>) -> String {
        format!("{}{}", self.records(), slot_text(slot))
    }

    /// The folder of every record.
    pub fn records(&self) -> String {
        format!("{}slots/", self.prefix)
    }

    /// The slot a record key names; `None` for a key that is not a record key of this prefix.
    pub fn slot_of(&self, key: &[u8]) -> Option<DateTime<Utc>> {
        let text = std::str::from_utf8(key).ok()?.strip_prefix(&self.records())?;
        NaiveDateTime::parse_from_str(text, SLOT_FORMAT).ok().map(|t| t.and_utc()).filter(|t| slot_text(*t) == text)
    }
}

/// What the member that covered a slot wrote: which member, which backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub slot: DateTime<Utc>,
    /// etcd's member id, hex.
    pub member_id: String,
    pub member_name: String,
    pub backup_id: BackupId,
    pub revision: i64,
    /// When the backup was committed.
    pub time: DateTime<Utc>,
}

impl Record {
    /// Reads a record found at the key of `slot`, at `now`. Anyone with write access to the prefix can
    /// put anything there: it must be small, name this slot, name a backup of the member it names, and
    /// that backup and the record must be dated not before the slot and not after now (`CLOCK_SKEW`
    /// either side), so that a record planted ahead of its slot, or one that keeps freshness green
    /// forever, is refused.
    pub fn parse(bytes: &[u8], slot: DateTime<Utc>, now: DateTime<Utc>) -> Result<Record, String> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(format!("the record is {} bytes, more than a record ever is", bytes.len()));
        }
        let r: Record = serde_json::from_slice(bytes).map_err(|e| format!("not a slot record: {e}"))?;
        if r.slot != slot {
            return Err(format!("the record says slot {} but is kept as {}", slot_text(r.slot), slot_text(slot)));
        }
        if r.member_id.is_empty() || r.member_id.len() > 16 || !r.member_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the record's member id is not an etcd member id".to_string());
        }
        if r.backup_id.member() != r.member_id.to_ascii_lowercase() {
            return Err(format!("the record's backup {} is not of member {}", r.backup_id, r.member_id));
        }
        if r.member_name.len() > 256 || r.member_name.chars().any(char::is_control) {
            return Err("the record's member name is not a member name".to_string());
        }
        let (earliest, latest) = (slot - CLOCK_SKEW, now + CLOCK_SKEW);
        let taken = r.backup_id.created();
        if taken < earliest || taken > latest {
            return Err(format!("the record's backup {} was not taken in slot {}", r.backup_id, slot_text(slot)));
        }
        if r.time < earliest || r.time > latest {
            return Err(format!("the record is dated {}, outside its slot {} and now", r.time, slot_text(slot)));
        }
        Ok(r)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What a member knows of itself and its cluster when a slot comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    pub is_learner: bool,
    pub is_leader: bool,
    /// The member knows a leader (etcd's status names one); without one the cluster has no quorum,
    /// or is electing.
    pub has_leader: bool,
    /// An alarm (NOSPACE, CORRUPT) is active.
    pub alarm: bool,
    /// This member's revision, and the cluster's as a linearizable read sees it just after.
    pub revision: i64,
    pub cluster_revision: i64,
    /// Voting members (learners do not count), when the member list could be read.
    pub voters: Option<usize>,
}

/// How a member stands toward a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The only voting member: no one to coordinate with; it backs up on its own, writing nothing.
    Alone,
    /// A healthy, caught-up follower: asks for the slot at once.
    Follower,
    /// Asks only after `leader_delay`, when no follower took the slot: the leader (it can least afford
    /// the load), a member with an alarm, one that lags.
    Deferring(Defer),
    /// Learners never take a slot (etcd serves them only Status and serializable reads).
    Learner,
    /// The member knows no leader: if none is elected within a moment, the cluster has no quorum and
    /// the member takes an emergency backup at once, rather than waiting on questions etcd cannot answer.
    Leaderless,
}

/// Why a member defers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defer {
    Leader,
    Alarm,
    Lagging,
}

impl Defer {
    pub fn as_str(self) -> &'static str {
        match self {
            Defer::Leader => "it is the leader",
            Defer::Alarm => "it has an active alarm",
            Defer::Lagging => "its revision lags the cluster's",
        }
    }
}

/// How a member stands toward a slot, from what it knows of itself.
pub fn role(h: Health) -> Role {
    if h.is_learner {
        Role::Learner
    } else if h.voters.is_some_and(|v| v <= 1) {
        Role::Alone
    } else if !h.has_leader {
        Role::Leaderless
    } else if h.alarm {
        Role::Deferring(Defer::Alarm)
    } else if h.cluster_revision - h.revision > LAG_TOLERANCE {
        Role::Deferring(Defer::Lagging)
    } else if h.is_leader {
        Role::Deferring(Defer::Leader)
    } else {
        Role::Follower
    }
}

/// How long a member waits before it asks for a slot; `None`: it never does.
pub fn wait_before_asking(role: Role, leader_delay: Duration) -> Option<Duration> {
    match role {
        Role::Alone | Role::Follower | Role::Leaderless => Some(Duration::ZERO),
        Role::Deferring(_) => Some(leader_delay),
        Role::Learner => None,
    }
}

/// How far the members' clocks may disagree: a record, or the backup it names, dated this far outside
/// its slot is still believed.
pub const CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// The record keys to delete at `now` so that only the newest `keep` slots' remain: records of slots
/// that have not begun (no member writes those; planted, they would push the real ones out) go first.
/// Keys that are not records of this prefix are never touched.
pub fn stale_records(keys: &Keys, found: &[Vec<u8>], keep: usize, now: DateTime<Utc>) -> Vec<Vec<u8>> {
    let (future, mut slots): (Vec<_>, Vec<_>) =
        found.iter().filter_map(|k| keys.slot_of(k).map(|s| (s, k))).partition(|(slot, _)| *slot > now + CLOCK_SKEW);
    slots.sort();
    let stale = slots.len().saturating_sub(keep);
    future.into_iter().chain(slots.into_iter().take(stale)).map(|(_, k)| k.clone()).collect()
}

#[cfg(test)]
mod tests;
