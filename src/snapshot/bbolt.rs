//! A read-only reader of bbolt files (etcd's backend) that checks the page structure and computes the
//! status etcd's tools print: hash (CRC-32C over each top-level bucket's name and then its keys and
//! values, in order), revision (of the last key in bucket `key`), total keys and total size.
//! Pure: it reads through `Pages`, so a file is never held in memory.

use std::collections::HashSet;

use super::mvcc::{LiveKeys, digest, main_revision, user_key};

pub(super) const MAGIC: u32 = 0xED0C_DAED;
pub(super) const PAGE_HEADER: usize = 16;
pub(super) const ELEMENT: usize = 16;
pub(super) const BRANCH: u16 = 0x01;
pub(super) const LEAF: u16 = 0x02;
pub(super) const META: u16 = 0x04;
pub(super) const BUCKET_LEAF: u32 = 0x01;

/// Random access to the database bytes.
pub trait Pages {
    fn size(&self) -> u64;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl Pages for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let src = self.get(start..start + buf.len()).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl Pages for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BboltError {
    #[error("not a bbolt database: {0}")]
    NotBbolt(String),
    #[error("the database is damaged: {0}")]
    Damaged(String),
    /// The streaming check's own scratch file failed (not the database): its kind tells the cause.
    #[error("{what}: {message}")]
    Scratch { what: String, kind: std::io::ErrorKind, message: String },
    /// Beyond what the streaming check holds (not damage).
    #[error("{0}")]
    Limit(String),
}

pub(super) fn damaged(what: String) -> BboltError {
    BboltError::Damaged(what)
}

/// What `etcdctl snapshot status` (3.4) and `etcdutl snapshot status` (3.5) report, plus the live-key
/// count etcd 3.6 reports as TOTAL KEYS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub hash: u32,
    pub revision: i64,
    /// Every key/value pair in every bucket (etcd 3.4 and 3.5).
    pub total_key: u64,
    /// Keys whose newest revision is not a deletion: what etcd 3.6 reports as TOTAL KEYS, and what a
    /// restored member answers to `etcdctl get "" --prefix --count-only`.
    #[serde(default)]
    pub live_keys: u64,
    /// The revision of the last finished compaction (0 if none). A member restored from the snapshot
    /// serves revision max(revision, compact_revision): a compaction can remove the newest revisions' keys.
    #[serde(default)]
    pub compact_revision: i64,
    pub total_size: u64,
}

impl Status {
    /// The revision a member restored from this database serves: a compaction can remove the keys of
    /// the newest revisions (a deletion compacted away), and etcd then serves the compaction's revision;
    /// an empty store is at revision 1.
    pub fn served_revision(&self) -> i64 {
        self.revision.max(self.compact_revision).max(1)
    }

    /// A snapshot cannot be older than the revision its member reported just before sending it.
    pub fn check_not_older_than(&self, reported: i64) -> Result<(), String> {
        let served = self.served_revision();
        if served < reported {
            return Err(format!(
                "the snapshot is at revision {served}, older than the {reported} etcd reported when it was taken"
            ));
        }
        Ok(())
    }
}

pub(super) struct Meta {
    pub(super) page_size: u64,
    pub(super) root: u64,
    pub(super) high_water: u64,
    pub(super) txid: u64,
}

