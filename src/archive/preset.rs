//! What each Kubernetes distribution needs, besides etcd's data, to rebuild a control-plane node. Pure:
//! the paths, and the one path read from a file (kube-apiserver's encryption config).

use serde::{Deserialize, Serialize};

/// A distribution whose control-plane files `[files] preset` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Kubeadm,
    K3s,
    Rke2,
}

/// One path of a preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresetPath {
    /// Absolute; may hold a `*` (every match is archived).
    pub path: &'static str,
    /// Every node of the distribution has it: missing, it fails the backup. Others are archived when
    /// present.
    pub required: bool,
    /// What it is, for the README and `check-config`.
    pub what: &'static str,
}

const fn required(path: &'static str, what: &'static str) -> PresetPath {
    PresetPath { path, required: true, what }
}

const fn optional(path: &'static str, what: &'static str) -> PresetPath {
    PresetPath { path, required: false, what }
}

/// kube-apiserver's static pod manifest, where kubeadm's encryption config is named.
pub const KUBEADM_APISERVER_MANIFEST: &str = "/etc/kubernetes/manifests/kube-apiserver.yaml";

const KUBEADM: &[PresetPath] = &[
    required("/etc/kubernetes/pki", "the cluster's CAs and keys, etcd's included (kubeadm init phase certs)"),
    required("/etc/kubernetes/manifests", "the static pods: etcd, kube-apiserver, controller-manager, scheduler"),
    optional("/etc/kubernetes/*.conf", "kubeconfigs: admin, super-admin, controller-manager, scheduler, kubelet"),
    optional("/var/lib/kubelet/config.yaml", "the kubelet's configuration"),
    optional("/var/lib/kubelet/kubeadm-flags.env", "the kubelet flags kubeadm wrote"),
];

const K3S: &[PresetPath] = &[
    required("/var/lib/rancher/k3s/server/token", "the server token: a restore needs it to decrypt its bootstrap data"),
    required("/var/lib/rancher/k3s/server/tls", "the cluster's CAs, certificates and keys"),
    required("/var/lib/rancher/k3s/server/cred", "credentials, and the secrets encryption config"),
    optional("/etc/rancher/k3s", "config.yaml, config.yaml.d, registries.yaml, the admin kubeconfig"),
    optional("/var/lib/rancher/k3s/server/manifests", "auto-deployed manifests, yours included"),
];

const RKE2: &[PresetPath] = &[
    required(
        "/var/lib/rancher/rke2/server/token",
        "the server token: a restore needs it to decrypt its bootstrap data",
    ),
    required("/var/lib/rancher/rke2/server/tls", "the cluster's CAs, certificates and keys"),
    required("/var/lib/rancher/rke2/server/cred", "credentials, and the secrets encryption config"),
    optional("/etc/rancher/rke2", "config.yaml, config.yaml.d, registries.yaml, the admin kubeconfig"),
    optional("/var/lib/rancher/rke2/server/manifests", "auto-deployed manifests, yours included"),
    optional("/var/lib/rancher/rke2/agent/pod-manifests", "the static pods: etcd, kube-apiserver and the rest"),
];

impl Preset {
    pub fn parse(name: &str) -> Option<Preset> {
        match name {
            "kubeadm" => Some(Preset::Kubeadm),
            "k3s" => Some(Preset::K3s),
            "rke2" => Some(Preset::Rke2),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Kubeadm => "kubeadm",
            Preset::K3s => "k3s",
            Preset::Rke2 => "rke2",
        }
    }

    /// The paths this distribution keeps its control-plane files in.
    pub fn paths(self) -> &'static [PresetPath] {
        match self {
            Preset::Kubeadm => KUBEADM,
            Preset::K3s => K3S,
            Preset::Rke2 => RKE2,
        }
    }
}

/// The node procedure after `restore`, for this distribution, with the paths given: `data_dir` (the
/// restored data dir), `files` (where the archive was extracted), `snapshot` (the plain snapshot, for
/// k3s and rke2, which restore it themselves).
pub fn procedure(
    preset: Preset,
    data_dir: Option<&std::path::Path>,
    files: Option<&std::path::Path>,
    snapshot: Option<&std::path::Path>,
) -> Vec<String> {
    let shown = |p: Option<&std::path::Path>, what: &str| p.map_or(what.to_string(), |p| p.display().to_string());
    let files = shown(files, "<the folder of restore --files>");
    match preset {
        Preset::Kubeadm => vec![
            "stop the static pods: mkdir -p /etc/kubernetes/manifests.stopped && mv /etc/kubernetes/manifests/*.yaml /etc/kubernetes/manifests.stopped/ (the kubelet stops etcd and the API server; `crictl ps` shows them gone)".into(),
            "move the old data dir aside: mv /var/lib/etcd /var/lib/etcd.before-restore".into(),
            format!("put the restored data dir in its place: mv {} /var/lib/etcd && chmod 0700 /var/lib/etcd", shown(data_dir, "<restore --data-dir>")),
            format!("put back the control-plane files: cp -a {files}/etc/kubernetes/. /etc/kubernetes/ (and {files}/var/lib/kubelet/. /var/lib/kubelet/)"),
            "start: mv /etc/kubernetes/manifests.stopped/*.yaml /etc/kubernetes/manifests/, then check `etcdctl endpoint status` and `kubectl get nodes`".into(),
        ],
        Preset::K3s | Preset::Rke2 => {
            let name = preset.as_str();
            let snapshot = shown(snapshot, "<restore --output FILE>");
            vec![
                format!("stop {name} on every server: systemctl stop {name}{}", if preset == Preset::Rke2 { "-server" } else { "" }),
                format!("put back the server's files: cp -a {files}/var/lib/rancher/{name}/server/. /var/lib/rancher/{name}/server/ && cp -a {files}/etc/rancher/{name}/. /etc/rancher/{name}/"),
                format!("restore with {name}'s own reset, from the plain snapshot and with the token just put back: {name} server --cluster-reset --cluster-reset-restore-path={snapshot}"),
                format!("start {name} on this server, then on each other server remove /var/lib/rancher/{name}/server/db and start it to rejoin"),
            ]
        }
    }
}

