//! Talking to the local etcd member: connect (TLS, auth), read its status, stream a snapshot.

use std::time::Duration;

use anyhow::{Context, Result};
use etcd_client::{AlarmAction, AlarmType, Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::EtcdSettings;
use crate::errors::{Cause, classified};
use crate::manifest::EtcdFacts;

/// A connection to one member, with what it reported about itself.
pub struct Member {
    client: Client,
    pub facts: EtcdFacts,
    /// A learner: etcd serves it only Status and serializable reads.
    pub learner: bool,
    /// Voting members, when the member list could be read (a learner cannot, nor a member without quorum).
    pub voters: Option<usize>,
    /// An alarm (NOSPACE, CORRUPT) is raised on this member (the cluster's list names every member's).
    pub own_alarm: bool,
    snapshot: Option<etcd_client::SnapshotStreaming>,
    auth_configured: bool,
}

/// Connects to the first endpoint that answers a status request; the error names every endpoint tried.
pub async fn connect(settings: &EtcdSettings) -> Result<Member> {
    let options = connect_options(settings)?;
    let mut failures = Vec::new();
    let mut causes = Vec::new();
    for endpoint in &settings.endpoints {
        match tokio::time::timeout(settings.dial_timeout, connect_one(endpoint, options.clone())).await {
            Ok(Ok(member)) => return Ok(Member { auth_configured: settings.auth.is_some(), ..member }),
            Ok(Err(e)) => {
                causes.push(cause(&e));
                failures.push(format!(
                    "{endpoint}: {}",
                    explain(&e, settings.auth.is_some(), endpoint.starts_with("https://"))
                ));
            }
            Err(_) => {
                causes.push(Cause::Timeout);
                failures.push(format!(
                    "{endpoint}: no answer within {} (etcd.dial_timeout): is etcd running and listening there?",
                    humantime::format_duration(settings.dial_timeout)
                ));
            }
        }
    }
    let cause = Cause::of_all(causes).unwrap_or(Cause::Config);
    Err(classified(cause, format!("cannot reach etcd:\n  {}", failures.join("\n  "))))
}

/// What an etcd client error means for a retry: from the gRPC status code, or the I/O error under a
/// transport failure. Never from the message.
pub fn cause(e: &etcd_client::Error) -> Cause {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(status) if etcd_auth_error(status.message()) => Cause::Auth,
        etcd_client::Error::GRpcStatus(status) => match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => Cause::Auth,
            // "not leader", "request too large", "not capable": a person or the cluster must act first.
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => Cause::Config,
            Code::DeadlineExceeded => Cause::Timeout,
            Code::ResourceExhausted | Code::Aborted | Code::Internal => Cause::Busy,
            Code::Unavailable | Code::Unknown | Code::Cancelled => {
                crate::errors::io_cause(status).unwrap_or(Cause::Unreachable)
            }
            _ => Cause::Busy,
        },
        etcd_client::Error::TransportError(t) => crate::errors::io_cause(t).unwrap_or(Cause::Unreachable),
        etcd_client::Error::IoError(io) => crate::errors::io_cause(io).unwrap_or(Cause::Unreachable),
        etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => Cause::Config,
        _ => Cause::Unreachable,
    }
}

/// etcd's own identity of an error is its description: the Go client maps the descriptions the server
/// sends to typed errors (`rpctypes`), because several reach it with code Unknown (3.5 sends "auth: user
/// name is empty" with code Unknown on a snapshot). These are etcd's authentication errors, parsed once
/// here, at the edge, into a cause.
fn etcd_auth_error(description: &str) -> bool {
    const AUTH: [&str; 7] = [
        "user name is empty",
        "authentication failed, invalid user ID or password",
        "permission denied",
        "invalid auth token",
        "user name not found",
        "role name not found",
        "authentication is not enabled",
    ];
    let description = description.strip_prefix("etcdserver: ").or_else(|| description.strip_prefix("auth: "));
    description.is_some_and(|d| AUTH.contains(&d))
}

fn read(path: &std::path::Path, key: &str) -> Result<Vec<u8>> {
    crate::config::read_config_file(path).map_err(|e| classified(Cause::Config, format!("{key}: {e}")))
}