pub(super) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(super) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}
pub(super) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// Parses one meta page; `None` if it is not a valid meta page.
pub(super) fn parse_meta(page: &[u8]) -> Option<Meta> {
    if page.len() < PAGE_HEADER + 64 || u16_at(page, 8) & META == 0 {
        return None;
    }
    let m = &page[PAGE_HEADER..PAGE_HEADER + 64];
    if u32_at(m, 0) != MAGIC || u32_at(m, 4) != 2 || fnv1a64(&m[..56]) != u64_at(m, 56) {
        return None;
    }
    Some(Meta {
        page_size: u64::from(u32_at(m, 8)),
        root: u64_at(m, 16),
        high_water: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

/// The elements of a branch or leaf page, read in order. Each must lie within the page, its data after
/// the element headers and after the previous element's data, as bbolt writes it: then the work and
/// memory a page costs stay within its size, whatever it claims. Errors are the damage, in words.
pub(super) struct Elements<'p> {
    page: &'p [u8],
    id: u64,
    next: usize,
}

impl<'p> Elements<'p> {
    pub(super) fn new(page: &'p [u8], id: u64, count: usize) -> Self {
        Elements { page, id, next: PAGE_HEADER + count * ELEMENT }
    }

    fn data(&mut self, from: usize, len: usize) -> Result<&'p [u8], String> {
        let data =
            self.page.get(from..from + len).ok_or_else(|| format!("page {} has an element out of bounds", self.id))?;
        if from < self.next {
            return Err(format!("page {} has elements out of order or overlapping", self.id));
        }
        self.next = from + len;
        Ok(data)
    }

    /// Branch element `i`: the child page it points to.
    pub(super) fn branch(&mut self, i: usize) -> Result<u64, String> {
        let e = PAGE_HEADER + i * ELEMENT;
        let (pos, ksize) = (u32_at(self.page, e) as usize, u32_at(self.page, e + 4) as usize);
        self.data(e + pos, ksize)?;
        Ok(u64_at(self.page, e + 8))
    }

    /// Leaf element `i`: its flags, key and value.
    pub(super) fn leaf(&mut self, i: usize) -> Result<(u32, &'p [u8], &'p [u8]), String> {
        let e = PAGE_HEADER + i * ELEMENT;
        let (flags, pos, ksize, vsize) = (
            u32_at(self.page, e),
            u32_at(self.page, e + 4) as usize,
            u32_at(self.page, e + 8) as usize,
            u32_at(self.page, e + 12) as usize,
        );
        let data = self.data(e + pos, ksize + vsize)?;
        Ok((flags, &data[..ksize], &data[ksize..]))
    }
}

/// Where the second meta page is: the page size the first one names, or bbolt's default if it is not
/// valid.
pub(super) fn first_page_size(meta0: Option<&Meta>) -> Result<u64, BboltError> {
    let page_size = meta0.map(|m| m.page_size).unwrap_or(4096);
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(BboltError::NotBbolt(format!("page size {page_size}")));
    }
    Ok(page_size)
}

/// The meta page of the newest transaction among the valid ones.
pub(super) fn newest_meta(meta0: Option<Meta>, meta1: Option<Meta>) -> Result<Meta, BboltError> {
    match (meta0, meta1) {
        (Some(a), Some(b)) => Ok(if a.txid >= b.txid { a } else { b }),
        (Some(a), None) | (None, Some(a)) => Ok(a),
        (None, None) => Err(BboltError::NotBbolt("no valid meta page (bad magic, version or checksum)".into())),
    }
    .and_then(|meta| {
        if !(512..=65536).contains(&meta.page_size) || !meta.page_size.is_power_of_two() {
            return Err(BboltError::NotBbolt(format!("page size {}", meta.page_size)));
        }
        Ok(meta)
    })
}

/// The database's size as its meta page states it, which a file of `size` bytes must hold.
pub(super) fn database_size(meta: &Meta, size: u64) -> Result<u64, BboltError> {
    let total_size = meta
        .high_water
        .checked_mul(meta.page_size)
        .ok_or_else(|| damaged(format!("the meta page claims {} pages", meta.high_water)))?;
    if total_size > size {
        return Err(damaged(format!("the file is truncated: {size} bytes, the database needs {total_size}")));
    }
    Ok(total_size)
}

struct Reader<'a, P: Pages + ?Sized> {
    pages: &'a P,
    meta: Meta,
    seen: HashSet<u64>,
    depth: usize,
}

/// Far deeper than any real B+tree (a billion keys need fewer than ten levels), shallow enough that a
/// damaged file cannot exhaust the stack.
pub(super) const MAX_DEPTH: usize = 64;

