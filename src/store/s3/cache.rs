//! The manifests already read from a bucket, kept in the state dir by key and version, so that listing
//! a folder of thousands of backups reads only the manifests it has not seen (a LIST page names a
//! thousand objects; a GET reads one). A cached manifest is used only while the store's listing shows
//! the same key at the same version (its ETag, or where a store lists none, its modification time) and
//! size, and its bytes go through the same checks as bytes just downloaded: the file is untrusted input
//! like the store. A cache that cannot be read or written is no cache.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which version of an object a store shows: its ETag, and its modification time (whole seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub etag: Option<String>,
    pub modified: Option<i64>,
}

impl Version {
    /// The listed version is the cached one: by ETag where the listing gives one, else by time; a store
    /// that gives neither is never cached.
    fn is(&self, listed: &Version) -> bool {
        match (&listed.etag, listed.modified) {
            (Some(etag), _) => self.etag.as_deref().map(normal) == Some(normal(etag)),
            (None, Some(modified)) => self.modified == Some(modified),
            (None, None) => false,
        }
    }
}

/// An ETag without its quotes or weak marker: stores write them differently in a listing and a GET.
fn normal(etag: &str) -> &str {
    etag.trim_start_matches("W/").trim_matches('"')
}

/// One manifest as the store served it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: Version,
    pub size: u64,
    /// The manifest's bytes, as served (JSON text).
    pub manifest: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    version: u32,
    entries: HashMap<String, Entry>,
}

const VERSION: u32 = 2;
/// A cache larger than this is neither read nor written.
const MAX_BYTES: u64 = 64 << 20;
/// A manifest larger than this is not cached (ours are a few KiB).
pub const MAX_ENTRY: usize = 64 << 10;

/// The cache of one S3 folder (bucket, prefix, cluster, endpoint: `place`).
pub struct Cache {
    path: PathBuf,
}

impl Cache {
    pub fn for_place(place: &str) -> Self {
        use sha2::Digest;
        let name = hex::encode(&sha2::Sha256::digest(place.as_bytes())[..12]);
        Cache { path: crate::host::state_dir().join("s3-manifests").join(format!("{name}.json")) }
    }

    /// What was cached, or nothing: only a regular file (not followed through a symlink, never a
    /// FIFO that would block), at most `MAX_BYTES`, read and parsed off the async workers.
    pub async fn load(&self) -> HashMap<String, Entry> {
        let path = self.path.clone();
        let read = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&path)
                .ok()?;
            if !file.metadata().ok()?.is_file() {
                return None;
            }
            let mut bytes = Vec::new();
            file.take(MAX_BYTES + 1).read_to_end(&mut bytes).ok()?;
            if bytes.len() as u64 > MAX_BYTES {
                return None;
            }
            serde_json::from_slice::<File>(&bytes).ok().filter(|f| f.version == VERSION)
        })
        .await;
        read.ok().flatten().map(|f| f.entries).unwrap_or_default()
    }

    /// Replaces the cache with `entries` (the manifests of the last listing that checked out). Only
    /// the state dir's owner writes it: a root shell's `list` must not leave a file the service user
    /// cannot replace. Not synced: a cache lost in a crash is read again.
    pub async fn save(&self, entries: HashMap<String, Entry>) {
        let path = self.path.clone();
        let saved = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::{DirBuilderExt, MetadataExt};
            let Some(folder) = path.parent() else { return Ok(()) };
            let Some(state_dir) = folder.parent() else { return Ok(()) };
            // A state dir that does not exist yet is this user's to create.
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir)?;
            if std::fs::metadata(state_dir)?.uid() != nix::unistd::geteuid().as_raw() {
                return Ok(());
            }
            let bytes = serde_json::to_vec(&File { version: VERSION, entries }).map_err(std::io::Error::other)?;
            if bytes.len() as u64 > MAX_BYTES {
                return Ok(());
            }
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(folder)?;
            // A name of its own: a daemon and a command saving at once never publish each other's half.
            let mut part = tempfile::NamedTempFile::new_in(folder)?;
            part.write_all(&bytes)?;
            part.persist(&path).map_err(|e| e.error)?;
            Ok(())
        })
        .await;
        if let Ok(Err(e)) = saved {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot save the manifest cache");
        }
    }
}

/// The cached entry of `key`, if the listing shows it unchanged (same version and size).
pub fn hit<'c>(cache: &'c HashMap<String, Entry>, key: &str, listed: &Version, size: u64) -> Option<&'c Entry> {
    let entry = cache.get(key)?;
    (entry.version.is(listed) && entry.size == size && entry.manifest.len() as u64 == size).then_some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unchanged_object_is_a_hit() {
        let v = |etag: Option<&str>, modified| Version { etag: etag.map(str::to_string), modified };
        let entry = Entry { version: v(Some("\"abc\""), Some(100)), size: 2, manifest: "{}".into() };
        let cache: HashMap<String, Entry> = [("p/a.manifest.json".to_string(), entry)].into();
        let key = "p/a.manifest.json";
        assert!(hit(&cache, key, &v(Some("\"abc\""), Some(999)), 2).is_some(), "the ETag decides where listed");
        assert!(hit(&cache, key, &v(Some("abc"), None), 2).is_some(), "with or without its quotes");
        assert!(hit(&cache, key, &v(Some("\"abd\""), Some(100)), 2).is_none(), "another ETag");
        assert!(hit(&cache, key, &v(Some("\"abc\""), Some(100)), 3).is_none(), "another size");
        assert!(hit(&cache, key, &v(None, Some(100)), 2).is_some(), "no ETag listed: the time decides");
        assert!(hit(&cache, key, &v(None, Some(101)), 2).is_none(), "a later time");
        assert!(hit(&cache, key, &v(None, None), 2).is_none(), "neither: never cached");
        assert!(hit(&cache, "p/b.manifest.json", &v(Some("\"abc\""), Some(100)), 2).is_none());
        let lying = Entry { version: v(None, Some(100)), size: 2, manifest: "{\"x\":1}".into() };
        let cache: HashMap<String, Entry> = [("k".to_string(), lying)].into();
        assert!(hit(&cache, "k", &v(None, Some(100)), 2).is_none(), "cached bytes of another size");
        let unlisted = Entry { version: v(None, Some(100)), size: 2, manifest: "{}".into() };
        let cache: HashMap<String, Entry> = [("k".to_string(), unlisted)].into();
        assert!(hit(&cache, "k", &v(Some("\"abc\""), Some(100)), 2).is_none(), "read without an ETag, listed with one");
    }
}
