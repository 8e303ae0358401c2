//! Where backups are kept: a local directory and, optionally, an S3 bucket. Each destination writes an
//! artifact through an `Upload` that becomes visible only at `commit`, which writes the manifest last.

pub mod local;
pub mod s3;

use bytes::Bytes;

use crate::manifest::{BackupId, Entry, Manifest, classify};

/// A committed backup as one destination holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub manifest: Manifest,
}

/// What a destination holds for one cluster.
#[derive(Debug, Default)]
pub struct Listing {
    /// Committed backups: manifest readable and artifact present with the recorded size. Newest first.
    pub backups: Vec<Stored>,
    /// Names (or keys) that look like ours but are not committed backups, and why.
    pub ignored: Vec<Ignored>,
}

/// One file name and size found in a destination's cluster folder.
pub struct Found {
    pub name: String,
    pub size: u64,
}

/// A manifest worth reading: its artifact is present.
pub struct Candidate {
    pub id: BackupId,
    pub manifest_name: String,
    pub artifact_size: u64,
}

/// A name that looks like ours but is not a committed backup, and why.
pub type Ignored = (String, String);

/// Which manifests to read: those whose artifact is present. Pure.
pub fn pair_up(found: &[Found]) -> (Vec<Candidate>, Vec<Ignored>) {
    let mut artifacts = std::collections::HashMap::new();
    let mut manifests = Vec::new();
    let mut ignored = Vec::new();
    for f in found {
        match classify(&f.name) {
            Entry::Artifact(id) => {
                artifacts.insert(id, (f.name.clone(), f.size));
            }
            Entry::Manifest(id) => manifests.push((id, f.name.clone())),
            Entry::Partial(name) => ignored.push((name, "unfinished write (.part)".to_string())),
            Entry::Foreign => {}
        }
    }
    let mut wanted = Vec::new();
    for (id, manifest_name) in manifests {
        match artifacts.remove(&id) {
            Some((_, artifact_size)) => wanted.push(Candidate { id, manifest_name, artifact_size }),
            None => ignored.push((manifest_name, "manifest without its artifact".to_string())),
        }
    }
    for (_, (name, _)) in artifacts {
        ignored.push((name, "artifact without a manifest (not committed)".to_string()));
    }
    wanted.sort_by(|a, b| b.id.cmp(&a.id));
    ignored.sort();
    (wanted, ignored)
}

/// Checks a manifest read from a destination against the artifact found beside it.
pub fn accept(bytes: &[u8], id: &BackupId, artifact_size: u64) -> Result<Manifest, String> {
    let m = Manifest::from_json(bytes, id)?;
    if m.artifact.size != artifact_size {
        return Err(format!("artifact is {artifact_size} bytes but the manifest says {}", m.artifact.size));
    }
    Ok(m)
}

/// A write in progress to one destination. Nothing is visible until `commit`.
pub enum Upload {
    Local(local::LocalUpload),
    S3(Box<s3::S3Upload>),
}

impl Upload {
    pub fn destination(&self) -> &'static str {
        match self {
            Upload::Local(_) => "local",
            Upload::S3(_) => "s3",
        }
    }

    pub async fn write(&mut self, chunk: Bytes) -> anyhow::Result<()> {
        match self {
            Upload::Local(u) => u.write(chunk).await,
            Upload::S3(u) => u.write(chunk).await,
        }
    }

    /// Makes the artifact durable and visible, then writes the manifest: the commit.
    pub async fn commit(self, manifest: &Manifest) -> anyhow::Result<()> {
        match self {
            Upload::Local(u) => u.commit(manifest).await,
            Upload::S3(u) => (*u).commit(manifest).await,
        }
    }

    /// Removes every trace of the unfinished write.
    pub async fn abort(self) {
        match self {
            Upload::Local(u) => u.abort().await,
            Upload::S3(u) => (*u).abort().await,
        }
    }
}