/// What a member says of itself without a login: (learner, knows a leader). etcd serves Status to anyone,
/// where a password login needs the cluster (it goes through raft) and is refused to learners, so this
/// tells why a login failed. `None` when no endpoint answers.
pub async fn status_without_login(settings: &EtcdSettings) -> Option<(bool, bool)> {
    let plain = EtcdSettings { auth: None, ..settings.clone() };
    let options = connect_options(&plain).ok()?;
    for endpoint in &settings.endpoints {
        let asked = async {
            let mut client = Client::connect([endpoint], Some(options.clone())).await?;
            client.status().await
        };
        if let Ok(Ok(status)) = tokio::time::timeout(settings.dial_timeout, asked).await {
            return Some((status.is_learner(), status.leader() != 0));
        }
    }
    None
}

fn connect_options(settings: &EtcdSettings) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(settings.dial_timeout)
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(20));
    if settings.endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = TlsOptions::new();
        match &settings.cacert {
            Some(ca) => {
                let pem = read(ca, "etcd.cacert")?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            None => tls = tls.with_native_roots(),
        }
        if let Some(cc) = &settings.client_cert {
            let (cert, key) = (read(&cc.cert, "etcd.cert")?, read(&cc.key, "etcd.key")?);
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        options = options.with_tls(tls);
    }
    if let Some(auth) = &settings.auth {
        options = with_user(options, auth)?;
    }
    Ok(options)
}

/// Logs in as the configured etcd user; the password file's trailing newline is not part of it.
pub fn with_user(options: ConnectOptions, auth: &crate::config::EtcdAuth) -> Result<ConnectOptions> {
    let password = String::from_utf8_lossy(&read(&auth.password_file, "etcd.password_file")?).into_owned();
    Ok(options.with_user(auth.username.clone(), password.trim_end_matches(['\n', '\r']).to_string()))
}

async fn connect_one(endpoint: &str, options: ConnectOptions) -> Result<Member, etcd_client::Error> {
    let mut client = Client::connect([endpoint], Some(options)).await?;
    let status = client.status().await?;
    let header =
        status.header().ok_or_else(|| etcd_client::Error::Internal("status response without header".into()))?;
    let (cluster_id, member_id) = (header.cluster_id(), header.member_id());
    let revision = header.revision();
    let learner = status.is_learner();
    // A learner is refused both, and a member without quorum may not get an answer: neither stops a
    // backup (a sick cluster needs one most).
    let (mut member_name, mut voters, mut alarms, mut own_alarm) = (String::new(), None, Vec::new(), false);
    // Without a leader etcd answers neither before the timeout: cluster mode asks again for a leader.
    let leaderless = status.leader() == 0;
    if leaderless && !learner {
        tracing::warn!(%endpoint, "etcd reports no leader (no quorum, or an election)");
    }
    if !learner && !leaderless {
        // Asked together: without quorum both wait out CLUSTER_QUESTION, once rather than twice.
        let (mut lister, mut alarmer) = (client.clone(), client.clone());
        let (listed, alarmed) = tokio::join!(
            tokio::time::timeout(CLUSTER_QUESTION, lister.member_list()),
            tokio::time::timeout(CLUSTER_QUESTION, alarmer.alarm(AlarmAction::Get, AlarmType::None, None))
        );
        match listed {
            Ok(Ok(members)) => {
                let members = members.members();
                member_name =
                    members.iter().find(|m| m.id() == member_id).map(|m| m.name().to_string()).unwrap_or_default();
                voters = Some(members.iter().filter(|m| !m.is_learner()).count());
            }
            Ok(Err(e)) if cause(&e) == Cause::Auth => return Err(e),
            Ok(Err(e)) => tracing::warn!(%endpoint, error = %crate::errors::chain(&e), "cannot list etcd's members"),
            Err(_) => tracing::warn!(%endpoint, "etcd did not list its members in time (no quorum?)"),
        }
        match alarmed {
            Ok(Ok(found)) => {
                alarms =
                    found.alarms().iter().map(|a| format!("{:?} on member {:x}", a.alarm(), a.member_id())).collect();
                own_alarm = found.alarms().iter().any(|a| a.member_id() == member_id);
            }
            Ok(Err(e)) if cause(&e) == Cause::Auth => return Err(e),
            Ok(Err(e)) => tracing::warn!(%endpoint, error = %crate::errors::chain(&e), "cannot read etcd's alarms"),
            Err(_) => tracing::warn!(%endpoint, "etcd did not list its alarms in time (no quorum?)"),
        }
    }
    let facts = EtcdFacts {
        endpoint: endpoint.to_string(),
        cluster_id: format!("{cluster_id:x}"),
        member_id: format!("{member_id:x}"),
        member_name,
        version: status.version().to_string(),
        revision,
        raft_term: status.raft_term(),
        raft_index: status.raft_index(),
        db_size: u64::try_from(status.db_size()).unwrap_or(0),
        leader: format!("{:x}", status.leader()),
        alarms,
    };
    Ok(Member { client, facts, learner, voters, own_alarm, snapshot: None, auth_configured: false })
}

