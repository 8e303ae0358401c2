//! What the streaming check keeps of one page of a bbolt file: enough to walk the tree and compute the
//! status once the whole file has passed, without the page's bytes. A page's place in the tree (which
//! bucket it belongs to, whether it is reachable at all) is only known at the end, so a summary holds
//! what each possible place needs. Summaries are encoded into a spill (the state dir's unnamed scratch
//! file; the encoding is `spill`'s), so memory does not grow with the database. Pure.

use super::bbolt::{BRANCH, BUCKET_LEAF, ELEMENT, Elements, LEAF, PAGE_HEADER, u16_at, u64_at};
use super::mvcc::{digest, main_revision, user_key};

/// Of a plain key where a bucket belongs, this much is kept for the message.
const SHOWN_KEY: usize = 64;

/// One page (or an inline bucket's page), summarized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Summary {
    /// Damage that only matters if the page is reachable.
    Bad(String),
    /// A page larger than the streaming check holds: its limit, not damage (if the page is reachable).
    TooLarge(String),
    /// A page (its id, its type) of another type (meta, freelist, garbage) where the tree may point.
    Other(u64, u16),
    /// A branch page's children, in order.
    Branch(Vec<u64>),
    Leaf(Leaf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Leaf {
    /// Elements in the page: keys, as etcd's tools count them inside a bucket.
    pub count: u64,
    /// CRC-32C over each key and (unless it is a nested bucket) its value, and the bytes it covered: the
    /// page's part of the status hash if it belongs to a bucket.
    pub crc: u32,
    pub len: u64,
    /// If the page is a leaf of the top level: its buckets, or (the start of) the first plain key, which
    /// is damage there. An inline bucket's page is never at the top level: empty.
    pub buckets: Result<Vec<(Vec<u8>, Bucket)>, Vec<u8>>,
    /// If the page belongs to bucket `key`: its records, or why they are not etcd records.
    pub records: Result<Vec<Record>, String>,
    /// If the page belongs to bucket `meta`: `finishedCompactRev`, if it is here.
    pub compact: Option<Result<i64, String>>,
}

/// A bucket named in a leaf of the top level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Bucket {
    Root(u64),
    Inline(Box<Summary>),
    Bad(String),
}

/// One record of bucket `key`: a digest of its user key, its main revision, and whether it deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Record {
    pub key: u128,
    pub revision: i64,
    pub tombstone: bool,
}

/// Summarizes a page from its bytes (with its overflow pages), or (`top` false) an inline bucket's
/// page, which is only ever walked as a bucket's content: its nested buckets are not summarized, so an
/// inline page never leads to another.
pub(super) fn summarize(page: &[u8], top: bool) -> Summary {
    let id = u64_at(page, 0);
    let flags = u16_at(page, 8);
    let count = usize::from(u16_at(page, 10));
    if PAGE_HEADER + count * ELEMENT > page.len() {
        return Summary::Bad(format!("page {id} has more elements than fit in it"));
    }
    let mut elements = Elements::new(page, id, count);
    match flags {
        BRANCH => {
            let mut children = Vec::with_capacity(count);
            for i in 0..count {
                match elements.branch(i) {
                    Ok(child) => children.push(child),
                    Err(why) => return Summary::Bad(why),
                }
            }
            Summary::Branch(children)
        }
        LEAF => {
            let mut leaf = Leaf {
                count: count as u64,
                crc: 0,
                len: 0,
                buckets: if top { Ok(Vec::new()) } else { Err(Vec::new()) },
                records: Ok(Vec::new()),
                compact: None,
            };
            for i in 0..count {
                match elements.leaf(i) {
                    Ok((eflags, key, value)) => leaf.add(key, value, eflags),
                    Err(why) => return Summary::Bad(why),
                }
            }
            Summary::Leaf(leaf)
        }
        other => Summary::Other(id, other),
    }
}

impl Leaf {
    fn add(&mut self, key: &[u8], value: &[u8], flags: u32) {
        self.crc = crc32c::crc32c_append(self.crc, key);
        self.len += key.len() as u64;
        let nested = flags & BUCKET_LEAF != 0;
        if !nested {
            self.crc = crc32c::crc32c_append(self.crc, value);
            self.len += value.len() as u64;
        }
        if let Ok(buckets) = &mut self.buckets {
            if nested {
                buckets.push((key.to_vec(), bucket(value)));
            } else {
                self.buckets = Err(key[..key.len().min(SHOWN_KEY)].to_vec());
            }
        }
        if let Ok(records) = &mut self.records {
            match record(key, value) {
                Ok(r) => records.push(r),
                Err(why) => self.records = Err(why),
            }
        }
        // As the whole-file reader does, the first truncated one is the error.
        if key == b"finishedCompactRev" && !matches!(self.compact, Some(Err(_))) {
            self.compact = Some(main_revision(value).ok_or_else(|| "meta/finishedCompactRev is truncated".to_string()));
        }
    }
}