/// Called with each key, value and leaf flags of a tree, in order.
type Visit<'f, 'p, P> = dyn FnMut(&mut Reader<'p, P>, &[u8], &[u8], u32) -> Result<(), BboltError> + 'f;

impl<'p, P: Pages + ?Sized> Reader<'p, P> {
    /// Reads page `id` with its overflow pages, once: a page reached twice is damage.
    fn page(&mut self, id: u64) -> Result<Vec<u8>, BboltError> {
        if id < 2 || id >= self.meta.high_water {
            return Err(damaged(format!("page {id} is outside the database (pages 2..{})", self.meta.high_water)));
        }
        if !self.seen.insert(id) {
            return Err(damaged(format!("page {id} is reachable twice")));
        }
        let ps = self.meta.page_size;
        let mut head = vec![0u8; PAGE_HEADER];
        self.pages
            .read_at(id * ps, &mut head)
            .map_err(|_| damaged(format!("page {id} is past the end of the file")))?;
        if u64_at(&head, 0) != id {
            return Err(damaged(format!("page {id} says it is page {}", u64_at(&head, 0))));
        }
        let overflow = u64::from(u32_at(&head, 12));
        if id + overflow >= self.meta.high_water {
            return Err(damaged(format!("page {id} overflows past the end of the database")));
        }
        for extra in id + 1..=id + overflow {
            if !self.seen.insert(extra) {
                return Err(damaged(format!("page {extra} is reachable twice")));
            }
        }
        let mut buf =
            vec![0u8; usize::try_from((overflow + 1) * ps).map_err(|_| damaged(format!("page {id} is too large")))?];
        self.pages.read_at(id * ps, &mut buf).map_err(|_| damaged(format!("page {id} is past the end of the file")))?;
        Ok(buf)
    }

    /// Calls `f` on every key/value (with its leaf flags) of the tree rooted at `page`, in order.
    fn walk(&mut self, page: &[u8], f: &mut Visit<'_, 'p, P>) -> Result<(), BboltError> {
        let id = u64_at(page, 0);
        let flags = u16_at(page, 8);
        let count = usize::from(u16_at(page, 10));
        if PAGE_HEADER + count * ELEMENT > page.len() {
            return Err(damaged(format!("page {id} has more elements than fit in it")));
        }
        let mut elements = Elements::new(page, id, count);
        match flags {
            BRANCH => {
                for i in 0..count {
                    let child = elements.branch(i).map_err(damaged)?;
                    if self.depth >= MAX_DEPTH {
                        return Err(damaged(format!("page {id} is more than {MAX_DEPTH} levels deep")));
                    }
                    let child_page = self.page(child)?;
                    self.depth += 1;
                    let walked = self.walk(&child_page, f);
                    self.depth -= 1;
                    walked?;
                }
                Ok(())
            }
            LEAF => {
                for i in 0..count {
                    let (eflags, key, value) = elements.leaf(i).map_err(damaged)?;
                    f(self, key, value, eflags)?;
                }
                Ok(())
            }
            other => Err(damaged(format!("page {id} has type {other:#x} where a branch or leaf page belongs"))),
        }
    }

    /// Walks a bucket given its value in the parent (header, and the page itself if inline).
    fn walk_bucket(&mut self, value: &[u8], f: &mut Visit<'_, 'p, P>) -> Result<(), BboltError> {
        if value.len() < 16 {
            return Err(damaged("a bucket header is truncated".into()));
        }
        match u64_at(value, 0) {
            0 => {
                let inline = &value[16..];
                if inline.len() < PAGE_HEADER {
                    return Err(damaged("an inline bucket is truncated".into()));
                }
                self.walk(inline, f)
            }
            root => {
                let page = self.page(root)?;
                self.walk(&page, f)
            }
        }
    }
}

/// Checks the structure of a bbolt file and computes its status.
pub fn status<P: Pages + ?Sized>(pages: &P) -> Result<Status, BboltError> {
    let mut first = vec![0u8; 4096];
    let size = pages.size();
    if size < 2 * 1024 {
        return Err(BboltError::NotBbolt(format!("only {size} bytes")));
    }
    first.truncate(size.min(4096) as usize);
    pages.read_at(0, &mut first).map_err(|e| BboltError::NotBbolt(e.to_string()))?;
    let meta0 = parse_meta(&first);
    let page_size = first_page_size(meta0.as_ref())?;
    let mut second = vec![0u8; PAGE_HEADER + 64];
    let meta1 = pages.read_at(page_size, &mut second).ok().and_then(|()| parse_meta(&second));
    let meta = newest_meta(meta0, meta1)?;
    let total_size = database_size(&meta, size)?;
    let root = meta.root;
    let mut reader = Reader { pages, meta, seen: HashSet::new(), depth: 0 };
    let root_page = reader.page(root)?;
    let mut hasher = 0u32;
    let (mut total_key, mut revision, mut compact_revision) = (0u64, 0i64, 0i64);
    let mut live = LiveKeys::default();
    reader.walk(&root_page, &mut |r, name, value, flags| {
        if flags & BUCKET_LEAF == 0 {
            return Err(damaged(format!(
                "the top level holds a plain key {:?}, not a bucket",
                String::from_utf8_lossy(name)
            )));
        }
        hasher = crc32c::crc32c_append(hasher, name);
        let is_key = name == b"key";
        let is_meta = name == b"meta";
        r.walk_bucket(value, &mut |_, k, v, f| {
            hasher = crc32c::crc32c_append(hasher, k);
            if f & BUCKET_LEAF == 0 {
                hasher = crc32c::crc32c_append(hasher, v);
            }
            if is_key {
                revision = main_revision(k).ok_or_else(|| damaged(format!("bucket key holds a short key {k:02x?}")))?;
                let user_key = user_key(v).ok_or_else(|| {
                    damaged(format!("the record at revision {revision} in bucket key is not an etcd key-value"))
                })?;
                let tombstone = k.len() == 18 && k[17] == b't';
                live.record(digest(user_key), tombstone);
            }
            if is_meta && k == b"finishedCompactRev" {
                compact_revision =
                    main_revision(v).ok_or_else(|| damaged("meta/finishedCompactRev is truncated".into()))?;
            }
            total_key += 1;
            Ok(())
        })
    })?;
    Ok(Status { hash: hasher, revision, total_key, live_keys: live.count(), compact_revision, total_size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_bbolt() {
        assert!(matches!(status(&[0u8; 100][..]), Err(BboltError::NotBbolt(_))));
        assert!(matches!(status(&vec![0u8; 16384][..]), Err(BboltError::NotBbolt(_))));
    }

    #[test]
    fn user_keys_are_read_from_key_value_records() {
        // key="a/b", create_revision=2, mod_revision=3, version=1, value="x", lease=0x1234
        let record = [0x0a, 3, b'a', b'/', b'b', 0x10, 2, 0x18, 3, 0x20, 1, 0x2a, 1, b'x', 0x30, 0xb4, 0x24];
        assert_eq!(user_key(&record), Some(&b"a/b"[..]));
        assert_eq!(user_key(&[0x10, 2]), None, "no key field");
        assert_eq!(user_key(&[0x0a, 5, b'a']), None, "key longer than the record");
        assert_eq!(user_key(&[0x0b]), None, "unknown wire type");
        assert_eq!(user_key(&[0x10, 0x80]), None, "unterminated varint");
        assert_eq!(user_key(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), None);
    }

    #[test]
    fn a_compaction_past_the_last_key_sets_the_served_revision() {
        let s = Status { hash: 0, revision: 20, total_key: 9, live_keys: 3, compact_revision: 0, total_size: 8192 };
        assert_eq!(s.served_revision(), 20);
        assert!(s.check_not_older_than(20).is_ok());
        assert!(s.check_not_older_than(21).unwrap_err().contains("revision 20, older than the 21"));
        let compacted = Status { compact_revision: 23, ..s };
        assert_eq!(compacted.served_revision(), 23);
        assert!(compacted.check_not_older_than(23).is_ok());
        let empty = Status { revision: 0, live_keys: 0, ..s };
        assert_eq!(empty.served_revision(), 1, "a fresh etcd reports revision 1 with no key");
        assert!(empty.check_not_older_than(1).is_ok());
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }
}
