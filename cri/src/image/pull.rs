//! Pulling from registries (OCI Distribution API v2) through `oci-client`, which does the
//! HTTP, the `WWW-Authenticate` bearer-token flow and basic auth. On top of it: mirrors
//! tried in order with fallback to the upstream (as containerd's hosts configuration),
//! insecure (plain HTTP) registries, and our own verification of every byte.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;

use super::install::{ACCEPTED_MANIFESTS, Descriptor, Source};
use super::reference::ImageRef;
use super::{Error, Result};

/// Registry hosts configuration.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Registry host (`docker.io`, `registry.k8s.io`, `127.0.0.1:5000`) → mirror endpoints
    /// (`http://127.0.0.1:5001`, `https://mirror.example`, or a bare host), tried in order
    /// before the registry itself.
    pub mirrors: HashMap<String, Vec<String>>,
    /// Hosts spoken to over plain HTTP.
    pub insecure: Vec<String>,
}

/// One place to pull from: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub plain_http: bool,
    pub is_mirror: bool,
}

impl RegistryConfig {
    /// The hosts to try for `registry`, mirrors first.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let mirrors = self
            .mirrors
            .get(registry)
            .or_else(|| self.mirrors.get("*"))
            .cloned()
            .unwrap_or_default();
        for m in mirrors {
            let (host, scheme) = match m.split_once("://") {
                Some((scheme, rest)) => (
                    rest.trim_end_matches('/').to_string(),
                    Some(scheme.to_string()),
                ),
                None => (m.trim_end_matches('/').to_string(), None),
            };
            let host = host.trim_end_matches("/v2").to_string();
            let plain_http = match scheme.as_deref() {
                Some("http") => true,
                Some(_) => false,
                None => self.insecure.contains(&host),
            };
            out.push(Endpoint {
                host,
                plain_http,
                is_mirror: true,
            });
        }
        // docker.io's API lives at registry-1.docker.io.
        let upstream = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        out.push(Endpoint {
            host: upstream.to_string(),
            plain_http: self.insecure.iter().any(|h| h == registry || h == upstream),
            is_mirror: false,
        });
        out
    }

    /// Plain-HTTP hosts for the oci client.
    fn http_hosts(&self) -> Vec<String> {
        let mut hosts = self.insecure.clone();
        for mirrors in self.mirrors.keys() {
            for ep in self.endpoints(mirrors) {
                if ep.plain_http {
                    hosts.push(ep.host);
                }
            }
        }
        hosts
    }
}

/// Credentials from a CRI `AuthConfig`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credentials {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    Bearer(String),
}

impl Credentials {
    fn to_auth(&self) -> RegistryAuth {
        match self {
            Credentials::Anonymous => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::Bearer(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

/// Shared registry access. Anonymous pulls share one client (and its token cache);
/// authenticated pulls get their own, so tokens never leak between credentials.
pub struct Registries {
    config: RegistryConfig,
    anonymous: oci_client::Client,
}

impl Registries {
    pub fn new(config: RegistryConfig) -> Self {
        let anonymous = Self::client(&config);
        Self { config, anonymous }
    }

    fn client(config: &RegistryConfig) -> oci_client::Client {
        oci_client::Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(config.http_hosts()),
            // Digests are verified by us; platform selection too.
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(30)),
            read_timeout: Some(std::time::Duration::from_secs(300)),
            ..Default::default()
        })
    }

    /// Finds the first endpoint that serves the manifest for `image`; returns a source
    /// bound to that endpoint, the manifest bytes and their digest (verified).
    pub async fn resolve(
        &self,
        image: &ImageRef,
        creds: &Credentials,
    ) -> Result<(Arc<RegistrySource>, Vec<u8>, String)> {
        let client = match creds {
            Credentials::Anonymous => self.anonymous.clone(),
            _ => Self::client(&self.config),
        };
        let endpoints = self.config.endpoints(&image.registry);
        let mut errors = Vec::new();
        let single = endpoints.len() == 1;
        for ep in endpoints {
            // Credentials in a pull request are for the image's registry, not mirrors.
            let auth = if ep.is_mirror {
                RegistryAuth::Anonymous
            } else {
                creds.to_auth()
            };
            let reference = image.to_client_ref(&ep.host);
            tracing::debug!(host = %ep.host, image = %image, "fetching manifest");
            match client
                .pull_manifest_raw(&reference, &auth, ACCEPTED_MANIFESTS)
                .await
            {
                Ok((bytes, _)) => {
                    let digest = super::content::sha256_digest(&bytes);
                    if let Some(want) = &image.digest
                        && *want != digest
                    {
                        let err = Error::DigestMismatch {
                            expected: want.clone(),
                            actual: digest,
                        };
                        if single {
                            return Err(err);
                        }
                        errors.push(format!("{}: {err}", ep.host));
                        continue;
                    }
                    let source = Arc::new(RegistrySource {
                        client,
                        auth,
                        image: image.clone(),
                        host: ep.host,
                    });
                    return Ok((source, bytes.to_vec(), digest));
                }
                Err(e) => {
                    let err = map_err(&ep.host, image, e);
                    tracing::info!(host = %ep.host, image = %image, err = %err, "registry host failed");
                    if single {
                        return Err(err);
                    }
                    errors.push(format!("{}: {err}", ep.host));
                }
            }
        }
        Err(Error::AllHostsFailed {
            reference: image.to_string(),
            errors,
        })
    }
}

fn map_err(host: &str, image: &ImageRef, e: OciDistributionError) -> Error {
    let message = e.to_string();
    let unauthorized = match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        _ => false,
    };
    if unauthorized {
        return Error::Unauthorized {
            host: host.to_string(),
            reference: image.to_string(),
            message,
        };
    }
    if matches!(e, OciDistributionError::ImageManifestNotFoundError(_)) {
        return Error::NotFound {
            reference: image.to_string(),
        };
    }
    Error::Registry {
        host: host.to_string(),
        reference: image.to_string(),
        message,
    }
}

