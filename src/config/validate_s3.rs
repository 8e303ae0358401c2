//! The `[s3]` table checked into `S3Settings`: bucket, prefix, endpoint, proxy, encryption, parts,
//! checksums, retention. Pure.

use super::keys::{duration_key, path_key, retention};
use super::raw::RawS3;
use super::settings::*;
use super::units::parse_size;
use crate::retention::Policy;

pub(super) fn validate_s3(raw: RawS3, issues: &mut Vec<Issue>) -> S3Settings {
    let bucket = raw.bucket.unwrap_or_default();
    if let Err(e) = check_bucket_name(&bucket) {
        issues.push(Issue::new("s3.bucket", e));
    }
    let prefix = match raw.prefix {
        None => String::new(),
        Some(p) if p.starts_with('/') => {
            issues.push(Issue::new(
                "s3.prefix",
                format!(
                    "\"{p}\" starts with '/': S3 keys have no leading slash; write \"{}\"",
                    p.trim_start_matches('/')
                ),
            ));
            String::new()
        }
        Some(p) if p.split('/').any(|seg| seg == ".." || seg == ".") || p.contains("//") => {
            issues.push(Issue::new(
                "s3.prefix",
                format!(
                    "\"{p}\" has an empty, \".\" or \"..\" part: S3 keys are not paths, and stores that treat them as paths would put backups elsewhere; write the prefix without them"
                ),
            ));
            String::new()
        }
        Some(p) if p.is_empty() || p.ends_with('/') => p,
        Some(p) => format!("{p}/"),
    };
    if let Some(endpoint) = &raw.endpoint
        && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
    {
        issues.push(Issue::new("s3.endpoint", format!("\"{endpoint}\" is not a URL: expected https://HOST[:PORT]")));
    }
    if let Some(class) = &raw.storage_class
        && (class.is_empty() || !class.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
    {
        issues.push(Issue::new(
            "s3.storage_class",
            format!("\"{class}\" is not a storage class: expected a name like \"STANDARD\", \"STANDARD_IA\" or \"GLACIER_IR\""),
        ));
    }
    let sse = match raw.server_side_encryption.as_deref() {
        None => None,
        Some("AES256") => Some(ServerSideEncryption::S3),
        Some("aws:kms") => Some(ServerSideEncryption::Kms { key_id: raw.sse_kms_key_id.clone() }),
        Some(other) => {
            issues.push(Issue::new(
                "s3.server_side_encryption",
                format!("\"{other}\" is not supported: expected \"AES256\" (SSE-S3) or \"aws:kms\" (SSE-KMS)"),
            ));
            None
        }
    };
    if raw.sse_kms_key_id.is_some() && !matches!(sse, Some(ServerSideEncryption::Kms { .. })) {
        issues.push(Issue::new(
            "s3.sse_kms_key_id",
            "is set but s3.server_side_encryption is not \"aws:kms\": set server_side_encryption = \"aws:kms\" or remove the key id",
        ));
    }
    let checksums = match raw.checksums.as_deref() {
        None | Some("when_supported") => ChecksumMode::WhenSupported,
        Some("when_required") => ChecksumMode::WhenRequired,
        Some(other) => {
            issues.push(Issue::new(
                "s3.checksums",
                format!("\"{other}\" is not supported: expected \"when_supported\" (default) or \"when_required\" (older MinIO, Ceph, R2)"),
            ));
            ChecksumMode::WhenSupported
        }
    };
    let part_size = match raw.part_size.as_deref().map(parse_size) {
        None => DEFAULT_PART_SIZE,
        Some(Ok(size)) if (MIN_PART_SIZE..=MAX_PART_SIZE).contains(&size) => size,
        Some(Ok(_)) => {
            issues.push(Issue::new("s3.part_size", "must be between 5MiB and 5GiB (the S3 multipart limits)"));
            DEFAULT_PART_SIZE
        }
        Some(Err(e)) => {
            issues.push(Issue::new("s3.part_size", e));
            DEFAULT_PART_SIZE
        }
    };
    S3Settings {
        bucket,
        prefix,
        region: raw.region.filter(|r| !r.is_empty()),
        endpoint: raw.endpoint,
        force_path_style: raw.force_path_style.unwrap_or(false),
        storage_class: raw.storage_class,
        sse,
        checksums,
        ca_file: path_key(raw.ca_file, "s3.ca_file", issues),
        part_size,
        timeout: duration_key(raw.timeout, "s3.timeout", DEFAULT_S3_TIMEOUT, issues),
        proxy: match raw.proxy {
            None => Proxy::Environment,
            Some(p) if p.is_empty() => Proxy::None,
            Some(p) if (p.starts_with("http://") || p.starts_with("https://")) && p.len() > "https://".len() => {
                Proxy::Url(p)
            }
            Some(p) => {
                issues.push(Issue::new(
                    "s3.proxy",
                    format!("\"{p}\" is not a proxy URL: expected http://HOST:PORT (or \"\" for no proxy)"),
                ));
                Proxy::Environment
            }
        },
        retention: retention(raw.retention, "s3.retention", Policy::remote_default(), issues),
    }
}

/// The S3 bucket naming rules that matter for a clear early error.
fn check_bucket_name(bucket: &str) -> Result<(), String> {
    if bucket.is_empty() {
        return Err("is missing: name the bucket, for example bucket = \"etcd-backups\"".into());
    }
    let ok_chars = bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ok_ends = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !(3..=63).contains(&bucket.len()) || !ok_chars || !ok_ends {
        return Err(format!(
            "\"{bucket}\" is not a valid bucket name: 3 to 63 lowercase letters, digits, '-' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}
