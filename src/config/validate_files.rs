//! `[files]`: the control-plane files archived beside each snapshot. Pure.

use std::path::PathBuf;

use super::keys::path_key;
use super::raw::RawFiles;
use super::settings::{FilesSettings, Issue};
use crate::archive::preset::Preset;

pub(super) fn validate_files(raw: RawFiles, issues: &mut Vec<Issue>) -> FilesSettings {
    let preset = match raw.preset.as_deref() {
        None => None,
        Some(name) => Preset::parse(name).or_else(|| {
            issues.push(Issue::new(
                "files.preset",
                format!("\"{name}\" is not a preset: expected \"kubeadm\", \"k3s\" or \"rke2\" (or list files.paths)"),
            ));
            None
        }),
    };
    let mut paths = Vec::new();
    for (i, p) in raw.paths.unwrap_or_default().into_iter().enumerate() {
        let key = format!("files.paths[{i}]");
        if p.split('/').any(|c| c == "..") {
            issues.push(Issue::new(key, format!("\"{p}\" climbs with '..': give the path it means")));
        } else if let Some(path) = path_key(Some(p), &key, issues) {
            paths.push(path);
        }
    }
    let mut exclude = Vec::new();
    for (i, e) in raw.exclude.unwrap_or_default().into_iter().enumerate() {
        match glob::Pattern::new(&e) {
            Ok(pattern) => exclude.push(pattern),
            Err(why) => issues.push(Issue::new(format!("files.exclude[{i}]"), format!("\"{e}\" is not a glob: {why}"))),
        }
    }
    if preset.is_none() && paths.is_empty() && issues.iter().all(|i| !i.key.starts_with("files.")) {
        issues.push(Issue::new(
            "files",
            "names nothing to archive: set preset (\"kubeadm\", \"k3s\" or \"rke2\") or paths, or remove the table",
        ));
    }
    let mut recipients = Vec::new();
    for (i, r) in raw.recipients.unwrap_or_default().iter().enumerate() {
        match crate::crypto::PublicKey::parse(r) {
            Ok(key) => recipients.push(key),
            Err(e) => issues.push(Issue::new(format!("files.recipients[{i}]"), e)),
        }
    }
    let recipients_file: Option<PathBuf> = path_key(raw.recipients_file, "files.recipients_file", issues);
    FilesSettings { preset, paths, exclude, recipients, recipients_file }
}
