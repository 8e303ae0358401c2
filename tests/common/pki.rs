//! Certificates for a TLS etcd with client-cert auth, made with rcgen.

use std::path::{Path, PathBuf};

/// Certificates for a TLS etcd with client-cert auth, written to files.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate from another CA: etcd must refuse it.
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
        };
        std::fs::create_dir_all(dir).unwrap();
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let make_ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert, key, params)
        };
        let (ca_cert, ca_key, ca_params) = make_ca("etcd-ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |issuer: &Issuer<'_, KeyPair>, cn: &str, server: bool| {
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = if server {
                vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
            } else {
                vec![ExtendedKeyUsagePurpose::ClientAuth]
            };
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (sc, sk) = leaf(&issuer, "etcd-server", true);
        let (cc, ck) = leaf(&issuer, "etcd-backupd", false);
        let (_, rogue_ca_key, rogue_params) = make_ca("rogue-ca");
        let rogue_issuer = Issuer::new(rogue_params, rogue_ca_key);
        let (rc, rk) = leaf(&rogue_issuer, "intruder", false);
        Pki {
            dir: dir.to_path_buf(),
            ca: write("ca.crt", ca_cert.pem()),
            server_cert: write("server.crt", sc),
            server_key: write("server.key", sk),
            client_cert: write("client.crt", cc),
            client_key: write("client.key", ck),
            rogue_cert: write("rogue.crt", rc),
            rogue_key: write("rogue.key", rk),
        }
    }
}
