//! The database check of a snapshot as it streams past: each page is summarized as it arrives
//! (`summary.rs`) and spilled; when the stream ends the tree is walked over the summaries, with the same
//! checks and the same status as `bbolt::status` on the whole file. Nothing of the plain snapshot is
//! written anywhere, and memory holds one page (with its overflow) and an index of four bytes per page.
//! Pure: the spill is a trait.

use super::mvcc::LiveKeys;

use super::bbolt::{
    BboltError, MAX_DEPTH, Meta, PAGE_HEADER, Status, damaged, database_size, first_page_size, newest_meta, parse_meta,
    u32_at, u64_at,
};
use super::spill::{Decoder, encode, spill_damaged};
use super::summary::{Bucket, Summary, summarize};

/// Where page summaries go while the stream passes: appended, then read back by offset.
pub trait Spill {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Called once the stream ended, before the first `read_at`.
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl Spill for Vec<u8> {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        <[u8] as super::bbolt::Pages>::read_at(self, offset, buf)
    }
}

/// An unnamed scratch file, written through a buffer and read back once the stream ends.
impl Spill for std::io::BufWriter<std::fs::File> {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        std::io::Write::write_all(self, bytes)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::Write::flush(self)
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self.get_ref(), buf, offset)
    }
}

/// A page with its overflow pages larger than this is not held: etcd's values are limited to its
/// request size (1.5 MiB by default, at most a few tens of MiB in practice).
pub const MAX_PAGE_SPAN: u64 = 64 << 20;

/// Summaries are written at offsets that are multiples of this, so that a u32 index reaches 32 GiB.
const ALIGN: u64 = 8;

/// Fed the snapshot's bytes in order; `finish` gives its status or what is wrong with it.
pub struct StreamCheck<S: Spill> {
    spill: S,
    spilled: u64,
    received: u64,
    /// Bytes from page `next` on (from byte 0 until the meta pages are read).
    buf: Vec<u8>,
    start: usize,
    meta: Option<Meta>,
    /// The next page to summarize.
    next: u64,
    /// For each page from 2 on: 0 if it is no page's start, else its summary's offset / ALIGN + 1.
    index: Vec<u32>,
    failed: Option<BboltError>,
    encoded: Vec<u8>,
}

impl<S: Spill> StreamCheck<S> {
    pub fn new(spill: S) -> Self {
        StreamCheck {
            spill,
            spilled: 0,
            received: 0,
            buf: Vec::new(),
            start: 0,
            meta: None,
            next: 2,
            index: Vec::new(),
            failed: None,
            encoded: Vec::new(),
        }
    }

    pub fn update(&mut self, chunk: &[u8]) {
        self.received += chunk.len() as u64;
        if self.failed.is_some() || self.meta.as_ref().is_some_and(|m| self.next >= m.high_water) {
            return; // past the database: the rest is free space and etcd's trailer
        }
        self.buf.extend_from_slice(chunk);
        if let Err(e) = self.advance(false) {
            self.failed = Some(e);
            self.buf = Vec::new();
        }
    }

