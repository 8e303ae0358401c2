//! Configuration: the TOML file → raw serde structs → validated `Settings`. Errors name file, line and key.

mod keys;
mod raw;
pub mod reference;
mod settings;
mod typecheck;
pub mod units;
mod validate;
mod validate_deltas;
mod validate_files;
mod validate_s3;

use std::fmt;
use std::path::{Path, PathBuf};

pub use raw::RawConfig;
pub use settings::*;
pub use validate::validate;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/etcd-backupd.toml";

/// A config problem placed in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub key: String,
    pub message: String,
}

/// Why a config could not be used. Displays one line per problem, each naming file, line and key.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Located>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match (p.line, p.column) {
                (Some(l), Some(c)) => write!(f, "{file}:{l}:{c}: ")?,
                (Some(l), None) => write!(f, "{file}:{l}: ")?,
                _ => write!(f, "{file}: ")?,
            }
            if p.key.is_empty() {
                write!(f, "{}", p.message)?;
            } else {
                write!(f, "{}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses, validates the config at `path`, and checks the files it names.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Located {
            line: None,
            column: None,
            key: String::new(),
            message: format!(
                "cannot read the config file: {e} (pass another file with --config or $ETCD_BACKUPD_CONFIG; the package installs a commented one at /etc/etcd-backupd.toml, and etcd-backupd.toml(5) describes every key)"
            ),
        }],
    })?;
    let fail = |problems| ConfigError { file: path.to_path_buf(), problems };
    let mut settings = parse(&text).map_err(fail)?;
    let issues = resolve_files(&mut settings);
    if issues.is_empty() { Ok(settings) } else { Err(fail(issues.into_iter().map(|i| place(&text, i)).collect())) }
}

/// Parses and validates config text, reporting every problem at once, sorted by line. Pure.
pub fn parse(text: &str) -> Result<Settings, Vec<Located>> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| vec![toml_error(text, "", &e)])?;
    let mistyped = typecheck::take_mistyped(&mut table);
    let mut removed: Vec<String> = mistyped.iter().map(|i| i.key.clone()).collect();
    let mut problems: Vec<Located> = mistyped.into_iter().map(|i| place(text, i)).collect();
    // Each refusal of the parser (an unknown key, mostly) is reported, its key removed, and the rest read
    // again, so one mistake does not hide the next. Every round removes a key, so this ends.
    let raw = loop {
        match serde_path_to_error::deserialize::<_, RawConfig>(toml::Value::Table(table.clone())) {
            Ok(raw) => break Some(raw),
            Err(e) => {
                let path = e.path().to_string();
                let key = if path == "." { "" } else { &path };
                let mut problem = toml_error(text, key, e.inner());
                if let Some(offset) = locate(text, key, false) {
                    let (line, column) = line_col(text, offset);
                    (problem.line, problem.column) = (Some(line), Some(column));
                }
                problems.push(problem);
                if !remove_path(&mut table, key) {
                    break None;
                }
                removed.push(key.to_string());
            }
        }
    };
    if let Some(raw) = raw {
        match validate(raw) {
            Ok(settings) if problems.is_empty() => return Ok(settings),
            Ok(_) => {}
            // A key already reported was removed: that it, or its table, now lacks a value is not news.
            Err(issues) => problems.extend(
                issues
                    .into_iter()
                    .filter(|i| !removed.iter().any(|r| r == &i.key || r.starts_with(&format!("{}.", i.key))))
                    .map(|i| place(text, i)),
            ),
        }
    }
    problems.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
    Err(problems)
}

/// Removes the key at a serde path such as `etcd.endpoints[1]` (the whole list, then). False when there is
/// nothing there to remove.
fn remove_path(table: &mut toml::Table, path: &str) -> bool {
    let parts: Vec<&str> = path.split('.').map(|p| p.split('[').next().unwrap_or(p)).collect();
    let Some((last, parents)) = parts.split_last() else { return false };
    let parent = parents.iter().try_fold(table, |t, part| t.get_mut(*part)?.as_table_mut());
    !last.is_empty() && parent.and_then(|t| t.remove(*last)).is_some()
}

