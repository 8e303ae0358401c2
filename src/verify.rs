//! Verify: every copy of one backup checked against the manifest stored beside it (one damaged manifest
//! condemns one copy): by size and sha256, which needs no key, or, given an identity, by decrypting it
//! and checking the database inside.

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use crate::restore::{Found, Identities};
use crate::snapshot::bbolt::Status;
use crate::store::Kind;

/// How one copy checked out: `Some(status)` when it was decrypted, `None` when only its size and sha256
/// were checked.
pub struct CopyCheck {
    pub destination: Kind,
    pub result: Result<Option<Status>>,
}

/// What a check proves: "decrypted" with an identity, "sha256" without.
pub fn depth(identities: Option<&Identities>) -> &'static str {
    if identities.is_some() { "decrypted" } else { "sha256" }
}

/// Checks every copy of `found`, in the holders' order (local first), handing each to `each` as soon as
/// it is checked. Nothing is left behind: a download or a decrypted snapshot goes with the scratch dir.
pub async fn check_copies(
    found: &Found<'_>,
    identities: Option<&Identities>,
    cancel: &CancellationToken,
    mut each: impl FnMut(CopyCheck),
) -> Result<()> {
    let scratch = crate::scratch::scratch_dir()?;
    for (holder, stored) in &found.holders {
        let m = &stored.manifest;
        let result = async {
            if m.files.is_some() {
                // Its files archive: size and sha256, and with an identity every file's sha256.
                let into = crate::restore::files::Into::CheckOnly;
                crate::restore::files::open_copy(holder, m, identities, scratch.path(), &into, cancel).await?;
            }
            if let Some(ids) = identities {
                // Decrypting checks the artifact's size and sha256 too.
                let plain = scratch.path().join("plain.db");
                let checked = crate::restore::fetch_and_decrypt(
                    holder,
                    m,
                    ids,
                    scratch.path(),
                    &plain,
                    crate::restore::Keep::Scratch,
                    cancel,
                )
                .await;
                let _ = std::fs::remove_file(&plain);
                return anyhow::Ok(Some(checked?.status));
            }
            // The artifact's size and sha256 against the manifest, read as a stream.
            crate::restore::check_copy(holder, m, cancel).await?;
            anyhow::Ok(None)
        }
        .await;
        each(CopyCheck { destination: holder.kind(), result });
    }
    Ok(())
}
