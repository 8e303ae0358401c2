//! Man pages and shell completions, generated from the CLI definition (clap) and the config reference,
//! so the manuals cannot drift from the program. `etcd-backupd generate DIR` writes them for packaging.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::args::Cli;
use crate::config::reference::TABLES;

/// Escapes text for a roff line: backslashes, and a leading dot or quote that would read as a request.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with('.') || escaped.starts_with('\'') { format!("\\&{escaped}") } else { escaped }
}

/// etcd-backupd(8): clap's page, then each command with its arguments, then files, exit codes, and more.
pub fn main_page() -> Result<String> {
    let cmd = Cli::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).section("8").render(&mut buf).context("cannot render the man page")?;
    let mut page = String::from_utf8(buf).context("the man page is not UTF-8")?;
    // clap lists commands as if each had its own page; they are all described here.
    for sub in cmd.get_subcommands() {
        let name = roff(sub.get_name());
        page = page.replace(&format!("etcd\\-backupd\\-{name}(8)"), &format!("etcd\\-backupd {name}"));
    }
    page.push_str(".SH \"COMMANDS IN DETAIL\"\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let _ = writeln!(page, ".SS \"etcd\\-backupd {}\"", roff(sub.get_name()));
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            let _ = writeln!(page, "{}", roff(&about.to_string()));
        }
        for arg in sub.get_arguments().filter(|a| !a.is_hide_set() && a.get_id() != "help" && a.get_id() != "config") {
            let takes_value = matches!(arg.get_action(), clap::ArgAction::Set | clap::ArgAction::Append);
            let value =
                arg.get_value_names().map(|v| v.join(" ")).unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
            let name = match arg.get_long() {
                Some(long) if takes_value => format!("\\fB\\-\\-{}\\fR \\fI{}\\fR", roff(long), roff(&value)),
                Some(long) => format!("\\fB\\-\\-{}\\fR", roff(long)),
                None => format!("\\fI{}\\fR", roff(&value)),
            };
            let _ = writeln!(page, ".TP\n{name}");
            let mut help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
            let defaults: Vec<String> =
                arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            if !defaults.is_empty() {
                let _ = write!(help, " (default: {})", defaults.join(", "));
            }
            let _ = writeln!(page, "{}", roff(&help));
        }
    }
    page.push_str(&roff_sections(&[
        (
            "FILES",
            &[
                ("/etc/etcd\\-backupd.toml", "the configuration; see etcd-backupd.toml(5)"),
                (
                    "/var/lib/etcd\\-backupd",
                    "the state dir ($STATE_DIRECTORY): state.json, the run lock, and by default the local backups",
                ),
                ("/usr/lib/systemd/system/etcd\\-backupd.service", "the daemon (etcd-backupd run)"),
                (
                    "/usr/lib/systemd/system/etcd\\-backupd.timer",
                    "one-shot mode instead of the daemon: runs etcd-backupd-once.service",
                ),
                (
                    "/usr/lib/systemd/system/etcd\\-backupd\\-drill.timer",
                    "a weekly restore drill (Persistent=true) on a verification host: runs etcd-backupd-drill.service, which drills the newest backup with the identity handed over as the systemd credential 'identity' (LoadCredential=identity:/etc/etcd-backupd/drill-identity.txt); such a host's config needs no [etcd] table",
                ),
                (
                    "/etc/etcd\\-backupd/drill\\-identity.txt",
                    "the age identity (root, 0600) that etcd-backupd-drill.service reads as a credential",
                ),
            ],
        ),
        (
            "EXIT STATUS",
            &[
                ("0", "success"),
                ("1", "failure: the message names what to fix; nothing half-written looks like a backup"),
                ("2", "a bad command line"),
                ("78", "the configuration is not usable (EX_CONFIG); every problem is listed with file:line:column"),
                ("130", "interrupted by SIGINT or SIGTERM: what the run had written is removed (at once on a second signal)"),
            ],
        ),
        (
            "ENVIRONMENT",
            &[
                ("ETCD_BACKUPD_CONFIG", "the config file, instead of /etc/etcd-backupd.toml"),
                ("ETCD_BACKUPD_LOG", "the log filter, e.g. debug (default info)"),
                ("ETCD_BACKUPD_LOG_TARGET", "journal or stderr; default: the journal when stderr is connected to it"),
                ("STATE_DIRECTORY", "the state dir, as systemd's StateDirectory= sets it"),
                (
                    "AWS_*",
                    "S3 credentials and settings through the standard AWS chain (AWS_ACCESS_KEY_ID, AWS_PROFILE, ...); best as a systemd credential with AWS_SHARED_CREDENTIALS_FILE=%d/aws",
                ),
            ],
        ),
    ]));
    page.push_str(".SH \"SEE ALSO\"\netcd\\-backupd.toml(5), age(1), etcdctl(1), journalctl(1), systemd.service(5)\n");
    Ok(page)
}