fn toml_error(text: &str, key: &str, e: &toml::de::Error) -> Located {
    let (line, column) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    // A syntax error without a key path (a duplicate table or key) points at the key itself: name it.
    let spanned = e.span().and_then(|span| text.get(span)).map(|t| t.trim_matches('"'));
    let key = match spanned {
        Some(t) if key.is_empty() && is_bare_key(t) => t,
        _ => key,
    };
    let mut message = e.message().trim().to_string();
    if message.starts_with("unknown field") {
        message.push_str(" (check the spelling; see etcd-backupd.toml(5) for every key)");
    }
    Located { line, column, key: key.to_string(), message }
}

fn is_bare_key(t: &str) -> bool {
    (1..=64).contains(&t.len()) && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Puts a validation issue on the line of its key (or of its table, when the key is absent).
fn place(text: &str, issue: Issue) -> Located {
    let pos = locate(text, &issue.key, true).map(|off| line_col(text, off));
    Located { line: pos.map(|p| p.0), column: pos.map(|p| p.1), key: issue.key, message: issue.message }
}

/// Byte offset of the value of a dotted key like `etcd.endpoints[1]` (of the key itself when `at_value` is
/// false), or of the nearest enclosing key present.
fn locate(text: &str, key: &str, at_value: bool) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let root = DeTable::parse(text).ok()?;
    let mut table = root.get_ref();
    let mut best = None;
    for part in key.split('.') {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some((k, value)) = table.iter().find(|(k, _)| k.get_ref() == name) else {
            break;
        };
        best = Some(k.span().start);
        let mut value = value;
        if let (Some(i), DeValue::Array(items)) = (index, value.get_ref())
            && let Some(item) = items.get(i)
        {
            best = Some(item.span().start);
            value = item;
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => {
                if index.is_none() && at_value {
                    best = Some(value.span().start);
                }
                break;
            }
        }
    }
    best
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Checks the files the settings name (readable, plausible contents) and reads the recipients file.
fn resolve_files(settings: &mut Settings) -> Vec<Issue> {
    let mut issues = Vec::new();
    if let Some(etcd) = &settings.etcd {
        if let Some(ca) = &etcd.cacert {
            check_pem_file("etcd.cacert", ca, "CERTIFICATE", &mut issues);
        }
        if let Some(cc) = &etcd.client_cert {
            check_pem_file("etcd.cert", &cc.cert, "CERTIFICATE", &mut issues);
            check_pem_file("etcd.key", &cc.key, "PRIVATE KEY", &mut issues);
        }
        if let Some(auth) = &etcd.auth
            && let Err(e) = read_config_file(&auth.password_file)
        {
            issues.push(Issue::new("etcd.password_file", e));
        }
    }
    if let Some(s3) = &settings.s3
        && let Some(ca) = &s3.ca_file
    {
        check_pem_file("s3.ca_file", ca, "CERTIFICATE", &mut issues);
    }

    if let Some(textfile) = &settings.metrics_textfile
        && let Some(dir) = textfile.parent()
        && !dir.is_dir()
    {
        issues.push(Issue::new(
            "metrics.textfile",
            format!(
                "the folder '{}' does not exist: create it (node_exporter's --collector.textfile.directory), or remove the key",
                dir.display()
            ),
        ));
    }

    if let Some(identity) = &settings.drill.identity_file
        && let Err(e) = crate::crypto::read_identities(identity)
    {
        issues.push(Issue::new("drill.identity_file", e));
    }

    let enc = &mut settings.encryption;
    if let Some(file) = &enc.recipients_file {
        read_recipients_file(file, "encryption.recipients_file", &mut enc.recipients, &mut issues);
    }
    let mut seen = std::collections::HashSet::new();
    enc.recipients.retain(|r| seen.insert(r.clone()));
    let default_recipients = enc.recipients.clone();
    if let Some(files) = &mut settings.files {
        if let Some(file) = &files.recipients_file {
            read_recipients_file(file, "files.recipients_file", &mut files.recipients, &mut issues);
        }
        // The CA keys may go to a smaller set of people; by default, to those of the snapshots.
        if files.recipients.is_empty() {
            files.recipients = default_recipients;
        }
    }
    let enc = &mut settings.encryption;
    if enc.recipients.is_empty() && issues.iter().all(|i| i.key != "encryption.recipients_file") {
        issues.push(Issue::new(
            "encryption.recipients",
            "no recipients: backups are always encrypted; add at least one age public key (age1…) or SSH public key to encryption.recipients or encryption.recipients_file. Make the key pair on a machine that is not this host (`age-keygen -o backup-key.txt`) and copy only the public key here",
        ));
    }
    issues
}

/// Adds the recipients listed in `file` (the config's `key`) to `list`, or says what is wrong with it.
fn read_recipients_file(file: &Path, key: &str, list: &mut Vec<crate::crypto::PublicKey>, issues: &mut Vec<Issue>) {
    match std::fs::read_to_string(file) {
        Err(e) => issues.push(Issue::new(key, unreadable(file, &e))),
        Ok(text) => match crate::crypto::parse_recipients_text(&text) {
            Ok(found) => list.extend(found),
            Err((line, e)) => issues.push(Issue::new(key, format!("{}:{line}: {e}", file.display()))),
        },
    }
}

/// Secrets the config names that every user of this host may read. ssh refuses such a private key; a
/// backup tool that refused would take no backups, so these are warnings (check-config prints them, a
/// backup or the daemon logs them). Group-readable is fine: a group is how a key is shared on purpose.
pub fn secret_warnings(settings: &Settings) -> Vec<Issue> {
    use std::os::unix::fs::PermissionsExt;
    let mut secrets: Vec<(&str, &Path)> = Vec::new();
    if let Some(cc) = settings.etcd.as_ref().and_then(|e| e.client_cert.as_ref()) {
        secrets.push(("etcd.key", &cc.key));
    }
    if let Some(auth) = settings.etcd.as_ref().and_then(|e| e.auth.as_ref()) {
        secrets.push(("etcd.password_file", &auth.password_file));
    }
    if let Some(identity) = &settings.drill.identity_file {
        secrets.push(("drill.identity_file", identity));
    }
    secrets
        .into_iter()
        .filter_map(|(key, path)| {
            let mode = std::fs::metadata(path).ok()?.permissions().mode();
            world_readable(mode).then(|| {
                Issue::new(
                    key,
                    format!(
                        "'{}' is readable by every user of this host (mode {:04o}): run `chmod o-rwx {}`",
                        path.display(),
                        mode & 0o7777,
                        path.display()
                    ),
                )
            })
        })
        .collect()
}

/// Whether a file mode lets every user read the file.
pub fn world_readable(mode: u32) -> bool {
    mode & 0o004 != 0
}

/// Reads a file the config names. A file this user may not read (kubeadm's client key is root's, mode
/// 0600, and the service runs as etcd-backupd) is taken from the systemd credential of the same base name
/// when the unit loads one (`LoadCredential=NAME:PATH`); otherwise the error says how to set that up.
pub fn read_config_file(path: &Path) -> Result<Vec<u8>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            if let (Some(dir), Some(name)) = (std::env::var_os("CREDENTIALS_DIRECTORY"), path.file_name())
                && let Ok(bytes) = std::fs::read(Path::new(&dir).join(name))
            {
                return Ok(bytes);
            }
            Err(unreadable(path, &e))
        }
        Err(e) => Err(unreadable(path, &e)),
    }
}