/// Blobs of one image from one endpoint.
pub struct RegistrySource {
    client: oci_client::Client,
    auth: RegistryAuth,
    image: ImageRef,
    host: String,
}

impl RegistrySource {
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Fetches a child manifest (chosen from an index) from the same endpoint.
    pub async fn manifest(&self, digest: &str) -> Result<Vec<u8>> {
        let child = self.image.at_digest(digest);
        let reference = child.to_client_ref(&self.host);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&reference, &self.auth, ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| map_err(&self.host, &child, e))?;
        Ok(bytes.to_vec())
    }

    fn blob_ref(&self) -> oci_client::Reference {
        self.image.to_client_ref(&self.host)
    }
}

#[async_trait]
impl Source for RegistrySource {
    async fn fetch(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(desc.size.min(16 << 20) as usize);
        self.client
            .pull_blob(&self.blob_ref(), desc.digest.as_str(), &mut out)
            .await
            .map_err(|e| map_err(&self.host, &self.image, e))?;
        Ok(out)
    }

    async fn open(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>> {
        let sized = self
            .client
            .pull_blob_stream(&self.blob_ref(), desc.digest.as_str())
            .await
            .map_err(|e| map_err(&self.host, &self.image, e))?;
        // Network chunks feed the blocking unpacker through a small bounded channel, so
        // memory stays flat whatever the layer size.
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<bytes::Bytes>>(16);
        let mut stream = sized.stream;
        tokio::spawn(async move {
            while let Some(chunk) = stream.next().await {
                if tx.send(chunk).await.is_err() {
                    break; // the unpacker gave up
                }
            }
        });
        Ok(Box::new(ChannelReader {
            rx,
            current: bytes::Bytes::new(),
        }))
    }
}

/// A blocking `Read` over chunks sent from an async task.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                // oci-client checks the digest as the stream ends; say what it means.
                Some(Err(e)) if e.to_string().contains("Invalid digest") => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_then_upstream() {
        let mut cfg = RegistryConfig::default();
        cfg.mirrors.insert(
            "docker.io".into(),
            vec![
                "http://127.0.0.1:5001".into(),
                "https://m.example/v2".into(),
                "plain:5002".into(),
            ],
        );
        cfg.insecure.push("plain:5002".into());
        cfg.insecure.push("127.0.0.1:5000".into());
        let eps = cfg.endpoints("docker.io");
        let hosts: Vec<(&str, bool, bool)> = eps
            .iter()
            .map(|e| (e.host.as_str(), e.plain_http, e.is_mirror))
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("127.0.0.1:5001", true, true),
                ("m.example", false, true),
                ("plain:5002", true, true),
                ("registry-1.docker.io", false, false),
            ]
        );
        let eps = cfg.endpoints("127.0.0.1:5000");
        assert_eq!(eps.len(), 1);
        assert!(eps[0].plain_http && !eps[0].is_mirror);
        let mut http = cfg.http_hosts();
        http.sort();
        assert_eq!(
            http,
            vec![
                "127.0.0.1:5000",
                "127.0.0.1:5001",
                "plain:5002",
                "plain:5002"
            ]
        );
    }
}
