//! Interruption of one-shot commands: SIGINT or SIGTERM cancels a token that the command's steps
//! check, so each step stops and its owners clean up (scratch files, `.part` files, child processes)
//! before the process exits. A second signal exits at once; what is left then is removed by the next run
//! (`scratch`) or dies with the process (children started with `die_with_parent`).

use std::os::unix::process::CommandExt;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Exit code of an interrupted command (after cleaning up, or at once on a second signal): 128 + SIGINT,
/// as shells report it.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The error a step returns when it stopped because the command was interrupted.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by a signal: stopped, and removed what this run had written")]
pub struct Interrupted;

/// A token cancelled by the first SIGINT or SIGTERM; the second one exits the process at once.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        tracing::warn!("cannot listen for SIGINT and SIGTERM; an interrupted command may leave scratch files");
        return token;
    };
    tokio::spawn(async move {
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        tracing::warn!("interrupted: stopping and cleaning up (a second signal exits at once)");
        cancel.cancel();
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    });
    token
}

/// Whether `e` says the command was interrupted (a step's `Interrupted`, or a failure of cause
/// `Cancelled`).
pub fn was_interrupted(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Interrupted>()) || crate::errors::cause_of(e) == Some(crate::errors::Cause::Cancelled)
}

/// `Err(Interrupted)` once `cancel` is cancelled.
pub fn check(cancel: &CancellationToken) -> Result<(), Interrupted> {
    if cancel.is_cancelled() { Err(Interrupted) } else { Ok(()) }
}

/// A child that is ours alone: it gets only the environment it needs (PATH and the locale: not
/// systemd's NOTIFY_SOCKET, with which a drill's etcd would tell systemd it is the service, not AWS
/// credentials, not the operator's ETCD_* variables, each of which etcd reads as a flag); the kernel
/// kills it with SIGKILL when the thread that started it ends, so
/// a process of ours that is killed (even with SIGKILL) never leaves a child running; and it has a
/// process group of its own, so a Ctrl-C at the terminal reaches us (who stop it and clean up) rather
/// than it. Start such children from a thread that lives as long as they must (the main thread or the
/// runtime's workers; a blocking-pool thread only with `output()`, which waits on that thread): a
/// blocking-pool thread that ends when idle would take the child with it.
pub fn die_with_parent(cmd: &mut std::process::Command) -> &mut std::process::Command {
    let parent = nix::unistd::getpid();
    cmd.env_clear();
    for keep in ["PATH", "LANG", "LC_ALL", "TZ"] {
        if let Some(v) = std::env::var_os(keep) {
            cmd.env(keep, v);
        }
    }
    cmd.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2) and
    // getppid(2), which are async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The parent died between fork and prctl: nobody would ever be told.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::other("the parent exited while starting this child"));
            }
            Ok(())
        })
    }
}

/// The error of a backup cancelled because etcd-backupd is stopping, typed as `Cause::Cancelled`.
pub fn cancelled() -> anyhow::Error {
    crate::errors::classified(crate::errors::Cause::Cancelled, "the backup was cancelled (etcd-backupd is stopping)")
}
