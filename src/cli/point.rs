//! `restore --revision REV` / `--at TIME`: a backup and its chain of delta segments, replayed to the
//! point, restored as any backup is (a plain snapshot file, or a new data dir with etcd's own tool).

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::config::units::format_size;
use crate::deltas::chain::Target as Point;
use crate::restore::{Keep, Target as RestoreTarget};

use super::{Failure, destinations, print_line};

pub(super) async fn restore_point(
    settings: &Settings,
    point: Point,
    identity: &Path,
    target: RestoreTarget,
    etcd_bin: Option<&Path>,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let identities = std::sync::Arc::new(crate::crypto::read_identities(identity).map_err(|e| anyhow::anyhow!(e))?);
    target.check()?;
    // The replay restores the base and starts a throwaway etcd: both tools found before anything is
    // fetched.
    crate::throwaway::etcd_binary(etcd_bin)?;
    crate::restore::restore_tool(etcd_bin)?;
    let (destinations, _) = destinations(settings).await;
    let chosen = crate::deltas::point::choose(&destinations, point, settings).await?;
    let scratch = crate::scratch::scratch_dir()?;
    let (snapshot, keep) = match &target {
        RestoreTarget::File(file) => (file.clone(), Keep::Durable),
        RestoreTarget::DataDir(..) => (scratch.path().join("point.db"), Keep::Scratch),
    };
    let ask = crate::deltas::point::Ask {
        target: point,
        identities: &identities,
        settings,
        etcd_bin,
        output: &snapshot,
        keep,
        cancel,
    };
    let restored = crate::deltas::point::restore_first_good(&chosen, &ask, scratch.path()).await?;
    for failed in &restored.failed {
        out!("could not restore through {failed}");
    }
    let at = restored.at;
    let from = restored.through.holder.kind();
    let received =
        at.received.map_or(String::new(), |t| format!(", received {}", t.format("%Y-%m-%d %H:%M:%S%.3f UTC")));
    let how = format!(
        "revision {} (backup {} and {} delta segment{} from {from}{received})",
        at.revision,
        at.base,
        at.segments,
        if at.segments == 1 { "" } else { "s" }
    );
    match target {
        RestoreTarget::File(file) => {
            let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
            out!("wrote the snapshot at {how} ({}) to {}", format_size(size), file.display());
            out!(
                "its revision numbers are the original's: `etcdutl snapshot restore {}` checks its hash",
                file.display()
            );
            super::prove::kubernetes_hint();
        }
        RestoreTarget::DataDir(dir, flags, tool_dir) => {
            let bump = crate::restore::restore_into(&snapshot, &dir, &flags, tool_dir.as_deref(), cancel)?;
            let _ = std::fs::remove_file(&snapshot);
            out!("restored {how} into {}", dir.display());
            super::prove::tell_bump(&bump, at.revision);
        }
    }
    Ok(())
}