/// How long a question that needs the cluster (not only the member) may take.
const CLUSTER_QUESTION: Duration = Duration::from_secs(3);

impl Member {
    /// A client of this member, for coordination.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Whether the member knows a leader (a status only; `true` when it does not answer: its own
    /// failure shows elsewhere).
    pub async fn knows_leader(&self) -> bool {
        let mut client = self.client.clone();
        match tokio::time::timeout(CLUSTER_QUESTION, client.status()).await {
            Ok(Ok(status)) => status.leader() != 0,
            _ => true,
        }
    }

    /// What cluster mode asks of the member, from a fresh status: learner, leader, alarm, lag, voters. The cluster's
    /// revision comes from a linearizable read (which waits for the leader), with `CLUSTER_QUESTION` to
    /// answer; without an answer (or a member list) the member counts as caught up.
    pub async fn health(&self) -> crate::coordination::slot::Health {
        let facts = &self.facts;
        let mut client = self.client.clone();
        let (revision, leader) = match client.status().await {
            Ok(status) => (status.header().map_or(facts.revision, |h| h.revision()), format!("{:x}", status.leader())),
            Err(_) => (facts.revision, facts.leader.clone()),
        };
        let has_leader = leader != "0";
        let mut cluster_revision = revision;
        // Without a leader or a member list the cluster did not answer in time: do not wait on it again.
        if !self.learner && has_leader && self.voters.is_some() {
            let read = client.get("/", Some(etcd_client::GetOptions::new().with_count_only()));
            if let Ok(Ok(answer)) = tokio::time::timeout(CLUSTER_QUESTION, read).await {
                cluster_revision = answer.header().map_or(cluster_revision, |h| h.revision());
            }
        }
        crate::coordination::slot::Health {
            is_learner: self.learner,
            is_leader: leader == facts.member_id,
            has_leader,
            alarm: self.own_alarm,
            revision,
            cluster_revision,
            voters: self.voters,
        }
    }
}

