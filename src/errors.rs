//! Errors: what kind of failure an error is (decided where its cause is known, carried as a type), and
//! rendering errors for people (every cause once, no debug dumps). Behaviour (retry or not, skip or
//! fail) is decided from the kind, never from the text.

use std::error::Error;
use std::io::ErrorKind;

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The service was unreachable, reset the connection, timed out or was overloaded.
    Transient,
    /// A person has to fix something first: a certificate, credentials, a bucket, the disk, the config.
    Permanent,
}

/// Why something failed, as far as the code that saw it could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Refused, reset, closed, or no route: the service may be back in a moment.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// The service said it is overloaded or failed internally (HTTP 5xx, SlowDown, gRPC Unavailable).
    Busy,
    /// The TLS handshake failed: certificates or the CA.
    Tls,
    /// The service refused who we are: user, password, keys, tokens.
    Auth,
    /// The service knows who we are and refuses the action.
    Denied,
    /// What the config names does not exist (a bucket, a file).
    Missing,
    /// Not enough free space.
    NoSpace,
    /// A backup with this id was already taken.
    Exists,
    /// The config, or a file it names, is wrong.
    Config,
    /// The run was cancelled (SIGTERM, SIGINT).
    Cancelled,
}

impl Cause {
    pub fn kind(self) -> Kind {
        match self {
            Cause::Unreachable | Cause::Timeout | Cause::Busy => Kind::Transient,
            Cause::Tls
            | Cause::Auth
            | Cause::Denied
            | Cause::Missing
            | Cause::NoSpace
            | Cause::Exists
            | Cause::Config
            | Cause::Cancelled => Kind::Permanent,
        }
    }

    /// The cause of several failures together (every endpoint, every destination): transient if any
    /// one of them is, since trying again may then succeed there.
    pub fn of_all(causes: impl IntoIterator<Item = Cause>) -> Option<Cause> {
        let causes: Vec<Cause> = causes.into_iter().collect();
        causes.iter().copied().find(|c| c.kind() == Kind::Transient).or_else(|| causes.first().copied())
    }
}

/// An error with its cause attached, where the cause is known.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Classified {
    pub cause: Cause,
    message: String,
}

/// An error saying `message`, of `cause`.
pub fn classified(cause: Cause, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Classified { cause, message: message.into() })
}

/// The cause attached to `e` or to anything it wraps (the outermost one wins).
pub fn cause_of(e: &anyhow::Error) -> Option<Cause> {
    // anyhow finds one attached as context too; the chain finds one that a foreign error wraps.
    e.downcast_ref::<Classified>().or_else(|| e.chain().find_map(|c| c.downcast_ref::<Classified>())).map(|c| c.cause)
}

/// Whether trying again may help. An error nobody classified (a stream that broke in a way no layer
/// recognised) counts as transient: the attempts are bounded.
pub fn is_transient(e: &anyhow::Error) -> bool {
    cause_of(e).is_none_or(|c| c.kind() == Kind::Transient)
}

/// The cause an I/O error somewhere in `e`'s source chain tells, by its kind. TLS libraries report a
/// failed handshake as `InvalidData`.
pub fn io_cause(e: &(dyn Error + 'static)) -> Option<Cause> {
    let mut next: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                ErrorKind::TimedOut => Cause::Timeout,
                ErrorKind::InvalidData => Cause::Tls,
                ErrorKind::PermissionDenied => Cause::Denied,
                ErrorKind::NotFound => Cause::Missing,
                ErrorKind::StorageFull => Cause::NoSpace,
                _ => Cause::Unreachable,
            });
        }
        next = err.source();
    }
    None
}

/// All messages in an error's source chain, joined, each said once: a message already said, or the
/// start of one already said ("tcp connect error" before "tcp connect error: Connection refused"), is
/// not said again.
pub fn chain(e: &dyn Error) -> String {
    chain_from(&e.to_string(), e.source())
}

/// `chain` of a message (such as a gRPC status's) followed by the error it came from.
pub fn chain_from(head: &str, mut source: Option<&(dyn Error + 'static)>) -> String {
    let mut parts: Vec<String> = Some(head.to_string()).filter(|h| !h.is_empty()).into_iter().collect();
    while let Some(s) = source {
        let mut text = s.to_string();
        for p in &parts {
            if let Some(rest) = text.strip_prefix(p.as_str()).and_then(|r| r.strip_prefix(": ")) {
                text = rest.to_string();
            }
        }
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_survives_context_and_the_outermost_cause_wins() {
        let e = classified(Cause::Auth, "etcd refused the user").context("backup failed").context("run 3");
        assert_eq!(cause_of(&e), Some(Cause::Auth));
        assert!(!is_transient(&e));
        let wrapped = anyhow::Error::new(Classified { cause: Cause::Busy, message: "retry".into() })
            .context(Classified { cause: Cause::Cancelled, message: "stopping".into() });
        assert_eq!(cause_of(&wrapped), Some(Cause::Cancelled));
        assert!(is_transient(&anyhow::anyhow!("the snapshot stream broke")), "unclassified: bounded retries");
    }

    /// The text is for people: a transient error whose message mentions a certificate stays transient.
    #[test]
    fn the_text_decides_nothing() {
        let e = classified(Cause::Unreachable, "connection reset (check etcd.cert and etcd.key)");
        assert!(is_transient(&e));
        let e = classified(Cause::Tls, "connection refused");
        assert!(!is_transient(&e));
    }

    #[test]
    fn io_kinds_tell_the_cause() {
        let reset = std::io::Error::from(ErrorKind::ConnectionReset);
        assert_eq!(io_cause(&reset), Some(Cause::Unreachable));
        let tls = std::io::Error::new(ErrorKind::InvalidData, "invalid peer certificate: UnknownIssuer");
        assert_eq!(io_cause(&tls), Some(Cause::Tls));
        let nested = anyhow::Error::new(std::io::Error::from(ErrorKind::TimedOut)).context("connect");
        assert_eq!(io_cause(nested.as_ref()), Some(Cause::Timeout));
        assert_eq!(io_cause(&std::fmt::Error), None);
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    /// etcd down: the transport error repeats its cause's words inside its own message.
    #[test]
    fn each_cause_is_said_once() {
        let inner = Layer("tcp connect error: Connection refused (os error 111)", None);
        let middle = Layer("transport error", Some(Box::new(inner)));
        let outer = Layer("tcp connect error", Some(Box::new(middle)));
        assert_eq!(chain(&outer), "tcp connect error: transport error: Connection refused (os error 111)");
        let same = Layer("connection refused", Some(Box::new(Layer("connection refused", None))));
        assert_eq!(chain(&same), "connection refused");
        // A gRPC status says "tcp connect error" and carries the transport error as its source.
        let transport = Layer("transport error", Some(Box::new(Layer("tcp connect error: Connection refused", None))));
        assert_eq!(
            chain_from("tcp connect error", Some(&transport)),
            "tcp connect error: transport error: Connection refused"
        );
        assert_eq!(chain_from("", Some(&transport)), "transport error: tcp connect error: Connection refused");
    }

    #[test]
    fn several_failures_are_transient_if_any_is() {
        assert_eq!(Cause::of_all([Cause::Tls, Cause::Unreachable]), Some(Cause::Unreachable));
        assert_eq!(Cause::of_all([Cause::Tls, Cause::Auth]), Some(Cause::Tls));
        assert_eq!(Cause::of_all([]), None);
    }
}
