//! A delta segment's body: the cluster's changes between two revisions, every event of each revision in
//! order, as etcd's watch delivered them. Each event is etcd's own `mvccpb.Event` protobuf (kv: key,
//! value, create and mod revision, version, lease), so any protobuf reader can open a decrypted segment.
//! Pure: bytes in, checked revisions out; what is read back is untrusted and checked whole.
//!
//! ```text
//! "etcd-backupd delta 1\n"
//! per revision: varint revision, varint received (ms since the epoch), varint event count,
//!               then each event, length-delimited; varint lease count, then per lease varint id and
//!               varint TTL (seconds)
//! ```
//!
//! The leases are those the revision's puts attach keys to that the streamer had not seen before, with
//! the TTL etcd granted them: a replay grants them again (a lease grant makes no revision).

use chrono::{DateTime, Utc};
use prost::Message;
use prost::encoding::{decode_varint, encode_varint};

/// Revisions past this are refused (a chain adds one to its last, and never overflows).
pub const MAX_REVISION: i64 = 1 << 62;

/// The first bytes of every segment body.
pub const MAGIC: &[u8] = b"etcd-backupd delta 1\n";

/// etcd's `mvccpb.Event`, without `prev_kv` (never asked for).
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    /// 0: put, 1: delete.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
}

/// etcd's `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    #[prost(int64, tag = "4")]
    pub version: i64,
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

pub const PUT: i32 = 0;
pub const DELETE: i32 = 1;

impl Event {
    pub fn put(key: &[u8], value: &[u8], create_revision: i64, mod_revision: i64, version: i64, lease: i64) -> Self {
        let kv = KeyValue { key: key.to_vec(), create_revision, mod_revision, version, value: value.to_vec(), lease };
        Event { kind: PUT, kv: Some(kv) }
    }

    pub fn delete(key: &[u8], mod_revision: i64) -> Self {
        let kv = KeyValue { key: key.to_vec(), mod_revision, ..KeyValue::default() };
        Event { kind: DELETE, kv: Some(kv) }
    }

    pub fn is_put(&self) -> bool {
        self.kind == PUT
    }

    /// The key-value as the event carries it; every checked event has one.
    pub fn kv(&self) -> &KeyValue {
        static NONE: KeyValue =
            KeyValue { key: Vec::new(), create_revision: 0, mod_revision: 0, version: 0, value: Vec::new(), lease: 0 };
        self.kv.as_ref().unwrap_or(&NONE)
    }
}

/// One revision: every change it made, in etcd's order, and when the streamer received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Revision {
    pub revision: i64,
    pub received: DateTime<Utc>,
    pub events: Vec<Event>,
    /// Leases its puts use that no earlier revision of the segment's chain named: id and granted TTL.
    pub leases: Vec<Lease>,
}

/// A lease as it was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// Seconds.
    pub ttl: i64,
}

/// What is wrong with a segment body, or with a revision handed to be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("it does not start as a delta segment does")]
    NotASegment,
    #[error("it ends inside revision {after}'s record")]
    Truncated { after: i64 },
    #[error("revision {found} follows revision {previous}: every revision in between is missing")]
    Gap { previous: i64, found: i64 },
    #[error("revision {revision} holds no change")]
    Empty { revision: i64 },
    #[error("revision {revision}: {why}")]
    BadEvent { revision: i64, why: String },
    #[error("revision {revision} was received before the revision ahead of it")]
    TimeBackwards { revision: i64 },
    #[error("it holds no revision")]
    NoRevision,
}

/// What a segment holds, counted as it was written or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub first_revision: i64,
    pub last_revision: i64,
    pub revisions: u64,
    pub events: u64,
    pub first_received: DateTime<Utc>,
    pub last_received: DateTime<Utc>,
}