    /// Bytes of the snapshot held in memory now: at most about one page with its overflow (and the
    /// piece last given), whatever the database's size.
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// The database's status, once every byte has been given to `update`.
    pub fn finish(mut self) -> Result<Status, BboltError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        self.advance(true)?;
        self.spill.flush().map_err(|e| scratch("cannot write the snapshot check's scratch file", e))?;
        let Some(meta) = self.meta.take() else {
            return Err(BboltError::NotBbolt(format!("only {} bytes", self.received)));
        };
        let total_size = database_size(&meta, self.received)?;
        self.buf = Vec::new();
        let mut walk = Walk {
            check: &self,
            high_water: meta.high_water,
            seen: vec![0u64; usize::try_from(meta.high_water.div_ceil(64)).unwrap_or(usize::MAX)],
            depth: 0,
            hash: 0,
            total_key: 0,
            revision: 0,
            compact_revision: 0,
            live: LiveKeys::default(),
        };
        let root = walk.page(meta.root)?;
        walk.tree(&root, Level::Top)?;
        let live_keys = walk.live.count();
        Ok(Status {
            hash: walk.hash,
            revision: walk.revision,
            total_key: walk.total_key,
            live_keys,
            compact_revision: walk.compact_revision,
            total_size,
        })
    }

    fn advance(&mut self, at_end: bool) -> Result<(), BboltError> {
        // What is behind the next page goes, also while a long page is still arriving.
        if self.start > (1 << 20) && self.start * 2 > self.buf.len() && self.start <= self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.meta.is_none() && !self.read_meta(at_end)? {
            return Ok(());
        }
        let Some(meta) = &self.meta else { return Ok(()) };
        let (page_size, high_water) = (meta.page_size, meta.high_water);
        let ps = page_size as usize;
        while self.next < high_water && self.buf.len().saturating_sub(self.start) >= ps {
            let here = &self.buf[self.start..];
            let summary = if u64_at(here, 0) != self.next {
                None
            } else {
                let overflow = u64::from(u32_at(here, 12));
                let span = (overflow + 1) * page_size;
                if self.next + overflow >= high_water {
                    Some((overflow, Summary::Bad(format!("page {} overflows past the end of the database", self.next))))
                } else if span > MAX_PAGE_SPAN {
                    Some((
                        overflow,
                        Summary::TooLarge(format!(
                            "page {} with its overflow is {} MiB, more than the {} MiB the snapshot check holds in memory: a value of that size is beyond what etcd accepts by default (--max-request-bytes)",
                            self.next,
                            span >> 20,
                            MAX_PAGE_SPAN >> 20
                        )),
                    ))
                } else if here.len() < span as usize {
                    if at_end {
                        break; // the file is truncated: `finish` says so
                    }
                    return Ok(()); // wait for the rest of the page
                } else {
                    Some((overflow, summarize(&here[..span as usize], true)))
                }
            };
            let slot = match summary {
                None => 0,
                Some((overflow, s)) => self.spill_summary(overflow, &s)?,
            };
            self.index.push(slot);
            self.next += 1;
            self.start += ps;
        }
        Ok(())
    }

    /// Reads the meta pages once enough bytes are here (or the stream ended); true once they are read.
    fn read_meta(&mut self, at_end: bool) -> Result<bool, BboltError> {
        if !at_end && self.buf.len() < 4096 {
            return Ok(false);
        }
        if self.buf.len() < 2048 {
            return Err(BboltError::NotBbolt(format!("only {} bytes", self.buf.len())));
        }
        let meta0 = parse_meta(&self.buf[..self.buf.len().min(4096)]);
        let page_size = first_page_size(meta0.as_ref())? as usize;
        let second_end = page_size + PAGE_HEADER + 64;
        if !at_end && self.buf.len() < second_end.max(2 * page_size) {
            return Ok(false);
        }
        let meta1 = self.buf.get(page_size..second_end).and_then(parse_meta);
        let meta = newest_meta(meta0, meta1)?;
        self.start = 2 * meta.page_size as usize;
        self.meta = Some(meta);
        Ok(true)
    }

    fn spill_summary(&mut self, overflow: u64, s: &Summary) -> Result<u32, BboltError> {
        self.encoded.clear();
        self.encoded.extend_from_slice(&[0; 4]);
        self.encoded.extend_from_slice(&overflow.to_le_bytes());
        encode(s, &mut self.encoded);
        let len = (self.encoded.len() - 4) as u32;
        self.encoded[..4].copy_from_slice(&len.to_le_bytes());
        let padded = self.encoded.len().next_multiple_of(ALIGN as usize);
        self.encoded.resize(padded, 0);
        let slot = u32::try_from(self.spilled / ALIGN + 1).map_err(|_| {
            BboltError::Limit(format!(
                "the snapshot check's page summaries passed {} GiB, more than it can index",
                (u64::from(u32::MAX) * ALIGN) >> 30
            ))
        })?;
        self.spill.append(&self.encoded).map_err(|e| scratch("cannot write the snapshot check's scratch file", e))?;
        self.spilled += padded as u64;
        Ok(slot)
    }

    /// Page `id`'s overflow and summary, if a page starts there.
    fn load(&self, id: u64) -> Result<Option<(u64, Summary)>, BboltError> {
        let slot = usize::try_from(id - 2).ok().and_then(|i| self.index.get(i)).copied().unwrap_or(0);
        if slot == 0 {
            return Ok(None);
        }
        let offset = (u64::from(slot) - 1) * ALIGN;
        let mut len = [0u8; 4];
        let read_error = |e| scratch("cannot read the snapshot check's scratch file", e);
        self.spill.read_at(offset, &mut len).map_err(read_error)?;
        let len = u32::from_le_bytes(len) as usize;
        if !(8..=(MAX_PAGE_SPAN as usize) * 2).contains(&len) {
            return Err(spill_damaged());
        }
        let mut buf = vec![0u8; len];
        self.spill.read_at(offset + 4, &mut buf).map_err(read_error)?;
        Ok(Some((u64_at(&buf, 0), Decoder::new(&buf[8..]).summary()?)))
    }
}

