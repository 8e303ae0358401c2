//! What etcd keeps in bbolt's bucket `key` (its MVCC store), as the structure checks read it: revision
//! bytes, the user key inside a record, and which keys are live at the end. Pure.

use std::collections::HashSet;

/// The user keys live at the end of bucket `key`, walked in revision order: a 128-bit digest of each,
/// added by a put and removed by a delete, so that memory holds the live keys alone (some 17 bytes each)
/// rather than every key the history names.
#[derive(Default)]
pub(super) struct LiveKeys(HashSet<u128>);

impl LiveKeys {
    pub(super) fn record(&mut self, key: u128, tombstone: bool) {
        if tombstone {
            self.0.remove(&key);
        } else {
            self.0.insert(key);
        }
    }

    pub(super) fn count(&self) -> u64 {
        self.0.len() as u64
    }
}

/// The main revision at the start of etcd's revision bytes (8 bytes big-endian, then `_` and the sub
/// revision); `None` if they are too short.
pub(super) fn main_revision(bytes: &[u8]) -> Option<i64> {
    bytes.get(..8).and_then(|b| b.try_into().ok()).map(i64::from_be_bytes)
}

pub(super) fn digest(bytes: &[u8]) -> u128 {
    use sha2::Digest;
    let sum = sha2::Sha256::digest(bytes);
    u128::from_le_bytes(sum[..16].try_into().unwrap_or_default())
}

/// Field 1 (`key`) of an `mvccpb.KeyValue` protobuf message; `None` if the bytes are not such a message.
pub(super) fn user_key(message: &[u8]) -> Option<&[u8]> {
    fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*at)?;
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    let mut at = 0;
    let mut key = None;
    while at < message.len() {
        let tag = varint(message, &mut at)?;
        let len = match tag & 7 {
            0 => {
                varint(message, &mut at)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(message, &mut at)?).ok()?,
            5 => 4,
            _ => return None,
        };
        let field = message.get(at..at.checked_add(len)?)?;
        if tag == (1 << 3 | 2) {
            key = Some(field);
        }
        at += len;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In revision order, the last record of a key decides: a put makes it live, a delete not; a
    /// delete of a key never seen (its puts compacted away) is nothing.
    #[test]
    fn live_keys_are_those_whose_last_record_is_a_put() {
        let mut live = LiveKeys::default();
        let (a, b, c) = (digest(b"a"), digest(b"b"), digest(b"c"));
        for (key, tombstone) in [(a, false), (b, false), (a, false), (b, true), (c, true), (c, false), (c, true)] {
            live.record(key, tombstone);
        }
        assert_eq!(live.count(), 1);
        live.record(b, false);
        assert_eq!(live.count(), 2);
    }
}