/// Turns a client error into a sentence an operator can act on.
fn explain(e: &etcd_client::Error, auth_configured: bool, tls: bool) -> String {
    let (chain, code) = match e {
        etcd_client::Error::GRpcStatus(status) => {
            let text = crate::errors::chain_from(status.message(), std::error::Error::source(status));
            (text, Some(status.code()))
        }
        other => (crate::errors::chain(other), None),
    };
    let lower = chain.to_lowercase();
    let auth_words = [
        "authentication failed",
        "invalid user id or password",
        "user name is empty",
        "permission denied",
        "invalid auth token",
        "user name not found",
    ];
    let auth_problem = auth_words.iter().any(|w| lower.contains(w))
        || matches!(code, Some(tonic::Code::Unauthenticated | tonic::Code::PermissionDenied));
    let hint = if auth_problem && auth_configured {
        "etcd refused the user: check etcd.username and the password in etcd.password_file; snapshots need a user with the root role"
    } else if auth_problem {
        "etcd has authentication enabled: set etcd.username and etcd.password_file (a user with the root role), or use a client certificate whose CN is such a user"
    } else if lower.contains("unknownissuer")
        || lower.contains("unknown issuer")
        || lower.contains("invalid peer certificate")
    {
        "etcd's server certificate is not signed by etcd.cacert: point etcd.cacert at the etcd CA (kubeadm: /etc/kubernetes/pki/etcd/ca.crt)"
    } else if lower.contains("certificate")
        || lower.contains("alert")
        || lower.contains("handshake")
        || lower.contains("tls")
    {
        "the TLS handshake failed: etcd.cert and etcd.key must be a client certificate signed by etcd's CA (kubeadm: /etc/kubernetes/pki/etcd/healthcheck-client.crt and .key), and etcd.cacert that CA"
    } else if tls
        && ["broken pipe", "connection reset", "stream closed", "connection closed", "unexpected eof", "close_notify"]
            .iter()
            .any(|w| lower.contains(w))
    {
        // With TLS 1.3 a rejected client certificate shows up as a connection closed right after the handshake.
        "etcd closed the TLS connection: if it requires client certificates, etcd.cert and etcd.key must be a client certificate signed by etcd's CA (kubeadm: /etc/kubernetes/pki/etcd/healthcheck-client.crt and .key)"
    } else if lower.contains("connection refused") {
        "connection refused: is etcd running and listening on this address?"
    } else if lower.contains("http2") || lower.contains("frame") || lower.contains("protocol") {
        "the server did not speak gRPC this way: check http:// versus https:// in etcd.endpoints"
    } else {
        match code {
            Some(tonic::Code::Unavailable) => "etcd is not serving: is it running and healthy?",
            _ => "",
        }
    };
    if hint.is_empty() { chain } else { format!("{chain} ({hint})") }
}

impl crate::pipeline::SnapshotSource for Member {
    fn facts(&self) -> &EtcdFacts {
        &self.facts
    }

    async fn open(&mut self) -> Result<()> {
        let stream = self.client.snapshot().await.map_err(|e| {
            classified(
                cause(&e),
                format!(
                    "etcd at {} refused the snapshot: {}",
                    self.facts.endpoint,
                    explain(&e, self.auth_configured, self.facts.endpoint.starts_with("https://"))
                ),
            )
        })?;
        self.snapshot = Some(stream);
        Ok(())
    }

    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>> {
        let stream = self.snapshot.as_mut().context("the snapshot was not started")?;
        match stream.message().await {
            Ok(Some(msg)) => Ok(Some(msg.blob().to_vec())),
            Ok(None) => Ok(None),
            Err(e) => Err(classified(
                Cause::Unreachable,
                format!("the snapshot stream from {} broke: {}", self.facts.endpoint, crate::errors::chain(&e)),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The retry decision comes from the gRPC code and the I/O error kind, never from the message.
    #[test]
    fn causes_come_from_codes_and_io_kinds() {
        let status = |code, message: &str| etcd_client::Error::GRpcStatus(tonic::Status::new(code, message));
        assert_eq!(cause(&status(tonic::Code::Unauthenticated, "etcdserver: invalid auth token")), Cause::Auth);
        assert_eq!(cause(&status(tonic::Code::InvalidArgument, "etcdserver: user name is empty")), Cause::Auth);
        // etcd 3.5 refuses a snapshot without a user with code Unknown: its description says what it is.
        assert_eq!(cause(&status(tonic::Code::Unknown, "auth: user name is empty")), Cause::Auth);
        assert_eq!(cause(&status(tonic::Code::Unknown, "etcdserver: permission denied")), Cause::Auth);
        assert_eq!(
            cause(&status(tonic::Code::Unknown, "stream reset: permission denied by a proxy")),
            Cause::Unreachable
        );
        assert_eq!(cause(&status(tonic::Code::Unavailable, "etcd.cert mentioned in passing")), Cause::Unreachable);
        assert_eq!(cause(&status(tonic::Code::DeadlineExceeded, "")), Cause::Timeout);
        assert_eq!(cause(&status(tonic::Code::ResourceExhausted, "too many requests")), Cause::Busy);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(cause(&etcd_client::Error::IoError(reset)), Cause::Unreachable);
        let tls = std::io::Error::new(std::io::ErrorKind::InvalidData, "invalid peer certificate");
        assert_eq!(cause(&etcd_client::Error::IoError(tls)), Cause::Tls);
        assert_eq!(cause(&etcd_client::Error::InvalidArgs("x".into())), Cause::Config);
    }
}
