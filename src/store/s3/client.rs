//! The S3 client of a store: region, endpoint, path style, checksums, trust roots, proxy, timeouts, and
//! the standard AWS credential chain. Makes no request.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_http_client::tls::{Provider, TlsContext, TrustStore, rustls_provider::CryptoMode};

use super::S3Store;
use crate::config::{ChecksumMode, Proxy, S3Settings};
use crate::manifest::ClusterName;

impl S3Store {
    /// Builds a client from the settings and the standard AWS credential chain. Makes no request.
    pub async fn new(settings: &S3Settings, cluster: &ClusterName) -> Result<Self> {
        let mut trust = TrustStore::default();
        if let Some(ca) = &settings.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read s3.ca_file '{}'", ca.display()))?;
            trust = trust.with_pem_certificate(pem);
        }
        let tls = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| anyhow!("cannot use s3.ca_file: {}", crate::errors::chain(&e)))?;
        let proxy = proxy_config(&settings.proxy)?;
        // The builder's own build_https() takes no proxy (and so ignores HTTPS_PROXY): the connector is
        // built here, with the same settings the SDK hands it, plus the proxy.
        let http = aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
            let mut connector = aws_smithy_http_client::Connector::builder();
            connector.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                connector.set_sleep_impl(components.sleep_impl());
            }
            connector
                .proxy_config(proxy.clone())
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .tls_context(tls.clone())
                .build()
        });
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&sdk).force_path_style(settings.force_path_style).timeout_config(
                // A hung store holds an attempt for s3.timeout at most, a whole part included (a read
                // timeout alone never fires while a slow server trickles bytes); three attempts at most.
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10).min(settings.timeout))
                    .read_timeout(settings.timeout)
                    .operation_attempt_timeout(settings.timeout)
                    .operation_timeout(settings.timeout * 3 + Duration::from_secs(30))
                    .build(),
            );
        if sdk.region().is_none() {
            if settings.endpoint.is_none() {
                anyhow::bail!("no S3 region: set s3.region (or AWS_REGION) to the bucket's region");
            }
            // S3-compatible stores mostly ignore the region, but SigV4 needs one.
            config = config.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint);
        }
        if settings.checksums == ChecksumMode::WhenRequired {
            config = config
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        let folder = format!("{}{}/", settings.prefix, cluster);
        let at = settings.endpoint.clone().unwrap_or_else(|| "AWS".to_string());
        let place = format!("s3://{}/{} at {}", settings.bucket, folder, at);
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            settings: settings.clone(),
            folder,
            place,
            cluster: cluster.clone(),
        })
    }
}

/// The proxy to reach the store through: `s3.proxy` if set (`""`: none), else the standard variables
/// HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY (either case). NO_PROXY applies to an explicit proxy too.
fn proxy_config(setting: &Proxy) -> Result<aws_smithy_http_client::proxy::ProxyConfig> {
    use aws_smithy_http_client::proxy::ProxyConfig;
    Ok(match setting {
        Proxy::Environment => ProxyConfig::from_env(),
        Proxy::None => ProxyConfig::disabled(),
        Proxy::Url(url) => {
            let config =
                ProxyConfig::all(url.as_str()).map_err(|e| anyhow!("s3.proxy \"{url}\" cannot be used: {e}"))?;
            match ["NO_PROXY", "no_proxy"].iter().find_map(|v| std::env::var(v).ok()) {
                Some(rules) => config.no_proxy(rules),
                None => config,
            }
        }
    })
}
