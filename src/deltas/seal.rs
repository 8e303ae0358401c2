//! A segment body sealed for storage (zstd, then age to the public recipients), and opened again for a
//! restore with every check a manifest allows: the artifact's size and sha256, then the body's. Over
//! bytes in memory: a segment is small (`[deltas] max_size`).

use std::io::{Read, Write};

use sha2::{Digest, Sha256};

use super::manifest::SegmentManifest;
use crate::crypto::PublicKey;
use crate::manifest::Compression;

/// A sealed body: the artifact to store, and its facts for the manifest.
pub struct Sealed {
    pub artifact: Vec<u8>,
    pub sha256: String,
}

/// Compresses and encrypts `body` to `recipients`.
pub fn seal(body: &[u8], compression: Compression, recipients: &[PublicKey]) -> Result<Sealed, String> {
    let mut encrypted = crate::crypto::encrypt_to(recipients, Vec::with_capacity(body.len() / 2 + 1024))?;
    let failed = |e: std::io::Error| format!("cannot seal a delta segment: {e}");
    match compression {
        Compression::Zstd { level } => {
            let mut zstd = zstd::stream::write::Encoder::new(&mut encrypted, level).map_err(failed)?;
            zstd.write_all(body).map_err(failed)?;
            zstd.finish().map_err(failed)?;
        }
        Compression::None => encrypted.write_all(body).map_err(failed)?,
    }
    let artifact = encrypted.finish().map_err(failed)?;
    let sha256 = hex::encode(Sha256::digest(&artifact));
    Ok(Sealed { artifact, sha256 })
}

/// Why a stored segment could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The artifact or what it holds is not what the manifest committed: damaged or replaced.
    #[error("{0}")]
    Damaged(String),
    /// None of the identities is a recipient of the segment.
    #[error("cannot decrypt {id}: no identity given is one of its recipients (the manifest lists them)")]
    NoKey { id: String },
}

/// Opens `artifact` as the segment `manifest` commits: its size and sha256 first, then decrypted and
/// decompressed to at most the body size the manifest records, whose sha256 it must have.
pub fn open(
    artifact: &[u8],
    manifest: &SegmentManifest,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<Vec<u8>, OpenError> {
    let id = &manifest.id;
    let damaged = |why: String| OpenError::Damaged(format!("segment {id} {why}"));
    let sha256 = hex::encode(Sha256::digest(artifact));
    if artifact.len() as u64 != manifest.artifact.size || sha256 != manifest.artifact.sha256 {
        return Err(damaged(format!(
            "is {} bytes with sha256 {sha256}, its manifest says {} bytes with sha256 {}: damaged or replaced",
            artifact.len(),
            manifest.artifact.size,
            manifest.artifact.sha256
        )));
    }
    let decryptor = age::Decryptor::new(artifact).map_err(|e| damaged(format!("is not an age file: {e}")))?;
    let decrypted =
        decryptor.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity)).map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => OpenError::NoKey { id: id.to_string() },
            e => damaged(format!("cannot be decrypted: {e}")),
        })?;
    let plain: Box<dyn Read> = match manifest.compression() {
        Compression::Zstd { .. } => {
            Box::new(zstd::stream::read::Decoder::new(decrypted).map_err(|e| damaged(format!("cannot be read: {e}")))?)
        }
        Compression::None => Box::new(decrypted),
    };
    // One byte past the recorded size tells a longer body without reading all of it.
    let limit = manifest.body.size.saturating_add(1);
    let mut body = Vec::with_capacity(usize::try_from(manifest.body.size.min(1 << 26)).unwrap_or(0));
    plain.take(limit).read_to_end(&mut body).map_err(|e| damaged(format!("is corrupt: {e}")))?;
    let sha256 = hex::encode(Sha256::digest(&body));
    if body.len() as u64 != manifest.body.size || sha256 != manifest.body.sha256 {
        return Err(damaged(format!(
            "holds a body of {} bytes with sha256 {sha256}, its manifest says {} bytes with sha256 {}",
            body.len(),
            manifest.body.size,
            manifest.body.sha256
        )));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deltas::manifest::BodyFacts;
    use crate::deltas::manifest::tests::segment;
    use crate::manifest::CompressionName;
    use age::secrecy::ExposeSecret;

    fn key() -> (age::x25519::Identity, PublicKey) {
        let identity = age::x25519::Identity::generate();
        let public = PublicKey::parse(&identity.to_public().to_string()).unwrap();
        (identity, public)
    }

    fn committed(body: &[u8], compression: Compression, recipient: &PublicKey) -> (Vec<u8>, SegmentManifest) {
        let sealed = seal(body, compression, std::slice::from_ref(recipient)).unwrap();
        let mut m = segment(1);
        m.body = BodyFacts { size: body.len() as u64, sha256: hex::encode(Sha256::digest(body)) };
        m.artifact.size = sealed.artifact.len() as u64;
        m.artifact.sha256 = sealed.sha256;
        (m.artifact.compression, m.artifact.compression_level) = (compression.kind(), compression.level());
        (sealed.artifact, m)
    }

    fn boxed(identity: &age::x25519::Identity) -> Vec<Box<dyn age::Identity + Send + Sync>> {
        let text = identity.to_string();
        vec![Box::new(text.expose_secret().parse::<age::x25519::Identity>().unwrap())]
    }

    #[test]
    fn a_sealed_body_opens_with_the_recipients_identity_only() {
        let (identity, public) = key();
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        for compression in [Compression::Zstd { level: 3 }, Compression::None] {
            let (artifact, m) = committed(&body, compression, &public);
            assert_eq!(open(&artifact, &m, &boxed(&identity)).unwrap(), body);
            assert!(matches!(open(&artifact, &m, &boxed(&key().0)), Err(OpenError::NoKey { .. })));
        }
        assert_eq!(CompressionName::Zstd, Compression::Zstd { level: 3 }.kind());
    }

    #[test]
    fn a_changed_artifact_or_a_manifest_that_lies_about_the_body_is_damage() {
        let (identity, public) = key();
        let body = b"etcd-backupd delta 1\nsome revisions".to_vec();
        let (artifact, m) = committed(&body, Compression::Zstd { level: 3 }, &public);
        let mut flipped = artifact.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let mut shorter = m.clone();
        shorter.body.size -= 1;
        let mut longer = m.clone();
        longer.body.size += 1;
        let mut other_hash = m.clone();
        other_hash.body.sha256 = "ab".repeat(32);
        let cases: [(&[u8], &SegmentManifest, &str); 5] = [
            (&flipped, &m, "damaged or replaced"),
            (&artifact[..last], &m, "damaged or replaced"),
            (&artifact, &shorter, "holds a body of"),
            (&artifact, &longer, "holds a body of"),
            (&artifact, &other_hash, "holds a body of"),
        ];
        for (artifact, m, why) in cases {
            match open(artifact, m, &boxed(&identity)) {
                Err(OpenError::Damaged(message)) => assert!(message.contains(why), "{message}"),
                other => panic!("{why}: {:?}", other.map(|b| b.len())),
            }
        }
        // The hash agrees (the manifest was written for it) but the artifact is not age.
        let mut planted = m.clone();
        planted.artifact.size = 5;
        planted.artifact.sha256 = hex::encode(Sha256::digest(b"hello"));
        assert!(
            matches!(open(b"hello", &planted, &boxed(&identity)), Err(OpenError::Damaged(m)) if m.contains("not an age file"))
        );
    }
}
