//! How the streaming check's page summaries are written to its spill and read back: little-endian
//! integers, byte strings with a u32 length, a tag byte per variant. Pure.

use super::bbolt::{BboltError, u16_at, u32_at, u64_at};
use super::summary::{Bucket, Leaf, Record, Summary};

pub(super) fn encode(s: &Summary, out: &mut Vec<u8>) {
    match s {
        Summary::Bad(why) => {
            out.push(0);
            bytes(out, why.as_bytes());
        }
        Summary::TooLarge(why) => {
            out.push(4);
            bytes(out, why.as_bytes());
        }
        Summary::Other(id, flags) => {
            out.push(1);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&flags.to_le_bytes());
        }
        Summary::Branch(children) => {
            out.push(2);
            out.extend_from_slice(&(children.len() as u32).to_le_bytes());
            children.iter().for_each(|c| out.extend_from_slice(&c.to_le_bytes()));
        }
        Summary::Leaf(l) => {
            out.push(3);
            out.extend_from_slice(&l.count.to_le_bytes());
            out.extend_from_slice(&l.crc.to_le_bytes());
            out.extend_from_slice(&l.len.to_le_bytes());
            match &l.buckets {
                Ok(buckets) => {
                    out.push(0);
                    out.extend_from_slice(&(buckets.len() as u32).to_le_bytes());
                    for (name, b) in buckets {
                        bytes(out, name);
                        match b {
                            Bucket::Root(root) => {
                                out.push(0);
                                out.extend_from_slice(&root.to_le_bytes());
                            }
                            Bucket::Inline(inner) => {
                                out.push(1);
                                encode(inner, out);
                            }
                            Bucket::Bad(why) => {
                                out.push(2);
                                bytes(out, why.as_bytes());
                            }
                        }
                    }
                }
                Err(plain) => {
                    out.push(1);
                    bytes(out, plain);
                }
            }
            match &l.records {
                Ok(records) => {
                    out.push(0);
                    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
                    for r in records {
                        out.extend_from_slice(&r.key.to_le_bytes());
                        out.extend_from_slice(&r.revision.to_le_bytes());
                        out.push(u8::from(r.tombstone));
                    }
                }
                Err(why) => {
                    out.push(1);
                    bytes(out, why.as_bytes());
                }
            }
            match &l.compact {
                None => out.push(0),
                Some(Ok(rev)) => {
                    out.push(1);
                    out.extend_from_slice(&rev.to_le_bytes());
                }
                Some(Err(why)) => {
                    out.push(2);
                    bytes(out, why.as_bytes());
                }
            }
        }
    }
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads back what `encode` wrote.
pub(super) struct Decoder<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Decoder<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Decoder { buf, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BboltError> {
        let got = self.buf.get(self.at..self.at + n).ok_or_else(spill_damaged)?;
        self.at += n;
        Ok(got)
    }
    fn u8(&mut self) -> Result<u8, BboltError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, BboltError> {
        Ok(u32_at(self.take(4)?, 0))
    }
    fn u64(&mut self) -> Result<u64, BboltError> {
        Ok(u64_at(self.take(8)?, 0))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, BboltError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn text(&mut self) -> Result<String, BboltError> {
        Ok(String::from_utf8_lossy(&self.bytes()?).into_owned())
    }

    pub(super) fn summary(&mut self) -> Result<Summary, BboltError> {
        Ok(match self.u8()? {
            0 => Summary::Bad(self.text()?),
            4 => Summary::TooLarge(self.text()?),
            1 => Summary::Other(self.u64()?, u16_at(self.take(2)?, 0)),
            2 => {
                let n = self.u32()?;
                Summary::Branch((0..n).map(|_| self.u64()).collect::<Result<_, _>>()?)
            }
            3 => {
                let (count, crc, len) = (self.u64()?, self.u32()?, self.u64()?);
                let buckets = match self.u8()? {
                    0 => {
                        let n = self.u32()?;
                        let mut buckets = Vec::new();
                        for _ in 0..n {
                            let name = self.bytes()?;
                            let b = match self.u8()? {
                                0 => Bucket::Root(self.u64()?),
                                1 => Bucket::Inline(Box::new(self.summary()?)),
                                _ => Bucket::Bad(self.text()?),
                            };
                            buckets.push((name, b));
                        }
                        Ok(buckets)
                    }
                    _ => Err(self.bytes()?),
                };
                let records = match self.u8()? {
                    0 => {
                        let n = self.u32()?;
                        let mut records = Vec::with_capacity((n as usize).min(1 << 16));
                        for _ in 0..n {
                            let key = u128::from_le_bytes(self.take(16)?.try_into().map_err(|_| spill_damaged())?);
                            let revision = self.u64()? as i64;
                            records.push(Record { key, revision, tombstone: self.u8()? != 0 });
                        }
                        Ok(records)
                    }
                    _ => Err(self.text()?),
                };
                let compact = match self.u8()? {
                    0 => None,
                    1 => Some(Ok(self.u64()? as i64)),
                    _ => Some(Err(self.text()?)),
                };
                Summary::Leaf(Leaf { count, crc, len, buckets, records, compact })
            }
            _ => return Err(spill_damaged()),
        })
    }
}

/// The spill is our own file: reading back something else means the disk under it failed.
pub(super) fn spill_damaged() -> BboltError {
    BboltError::Scratch {
        what: "the snapshot check's scratch file".into(),
        kind: std::io::ErrorKind::Other,
        message: "it reads back differently than it was written".into(),
    }
}
