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
    pub modified: i64,
}

impl Version {
    /// The listed version is the cached one: by ETag where the listing gives one, else by time.
    fn is(&self, listed: &Version) -> bool {
        match &listed.etag {
            Some(etag) => self.etag.as_ref() == Some(etag),
            None => self.modified == listed.modified,
        }
    }
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
/// A cache larger than this is not read (it is rewritten from the listing).
const MAX_BYTES: u64 = 256 << 20;

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

    /// What was cached, or nothing.
    pub fn load(&self) -> HashMap<String, Entry> {
        let read = std::fs::metadata(&self.path)
            .ok()
            .filter(|m| m.len() <= MAX_BYTES)
            .and_then(|_| std::fs::read(&self.path).ok())
            .and_then(|bytes| serde_json::from_slice::<File>(&bytes).ok())
            .filter(|f| f.version == VERSION);
        read.map(|f| f.entries).unwrap_or_default()
    }

    /// Replaces the cache with `entries` (the manifests of the last listing that checked out).
    pub async fn save(&self, entries: HashMap<String, Entry>) {
        let Some(folder) = self.path.parent() else { return };
        let bytes = match serde_json::to_vec(&File { version: VERSION, entries }) {
            Ok(b) => b,
            Err(_) => return,
        };
        let name = self.path.file_name().and_then(|n| n.to_str()).unwrap_or("cache.json").to_string();
        let saved = async {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(folder)?;
            crate::files::write_atomic(folder, &name, &bytes).await
        }
        .await;
        if let Err(e) = saved {
            tracing::debug!(path = %self.path.display(), error = %format!("{e:#}"), "cannot save the manifest cache");
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
        let entry = Entry { version: v(Some("\"abc\""), 100), size: 2, manifest: "{}".into() };
        let cache: HashMap<String, Entry> = [("p/a.manifest.json".to_string(), entry)].into();
        let key = "p/a.manifest.json";
        assert!(hit(&cache, key, &v(Some("\"abc\""), 999), 2).is_some(), "the ETag decides where listed");
        assert!(hit(&cache, key, &v(Some("\"abd\""), 100), 2).is_none(), "another ETag");
        assert!(hit(&cache, key, &v(Some("\"abc\""), 100), 3).is_none(), "another size");
        assert!(hit(&cache, key, &v(None, 100), 2).is_some(), "no ETag listed: the time decides");
        assert!(hit(&cache, key, &v(None, 101), 2).is_none(), "a later time");
        assert!(hit(&cache, "p/b.manifest.json", &v(Some("\"abc\""), 100), 2).is_none());
        let lying = Entry { version: v(None, 100), size: 2, manifest: "{\"x\":1}".into() };
        let cache: HashMap<String, Entry> = [("k".to_string(), lying)].into();
        assert!(hit(&cache, "k", &v(None, 100), 2).is_none(), "cached bytes of another size");
        let unlisted = Entry { version: v(None, 100), size: 2, manifest: "{}".into() };
        let cache: HashMap<String, Entry> = [("k".to_string(), unlisted)].into();
        assert!(hit(&cache, "k", &v(Some("\"abc\""), 100), 2).is_none(), "read without an ETag, listed with one");
    }
}