/// The file kube-apiserver's `--encryption-provider-config` names in its static pod manifest (written
/// `--flag=value`, or `--flag` and the value as the next list item), if any. Without it, the Secrets a
/// restored etcd holds cannot be read.
pub fn encryption_config(manifest: &str) -> Option<String> {
    const FLAG: &str = "--encryption-provider-config";
    // Each YAML list item, without its `- ` and quotes.
    let items: Vec<&str> = manifest
        .lines()
        .map(|l| {
            let l = l.trim();
            l.strip_prefix("- ").unwrap_or(l).trim().trim_matches(|c| c == '"' || c == '\'')
        })
        .collect();
    for (i, item) in items.iter().enumerate() {
        if let Some(value) = item.strip_prefix(FLAG).and_then(|rest| rest.strip_prefix('=')) {
            return usable(value);
        }
        if *item == FLAG {
            return items.get(i + 1).and_then(|v| usable(v));
        }
    }
    None
}

fn usable(value: &str) -> Option<String> {
    let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
    (value.starts_with('/') && !value.contains('\0')).then(|| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_preset_names_absolute_paths_and_has_required_ones() {
        for preset in [Preset::Kubeadm, Preset::K3s, Preset::Rke2] {
            assert_eq!(Preset::parse(preset.as_str()), Some(preset));
            assert!(preset.paths().iter().all(|p| p.path.starts_with('/') && !p.what.is_empty()));
            assert!(preset.paths().iter().any(|p| p.required));
        }
        assert_eq!(Preset::parse("openshift"), None);
    }

    #[test]
    fn the_procedure_names_the_paths_given() {
        let lines = procedure(
            Preset::Kubeadm,
            Some(std::path::Path::new("/var/lib/etcd-restored")),
            Some(std::path::Path::new("/root/files")),
            None,
        );
        assert!(lines.iter().any(|l| l.contains("mv /var/lib/etcd-restored /var/lib/etcd")), "{lines:?}");
        assert!(lines.iter().any(|l| l.contains("cp -a /root/files/etc/kubernetes/. /etc/kubernetes/")), "{lines:?}");
        let k3s = procedure(Preset::K3s, None, Some(std::path::Path::new("/f")), Some(std::path::Path::new("/s.db")));
        assert!(
            k3s.iter().any(|l| l.contains("k3s server --cluster-reset --cluster-reset-restore-path=/s.db")),
            "{k3s:?}"
        );
        assert!(k3s.iter().any(|l| l.contains("/f/var/lib/rancher/k3s/server/.")), "{k3s:?}");
        let rke2 = procedure(Preset::Rke2, None, None, None);
        assert!(rke2.iter().any(|l| l.contains("systemctl stop rke2-server")), "{rke2:?}");
    }

    #[test]
    fn the_encryption_config_is_read_from_the_apiserver_manifest() {
        let manifest = "spec:\n  containers:\n  - command:\n    - kube-apiserver\n    - --advertise-address=10.0.0.1\n    - --encryption-provider-config=/etc/kubernetes/enc/enc.yaml\n    - --etcd-servers=https://127.0.0.1:2379\n";
        assert_eq!(encryption_config(manifest).as_deref(), Some("/etc/kubernetes/enc/enc.yaml"));
        let quoted = "    - \"--encryption-provider-config=/etc/kubernetes/enc.yaml\"\n";
        assert_eq!(encryption_config(quoted).as_deref(), Some("/etc/kubernetes/enc.yaml"));
        let split = "    - --encryption-provider-config\n    - /etc/k/enc.yaml\n";
        assert_eq!(encryption_config(split).as_deref(), Some("/etc/k/enc.yaml"));
        assert_eq!(encryption_config("    - --encryption-provider-config-automatic-reload=true\n"), None);
        assert_eq!(encryption_config("    - --encryption-provider-config=relative.yaml\n"), None, "only absolute");
        assert_eq!(encryption_config("    - --etcd-servers=x\n"), None);
        assert_eq!(encryption_config(""), None);
    }
}
