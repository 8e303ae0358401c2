//! age recipients (public keys only) and the encryptor built from them.

use std::io::Write;

use age::Recipient;

/// A recipient that parsed: an age or SSH public key, as written (trimmed). Only [`PublicKey::parse`]
/// makes one, so settings never hold a key that cannot encrypt.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublicKey(String);

impl PublicKey {
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let text = text.trim();
        parse_recipient(text)?;
        Ok(PublicKey(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses one recipient: an age X25519 public key (`age1…`) or an SSH public key (`ssh-ed25519 …`, `ssh-rsa …`).
pub fn parse_recipient(text: &str) -> Result<Box<dyn Recipient + Send + Sync>, String> {
    let text = text.trim();
    if text.starts_with("AGE-SECRET-KEY-") {
        return Err(
            "this is an age secret key, not a public key: never put it on the etcd host; give its public key instead (`age-keygen -y KEYFILE` prints it)"
                .into(),
        );
    }
    if text.starts_with("-----BEGIN") {
        return Err(
            "this is a private key file, not a public key: give the SSH public key (the .pub file's line)".into()
        );
    }
    if text.starts_with("age1") {
        return text
            .parse::<age::x25519::Recipient>()
            .map(|r| Box::new(r) as _)
            .map_err(|e| format!("\"{}\" is not a valid age public key: {e}", shorten(text)));
    }
    if text.starts_with("ssh-") {
        return text.parse::<age::ssh::Recipient>().map(|r| Box::new(r) as _).map_err(|e| {
            let why = match e {
                age::ssh::ParseRecipientKeyError::RsaModulusTooSmall => {
                    "RSA keys under 2048 bits are refused".to_string()
                }
                age::ssh::ParseRecipientKeyError::RsaModulusTooLarge => "the RSA key is too large".to_string(),
                age::ssh::ParseRecipientKeyError::Unsupported(kind) => {
                    format!("{kind} keys are not supported by age; use ssh-ed25519 or ssh-rsa")
                }
                _ => "it does not parse".to_string(),
            };
            format!("\"{}\" is not a usable SSH public key: {why}", shorten(text))
        });
    }
    Err(format!(
        "\"{}\" is not a recipient: expected an age public key (age1…) or an SSH public key (ssh-ed25519 … or ssh-rsa …)",
        shorten(text)
    ))
}

fn shorten(text: &str) -> String {
    if text.chars().count() > 24 {
        format!("{}…", text.chars().take(20).collect::<String>())
    } else {
        text.to_string()
    }
}

/// Parses a recipients file: one recipient per line; blank lines and `#` comments are skipped.
/// On error returns the 1-based line number and the reason.
pub fn parse_recipients_text(text: &str) -> Result<Vec<PublicKey>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(PublicKey::parse(line).map_err(|e| (i + 1, e))?);
    }
    Ok(out)
}

/// Reads an identity file for decryption: age identities (`AGE-SECRET-KEY-…`) or an unencrypted SSH
/// private key. Only ever needed off the etcd host (verification hosts, restores).
pub fn read_identities(path: &std::path::Path) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read the identity file '{}': {e}", path.display()))?;
    if text.starts_with(b"-----BEGIN") {
        let key = age::ssh::Identity::from_buffer(&text[..], Some(path.display().to_string()))
            .map_err(|e| format!("'{}' is not a usable SSH private key: {e}", path.display()))?;
        return match key {
            age::ssh::Identity::Unencrypted(_) => Ok(vec![Box::new(key)]),
            age::ssh::Identity::Encrypted(_) => Err(format!(
                "'{}' is a passphrase-protected SSH key, which etcd-backupd cannot prompt for: decrypt by hand with `age -d -i {}` or use an unprotected copy on the verification host",
                path.display(),
                path.display()
            )),
            _ => Err(format!("'{}' holds an SSH key type age does not support", path.display())),
        };
    }
    let file = age::IdentityFile::from_buffer(&text[..])
        .map_err(|e| format!("'{}' is not an age identity file: {e}", path.display()))?;
    let identities =
        file.into_identities().map_err(|e| format!("cannot use the identities in '{}': {e}", path.display()))?;
    if identities.is_empty() {
        return Err(format!(
            "'{}' holds no identity (expected AGE-SECRET-KEY-… lines, as age-keygen writes)",
            path.display()
        ));
    }
    Ok(identities)
}