fn roff_sections(sections: &[(&str, &[(&str, &str)])]) -> String {
    let mut out = String::new();
    for (title, items) in sections {
        let _ = writeln!(out, ".SH \"{title}\"");
        for (term, text) in *items {
            // Terms are written pre-escaped; only the explanation is escaped here.
            let _ = writeln!(out, ".TP\n\\fB{term}\\fR\n{}", roff(text));
        }
    }
    out
}

/// etcd-backupd.toml(5), from the config reference.
pub fn config_page() -> String {
    let version = env!("CARGO_PKG_VERSION");
    let mut page = format!(".TH ETCD\\-BACKUPD.TOML 5 \"\" \"etcd-backupd {version}\"\n");
    page.push_str(".SH NAME\netcd\\-backupd.toml \\- configuration of etcd\\-backupd\n");
    page.push_str(".SH DESCRIPTION\n");
    page.push_str(&roff(
        "etcd-backupd reads /etc/etcd-backupd.toml (or --config, or $ETCD_BACKUPD_CONFIG). It is TOML. Durations are written like \"10s\", \"30m\", \"7d\"; sizes like \"16MiB\". Unknown keys are errors, and every error names the file, line, column and key. `etcd-backupd check-config` checks the file and the files it names. The daemon rereads it on SIGHUP (systemctl reload etcd-backupd) and keeps the running configuration if the new one is not valid.",
    ));
    page.push('\n');
    for table in TABLES {
        let _ = writeln!(page, ".SH \"[{}]\"\n{}", table.name, roff(table.about));
        for k in table.keys {
            let _ = writeln!(page, ".TP\n\\fB{}\\fR (default: {})\n{}", roff(k.name), roff(k.default), roff(k.meaning));
        }
    }
    page.push_str(".SH RETENTION\n");
    page.push_str(&roff(
        "Each destination has its own policy, applied after that destination commits a backup and by `etcd-backupd prune`. A backup kept by any rule is kept; calendar periods use [schedule] timezone. The newest committed backup and pinned backups are never removed. A policy without any keep_* rule is refused.",
    ));
    page.push_str("\n.SH EXAMPLE\n.nf\n");
    for line in include_str!("../config/etcd-backupd.toml").lines() {
        let _ = writeln!(page, "{}", roff(line));
    }
    page.push_str(".fi\n.SH \"SEE ALSO\"\netcd\\-backupd(8)\n");
    page
}

/// Writes etcd-backupd.8, etcd-backupd.toml.5 and the bash, zsh and fish completions into `dir`.
pub fn generate(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    std::fs::write(dir.join("etcd-backupd.8"), main_page()?)?;
    std::fs::write(dir.join("etcd-backupd.toml.5"), config_page())?;
    let mut cmd = Cli::command();
    for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "etcd-backupd", dir)
            .with_context(|| format!("cannot write the {shell} completion"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_page_describes_every_command_and_option() {
        let page = main_page().unwrap();
        assert!(page.contains(".TH etcd-backupd 8"), "{}", &page[..200]);
        for sub in Cli::command().get_subcommands().filter(|s| !s.is_hide_set()) {
            assert!(page.contains(&format!(".SS \"etcd\\-backupd {}\"", roff(sub.get_name()))), "{}", sub.get_name());
            for arg in sub.get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != "help" && *l != "config") {
                assert!(page.contains(&format!("\\-\\-{}", roff(arg))), "--{arg} of {}", sub.get_name());
            }
        }
        assert!(!page.contains("generate"), "the packaging helper stays out of the manual");
        assert!(!page.contains("check\\-config(8)"), "no pages that do not exist");
        assert!(page.contains(".SH \"EXIT STATUS\"") && page.contains("EX_CONFIG"));
    }

    #[test]
    fn the_config_page_has_every_key() {
        let page = config_page();
        for table in TABLES {
            assert!(page.contains(&format!(".SH \"[{}]\"", table.name)), "{}", table.name);
            for k in table.keys {
                assert!(page.contains(&format!("\\fB{}\\fR (default: ", roff(k.name))), "{}", k.name);
            }
        }
        // No line of the example may read as a roff request.
        assert!(page.lines().all(|l| !l.starts_with('\'')));
        assert!(
            page.contains("\n\\&.") || !include_str!("../config/etcd-backupd.toml").lines().any(|l| l.starts_with('.'))
        );
    }

    #[test]
    fn roff_escapes_what_roff_would_interpret() {
        assert_eq!(roff("a\\b"), "a\\eb");
        assert_eq!(roff(".hidden"), "\\&.hidden");
        assert_eq!(roff("--flag"), "\\-\\-flag");
    }
}