/// Checks one event of `revision` as etcd makes them: a key; for a put, a version from 1 and a create
/// revision no later than the put (equal to it for a new key); for a delete, nothing else.
pub fn check_event(revision: i64, event: &Event) -> Result<(), SegmentError> {
    let bad = |why: &str| Err(SegmentError::BadEvent { revision, why: why.to_string() });
    let Some(kv) = &event.kv else { return bad("an event without a key") };
    if kv.key.is_empty() {
        return bad("an event with an empty key");
    }
    if kv.mod_revision != revision {
        return bad(&format!("an event of revision {}", kv.mod_revision));
    }
    match event.kind {
        PUT => {
            if kv.version < 1 || kv.create_revision < 1 || kv.create_revision > revision || kv.lease < 0 {
                return bad("a put with an impossible version, create revision or lease");
            }
            if (kv.version == 1) != (kv.create_revision == revision) {
                return bad("a put whose version and create revision disagree");
            }
            Ok(())
        }
        DELETE => {
            if kv.version != 0 || kv.create_revision != 0 || kv.lease != 0 || !kv.value.is_empty() {
                return bad("a delete that carries a value");
            }
            Ok(())
        }
        _ => bad("an event that is neither a put nor a delete"),
    }
}

/// The revisions a watch response's events make, in order: etcd sends every event of a revision in one
/// response, ordered by revision. Leases are left for the caller to fill in.
pub fn group(events: impl IntoIterator<Item = Event>, received: DateTime<Utc>) -> Vec<Revision> {
    let mut out: Vec<Revision> = Vec::new();
    for event in events {
        let revision = event.kv().mod_revision;
        match out.last_mut() {
            Some(last) if last.revision == revision => last.events.push(event),
            _ => out.push(Revision { revision, received, events: vec![event], leases: Vec::new() }),
        }
    }
    out
}

/// Checks every event of `revision`, and that each lease it records is one of its puts' and granted
/// for a while.
fn check_revision(revision: &Revision) -> Result<(), SegmentError> {
    for event in &revision.events {
        check_event(revision.revision, event)?;
    }
    for (i, lease) in revision.leases.iter().enumerate() {
        let used = revision.events.iter().any(|e| e.is_put() && e.kv().lease == lease.id);
        if lease.id < 1 || lease.ttl < 1 || !used || revision.leases[..i].iter().any(|l| l.id == lease.id) {
            return Err(SegmentError::BadEvent {
                revision: revision.revision,
                why: format!("a lease {:x} that is not one of its puts', or not granted for a while", lease.id),
            });
        }
    }
    Ok(())
}

/// A segment body being written: revisions appended in order, each checked; `finish` hands the bytes.
#[derive(Debug)]
pub struct Writer {
    body: Vec<u8>,
    summary: Option<Summary>,
    /// The revision the first one pushed must be, if known.
    first: Option<i64>,
}

impl Default for Writer {
    fn default() -> Self {
        Writer { body: MAGIC.to_vec(), summary: None, first: None }
    }
}

impl Writer {
    /// A body whose first revision must be `first` (`Gap` otherwise): the one after its chain's last.
    pub fn starting_at(first: i64) -> Self {
        Writer { first: Some(first), ..Writer::default() }
    }

    /// Appends `revision`, which must follow the last one appended (`Gap` otherwise, the body unchanged).
    pub fn push(&mut self, revision: &Revision) -> Result<(), SegmentError> {
        if let (None, Some(first)) = (&self.summary, self.first)
            && revision.revision != first
        {
            return Err(SegmentError::Gap { previous: first - 1, found: revision.revision });
        }
        let next = Summary::after(self.summary.as_ref(), revision)?;
        check_revision(revision)?;
        encode_varint(revision.revision as u64, &mut self.body);
        encode_varint(millis(revision.received), &mut self.body);
        encode_varint(revision.events.len() as u64, &mut self.body);
        for event in &revision.events {
            // A Vec grows as needed: encoding into it cannot fail.
            let _ = event.encode_length_delimited(&mut self.body);
        }
        encode_varint(revision.leases.len() as u64, &mut self.body);
        for lease in &revision.leases {
            encode_varint(lease.id as u64, &mut self.body);
            encode_varint(lease.ttl as u64, &mut self.body);
        }
        self.summary = Some(next);
        Ok(())
    }

    /// Bytes written so far, the header included.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.summary.is_none()
    }

    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    /// The body and what it holds; `None` if no revision was appended.
    pub fn finish(self) -> Option<(Vec<u8>, Summary)> {
        Some((self.body, self.summary?))
    }
}