fn scratch(what: &str, e: std::io::Error) -> BboltError {
    BboltError::Scratch { what: what.to_string(), kind: e.kind(), message: e.to_string() }
}

#[derive(Clone, Copy)]
enum Level {
    Top,
    Bucket { is_key: bool, is_meta: bool },
}

/// The walk over the summaries, in the tree's order, as `bbolt::status` walks the file.
struct Walk<'a, S: Spill> {
    check: &'a StreamCheck<S>,
    high_water: u64,
    seen: Vec<u64>,
    depth: usize,
    hash: u32,
    total_key: u64,
    revision: i64,
    compact_revision: i64,
    live: LiveKeys,
}

impl<S: Spill> Walk<'_, S> {
    fn mark(&mut self, id: u64) -> Result<(), BboltError> {
        let (word, bit) = ((id / 64) as usize, id % 64);
        if self.seen[word] & (1 << bit) != 0 {
            return Err(damaged(format!("page {id} is reachable twice")));
        }
        self.seen[word] |= 1 << bit;
        Ok(())
    }

    /// Page `id`'s summary, reached once.
    fn page(&mut self, id: u64) -> Result<Summary, BboltError> {
        if id < 2 || id >= self.high_water {
            return Err(damaged(format!("page {id} is outside the database (pages 2..{})", self.high_water)));
        }
        self.mark(id)?;
        let Some((overflow, summary)) = self.check.load(id)? else {
            return Err(damaged(format!("page {id} is not a page's start: its header names another page")));
        };
        match summary {
            Summary::Bad(why) => return Err(damaged(why)),
            Summary::TooLarge(why) => return Err(BboltError::Limit(why)),
            _ => {}
        }
        if id.saturating_add(overflow) >= self.high_water {
            return Err(spill_damaged());
        }
        for extra in id + 1..=id + overflow {
            self.mark(extra)?;
        }
        Ok(summary)
    }

    fn tree(&mut self, page: &Summary, level: Level) -> Result<(), BboltError> {
        match page {
            Summary::Bad(why) => Err(damaged(why.clone())),
            Summary::TooLarge(why) => Err(BboltError::Limit(why.clone())),
            Summary::Other(id, flags) => {
                Err(damaged(format!("page {id} has type {flags:#x} where a branch or leaf page belongs")))
            }
            Summary::Branch(children) => {
                for &child in children {
                    if self.depth >= MAX_DEPTH {
                        return Err(damaged(format!("page {child} is more than {MAX_DEPTH} levels deep")));
                    }
                    let child_page = self.page(child)?;
                    self.depth += 1;
                    let walked = self.tree(&child_page, level);
                    self.depth -= 1;
                    walked?;
                }
                Ok(())
            }
            Summary::Leaf(leaf) => match level {
                Level::Top => {
                    let buckets = leaf.buckets.as_ref().map_err(|name| {
                        damaged(format!(
                            "the top level holds a plain key {:?}, not a bucket",
                            String::from_utf8_lossy(name)
                        ))
                    })?;
                    for (name, bucket) in buckets {
                        self.hash = crc32c::crc32c_append(self.hash, name);
                        let level = Level::Bucket { is_key: name == b"key", is_meta: name == b"meta" };
                        match bucket {
                            Bucket::Root(root) => {
                                let page = self.page(*root)?;
                                self.tree(&page, level)?;
                            }
                            Bucket::Inline(page) => self.tree(page, level)?,
                            Bucket::Bad(why) => return Err(damaged(why.clone())),
                        }
                    }
                    Ok(())
                }
                Level::Bucket { is_key, is_meta } => {
                    self.hash = crc32c::crc32c_combine(self.hash, leaf.crc, leaf.len as usize);
                    self.total_key += leaf.count;
                    if is_key {
                        for r in leaf.records.as_ref().map_err(|why| damaged(why.clone()))? {
                            self.revision = r.revision;
                            self.live.record(r.key, r.tombstone);
                        }
                    }
                    if is_meta && let Some(compact) = &leaf.compact {
                        self.compact_revision = compact.clone().map_err(damaged)?;
                    }
                    Ok(())
                }
            },
        }
    }
}