/// Wraps `output` so that everything written to it is encrypted to all `recipients`.
/// The caller must call `finish()` on the returned writer, or the file is truncated.
pub fn encrypt_to<W: Write>(recipients: &[PublicKey], output: W) -> Result<age::stream::StreamWriter<W>, String> {
    let parsed = recipients.iter().map(|r| parse_recipient(r.as_str())).collect::<Result<Vec<_>, _>>()?;
    let encryptor = age::Encryptor::with_recipients(parsed.iter().map(|r| r.as_ref() as &dyn Recipient))
        .map_err(|e| format!("cannot encrypt to these recipients: {e}"))?;
    encryptor.wrap_output(output).map_err(|e| format!("cannot start encryption: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGE_PUB: &str = "age129n4cdkqnnw0ufcsz5av60my25tehpq9mlsxr3jfs68hzl2nqf4qpfwa0s";
    const SSH_PUB: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHS95VBVaLPmudeOW9aEVTrqx9kr85m1tzlEzwEJFKwE ops@example";

    #[test]
    fn accepts_age_and_ssh_keys() {
        assert!(parse_recipient(AGE_PUB).is_ok());
        assert!(parse_recipient(SSH_PUB).is_ok());
        assert!(parse_recipient(&format!("  {AGE_PUB}  ")).is_ok());
    }

    #[test]
    fn refuses_secret_keys_with_a_hint() {
        let e = parse_recipient("AGE-SECRET-KEY-1QQQ").err().unwrap();
        assert!(e.contains("never put it on the etcd host"), "{e}");
        let e = parse_recipient("-----BEGIN OPENSSH PRIVATE KEY-----").err().unwrap();
        assert!(e.contains("private key"), "{e}");
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_recipient("age1notakey").err().unwrap().contains("not a valid age public key"));
        assert!(parse_recipient("hello").err().unwrap().contains("not a recipient"));
        assert!(parse_recipient("ssh-ed25519 AAAA").err().unwrap().contains("SSH public key"));
    }

    #[test]
    fn recipients_file_skips_comments_and_names_the_bad_line() {
        let text = format!("# ops team\n\n{AGE_PUB}\n  # offline key\n{SSH_PUB}\n");
        let keys: Vec<String> = parse_recipients_text(&text).unwrap().iter().map(|k| k.as_str().to_string()).collect();
        assert_eq!(keys, vec![AGE_PUB.to_string(), SSH_PUB.to_string()]);
        let text = format!("{AGE_PUB}\n\nnot-a-key\n");
        let (line, e) = parse_recipients_text(&text).unwrap_err();
        assert_eq!(line, 3);
        assert!(e.contains("not a recipient"));
    }

    #[test]
    fn encrypts_to_every_recipient() {
        let id1 = age::x25519::Identity::generate();
        let id2 = age::x25519::Identity::generate();
        let recipients =
            [id1.to_public().to_string(), id2.to_public().to_string()].map(|k| PublicKey::parse(&k).unwrap());
        let mut out = Vec::new();
        let mut w = encrypt_to(&recipients, &mut out).unwrap();
        w.write_all(b"etcd snapshot").unwrap();
        w.finish().unwrap();
        for id in [&id1, &id2] {
            let d = age::Decryptor::new(&out[..]).unwrap();
            let mut r = d.decrypt(std::iter::once(id as &dyn age::Identity)).unwrap();
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut r, &mut plain).unwrap();
            assert_eq!(plain, b"etcd snapshot");
        }
    }
}