impl Summary {
    /// The summary once `revision` is added to `before` (the segment so far, if any): `revision` must be
    /// the next one, hold a change, and not have been received earlier.
    fn after(before: Option<&Summary>, revision: &Revision) -> Result<Summary, SegmentError> {
        let r = revision.revision;
        // A body records times to the millisecond; what it says it holds is what it will read back as.
        let received =
            DateTime::from_timestamp_millis(revision.received.timestamp_millis()).unwrap_or(revision.received);
        if revision.events.is_empty() {
            return Err(SegmentError::Empty { revision: r });
        }
        if !(1..=MAX_REVISION).contains(&r) {
            return Err(SegmentError::BadEvent { revision: r, why: "a revision below 1 or past 2^62".into() });
        }
        let events = revision.events.len() as u64;
        Ok(match before {
            None => Summary {
                first_revision: r,
                last_revision: r,
                revisions: 1,
                events,
                first_received: received,
                last_received: received,
            },
            Some(s) if r != s.last_revision + 1 => {
                return Err(SegmentError::Gap { previous: s.last_revision, found: r });
            }
            Some(s) if received < s.last_received => return Err(SegmentError::TimeBackwards { revision: r }),
            Some(s) => Summary {
                last_revision: r,
                revisions: s.revisions + 1,
                events: s.events + events,
                last_received: received,
                ..s.clone()
            },
        })
    }
}

fn millis(time: DateTime<Utc>) -> u64 {
    u64::try_from(time.timestamp_millis()).unwrap_or(0)
}

/// Reads a whole segment body back, checking every revision and event; `Err` names the first fault.
pub fn read(body: &[u8]) -> Result<(Vec<Revision>, Summary), SegmentError> {
    let mut rest = body.strip_prefix(MAGIC).ok_or(SegmentError::NotASegment)?;
    let mut revisions: Vec<Revision> = Vec::new();
    let mut summary: Option<Summary> = None;
    while !rest.is_empty() {
        let after = summary.as_ref().map_or(0, |s| s.last_revision);
        let truncated = |_| SegmentError::Truncated { after };
        let revision = i64::try_from(decode_varint(&mut rest).map_err(truncated)?)
            .map_err(|_| SegmentError::BadEvent { revision: after + 1, why: "a revision past 2^63".into() })?;
        let received = decode_varint(&mut rest).map_err(truncated)?;
        let received = i64::try_from(received)
            .ok()
            .and_then(DateTime::from_timestamp_millis)
            .ok_or_else(|| SegmentError::BadEvent { revision, why: "a time that cannot be".into() })?;
        let count = decode_varint(&mut rest).map_err(truncated)?;
        // Each event takes two bytes at least: a count beyond that is a lie, not an allocation.
        if count > rest.len() as u64 / 2 {
            return Err(SegmentError::Truncated { after });
        }
        let mut events = Vec::with_capacity(count.min(1024) as usize);
        for _ in 0..count {
            let event = Event::decode_length_delimited(&mut rest).map_err(truncated)?;
            events.push(event);
        }
        let leases = decode_varint(&mut rest).map_err(truncated)?;
        if leases > rest.len() as u64 / 2 {
            return Err(SegmentError::Truncated { after });
        }
        let mut lease_list = Vec::with_capacity(leases.min(1024) as usize);
        for _ in 0..leases {
            let id = decode_varint(&mut rest).map_err(truncated)?;
            let ttl = decode_varint(&mut rest).map_err(truncated)?;
            let (Ok(id), Ok(ttl)) = (i64::try_from(id), i64::try_from(ttl)) else {
                return Err(SegmentError::BadEvent { revision, why: "a lease past 2^63".into() });
            };
            lease_list.push(Lease { id, ttl });
        }
        let revision = Revision { revision, received, events, leases: lease_list };
        let next = Summary::after(summary.as_ref(), &revision)?;
        check_revision(&revision)?;
        summary = Some(next);
        revisions.push(revision);
    }
    Ok((revisions, summary.ok_or(SegmentError::NoRevision)?))
}

#[cfg(test)]
mod tests;