fn check_pem_file(key: &str, path: &Path, kind: &str, issues: &mut Vec<Issue>) {
    match read_config_file(path) {
        Err(e) => issues.push(Issue::new(key, e)),
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            if !text.contains("-----BEGIN ") || !text.contains(kind) {
                issues.push(Issue::new(
                    key,
                    format!(
                        "'{}' does not hold a PEM {}: expected a file with a \"-----BEGIN {}\" block",
                        path.display(),
                        kind.to_lowercase(),
                        kind
                    ),
                ));
            }
        }
    }
}

fn unreadable(path: &Path, e: &std::io::Error) -> String {
    let hint = match e.kind() {
        std::io::ErrorKind::NotFound => "check the path".to_string(),
        std::io::ErrorKind::PermissionDenied => {
            let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map_or_else(|| nix::unistd::geteuid().to_string(), |u| u.name);
            let name = path.file_name().map_or_else(|| "key".into(), |n| n.to_string_lossy());
            format!(
                "etcd-backupd runs as user {user}, which may not read it. Let systemd hand it over: run `systemctl edit etcd-backupd` and add\n    [Service]\n    LoadCredential={name}:{}\n  (for kubeadm, /usr/share/doc/etcd-backupd/examples/kubeadm-credentials.conf is that drop-in). Or give {user} read access, e.g. through a group",
                path.display()
            )
        }
        _ => "check the file".to_string(),
    };
    format!("cannot read '{}': {e}; {hint}", path.display())
}

#[cfg(test)]
mod tests;