/// A bucket's value in its parent: its root page, or its page inline.
fn bucket(value: &[u8]) -> Bucket {
    if value.len() < 16 {
        return Bucket::Bad("a bucket header is truncated".into());
    }
    match u64_at(value, 0) {
        0 if value.len() < 16 + PAGE_HEADER => Bucket::Bad("an inline bucket is truncated".into()),
        0 => Bucket::Inline(Box::new(summarize(&value[16..], false))),
        root => Bucket::Root(root),
    }
}

fn record(key: &[u8], value: &[u8]) -> Result<Record, String> {
    let revision = main_revision(key).ok_or_else(|| format!("bucket key holds a short key {key:02x?}"))?;
    let user_key = user_key(value)
        .ok_or_else(|| format!("the record at revision {revision} in bucket key is not an etcd key-value"))?;
    Ok(Record { key: digest(user_key), revision, tombstone: key.len() == 18 && key[17] == b't' })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(id: u64, flags: u16, elements: &[(u32, &[u8], &[u8])]) -> Vec<u8> {
        let mut p = vec![0u8; PAGE_HEADER + elements.len() * ELEMENT];
        p[..8].copy_from_slice(&id.to_le_bytes());
        p[8..10].copy_from_slice(&flags.to_le_bytes());
        p[10..12].copy_from_slice(&(elements.len() as u16).to_le_bytes());
        for (i, (eflags, k, v)) in elements.iter().enumerate() {
            let e = PAGE_HEADER + i * ELEMENT;
            let pos = (p.len() - e) as u32;
            if flags == BRANCH {
                p[e..e + 4].copy_from_slice(&pos.to_le_bytes());
                p[e + 4..e + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
                p[e + 8..e + 16].copy_from_slice(&u64::from(*eflags).to_le_bytes());
                p.extend_from_slice(k);
            } else {
                p[e..e + 4].copy_from_slice(&eflags.to_le_bytes());
                p[e + 4..e + 8].copy_from_slice(&pos.to_le_bytes());
                p[e + 8..e + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
                p[e + 12..e + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
                p.extend_from_slice(k);
                p.extend_from_slice(v);
            }
        }
        p
    }

    fn summarize_page(p: &[u8]) -> Summary {
        summarize(p, true)
    }

    use crate::snapshot::spill::{Decoder, encode};

    fn round_trip(s: &Summary) -> Summary {
        let mut buf = Vec::new();
        encode(s, &mut buf);
        Decoder::new(&buf).summary().unwrap()
    }

    #[test]
    fn a_key_leaf_keeps_its_records_hash_and_count() {
        let kv = [0x0a, 1, b'a', 0x10, 2];
        let mut put = 7i64.to_be_bytes().to_vec();
        put.extend_from_slice(b"_\0\0\0\0\0\0\0\0");
        let mut del = put.clone();
        del[7] = 8;
        del.push(b't');
        let s = summarize_page(&page(9, LEAF, &[(0, &put, &kv), (0, &del, &kv)]));
        let Summary::Leaf(l) = &s else { panic!("{s:?}") };
        assert_eq!(l.count, 2);
        let whole = [&put[..], &kv, &del, &kv].concat();
        assert_eq!((l.crc, l.len), (crc32c::crc32c(&whole), whole.len() as u64));
        let records = l.records.as_ref().unwrap();
        assert_eq!(records.iter().map(|r| (r.revision, r.tombstone)).collect::<Vec<_>>(), [(7, false), (8, true)]);
        assert_eq!(l.buckets, Err(put.clone()), "a plain key cannot be at the top level");
        assert_eq!(round_trip(&s), s);
    }

    #[test]
    fn a_top_leaf_names_its_buckets_root_and_inline() {
        let inline_page = page(0, LEAF, &[(0, b"finishedCompactRev", &5i64.to_be_bytes())]);
        let mut inline = vec![0u8; 16];
        inline.extend_from_slice(&inline_page);
        let mut rooted = 42u64.to_le_bytes().to_vec();
        rooted.extend_from_slice(&[0; 8]);
        let s = summarize_page(&page(
            3,
            LEAF,
            &[(BUCKET_LEAF, b"key", &rooted), (BUCKET_LEAF, b"meta", &inline), (BUCKET_LEAF, b"x", &[1])],
        ));
        let Summary::Leaf(l) = &s else { panic!("{s:?}") };
        let buckets = l.buckets.as_ref().unwrap();
        assert_eq!(buckets[0], (b"key".to_vec(), Bucket::Root(42)));
        let Bucket::Inline(inner) = &buckets[1].1 else { panic!("{buckets:?}") };
        let Summary::Leaf(meta) = &**inner else { panic!("{inner:?}") };
        assert_eq!(meta.compact, Some(Ok(5)));
        assert_eq!(buckets[2].1, Bucket::Bad("a bucket header is truncated".into()));
        assert_eq!(crc32c::crc32c(b"keymetax"), l.crc, "nested buckets add their names only");
        assert_eq!(round_trip(&s), s);
    }

    #[test]
    fn branches_and_damage_are_summarized() {
        let s = summarize_page(&page(4, BRANCH, &[(10, b"a", b""), (11, b"b", b"")]));
        assert_eq!(s, Summary::Branch(vec![10, 11]));
        assert_eq!(round_trip(&s), s);
        let mut bad = page(5, LEAF, &[(0, b"k", b"v")]);
        bad[PAGE_HEADER + 12] = 0xff; // value size past the page
        assert_eq!(summarize_page(&bad), Summary::Bad("page 5 has an element out of bounds".into()));
        let mut many = page(6, LEAF, &[]);
        many[10] = 9;
        assert_eq!(summarize_page(&many), Summary::Bad("page 6 has more elements than fit in it".into()));
        assert_eq!(summarize_page(&page(7, 0x10, &[])), Summary::Other(7, 0x10));
        assert_eq!(round_trip(&Summary::Other(7, 0x10)), Summary::Other(7, 0x10));
        assert!(Decoder::new(&[3, 1]).summary().is_err(), "a short spill is an error, not a panic");
    }

    /// bbolt writes element data in order after the headers; elements that share or go back over data
    /// could make a small page cost unbounded work (the same value hashed 65,535 times, inline buckets
    /// nested in each other), so they are damage.
    #[test]
    fn overlapping_elements_are_damage() {
        let mut p = page(8, LEAF, &[(0, b"a", b"1"), (0, b"b", b"2")]);
        // The second element's data set to the first's.
        let pos0 = u32::from_le_bytes(p[PAGE_HEADER + 4..PAGE_HEADER + 8].try_into().unwrap());
        let second = PAGE_HEADER + ELEMENT;
        p[second + 4..second + 8].copy_from_slice(&(pos0 - ELEMENT as u32).to_le_bytes());
        assert_eq!(summarize_page(&p), Summary::Bad("page 8 has elements out of order or overlapping".into()));
        let mut b = page(9, BRANCH, &[(10, b"a", b""), (11, b"b", b"")]);
        b[PAGE_HEADER + ELEMENT..PAGE_HEADER + ELEMENT + 4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(summarize_page(&b), Summary::Bad("page 9 has elements out of order or overlapping".into()));
    }

    /// An inline bucket's page is summarized as a bucket's content only: a nested bucket in it leads no
    /// further (the whole-file reader never walks one either).
    #[test]
    fn inline_pages_do_not_nest() {
        let innermost = page(0, LEAF, &[(0, b"k", b"v")]);
        let mut nested = vec![0u8; 16];
        nested.extend_from_slice(&innermost);
        let inner = page(0, LEAF, &[(BUCKET_LEAF, b"deeper", &nested)]);
        let mut inline = vec![0u8; 16];
        inline.extend_from_slice(&inner);
        let s = summarize_page(&page(3, LEAF, &[(BUCKET_LEAF, b"outer", &inline)]));
        let Summary::Leaf(l) = &s else { panic!("{s:?}") };
        let Bucket::Inline(inner) = &l.buckets.as_ref().unwrap()[0].1 else { panic!("{l:?}") };
        let Summary::Leaf(inner) = &**inner else { panic!("{inner:?}") };
        assert_eq!(inner.buckets, Err(Vec::new()), "not summarized further");
        assert_eq!(inner.count, 1);
        assert_eq!(round_trip(&s), s);
    }
}
