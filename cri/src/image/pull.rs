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
use oci_client::errors::{DigestError, OciDistributionError};
use oci_client::secrets::RegistryAuth;

use super::install::{ACCEPTED_MANIFESTS, Descriptor, Source, read_cap};
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
        // Credentials in a pull request are for the image's registry, not mirrors.
        let hosts: Vec<Host> = endpoints
            .into_iter()
            .map(|ep| Host {
                auth: if ep.is_mirror {
                    RegistryAuth::Anonymous
                } else {
                    creds.to_auth()
                },
                host: ep.host,
            })
            .collect();
        for (i, h) in hosts.iter().enumerate() {
            let reference = image.to_client_ref(&h.host);
            tracing::debug!(host = %h.host, image = %image, "fetching manifest");
            match client
                .pull_manifest_raw(&reference, &h.auth, ACCEPTED_MANIFESTS)
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
                        errors.push(format!("{}: {err}", h.host));
                        continue;
                    }
                    // Blobs come from this host first, then from the ones after it.
                    let source = Arc::new(RegistrySource {
                        client,
                        image: image.clone(),
                        hosts: hosts[i..].to_vec(),
                    });
                    return Ok((source, bytes.to_vec(), digest));
                }
                Err(e) => {
                    let err = map_err(&h.host, image, e);
                    tracing::info!(host = %h.host, image = %image, err = %err, "registry host failed");
                    if single {
                        return Err(err);
                    }
                    errors.push(format!("{}: {err}", h.host));
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

/// One host to fetch from, with the credentials it may see.
#[derive(Clone)]
struct Host {
    host: String,
    auth: RegistryAuth,
}

/// Blobs of one image. Each blob is asked first from the host that served the manifest,
/// then from the hosts after it (later mirrors, then the registry itself), as containerd
/// does: a mirror that has the manifest but lost a blob does not fail the pull.
pub struct RegistrySource {
    client: oci_client::Client,
    image: ImageRef,
    /// Never empty: the host that served the manifest comes first.
    hosts: Vec<Host>,
}

impl RegistrySource {
    /// The host that served the manifest.
    pub fn host(&self) -> &str {
        self.hosts
            .first()
            .map(|h| h.host.as_str())
            .unwrap_or_default()
    }

    /// Fetches a child manifest (chosen from an index).
    pub async fn manifest(&self, digest: &str) -> Result<Vec<u8>> {
        let child = self.image.at_digest(digest);
        let child = &child;
        self.on_each_host(&child.to_string(), |h: Host| async move {
            let (bytes, _) = self
                .client
                .pull_manifest_raw(&child.to_client_ref(&h.host), &h.auth, ACCEPTED_MANIFESTS)
                .await
                .map_err(|e| map_err(&h.host, child, e))?;
            Ok(bytes.to_vec())
        })
        .await
    }

    /// Runs `op` against each host in turn until one succeeds. A failure only moves on
    /// to the next host when the request itself failed: bytes already handed out are
    /// never mixed from two hosts.
    async fn on_each_host<T, F>(&self, what: &str, mut op: impl FnMut(Host) -> F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let mut errors = Vec::new();
        for h in &self.hosts {
            // Tokens are fetched lazily per host; the client needs to know whom to ask as.
            self.client.store_auth_if_needed(&h.host, &h.auth).await;
            match op(h.clone()).await {
                Ok(v) => return Ok(v),
                Err(e) if self.hosts.len() == 1 => return Err(e),
                Err(e) => {
                    tracing::info!(host = %h.host, what, err = %e, "registry host failed, trying the next");
                    errors.push(format!("{}: {e}", h.host));
                }
            }
        }
        Err(Error::AllHostsFailed {
            reference: what.to_string(),
            errors,
        })
    }

    fn blob_name(&self, desc: &Descriptor) -> String {
        self.image.with_digest(&desc.digest)
    }
}

#[async_trait]
impl Source for RegistrySource {
    async fn fetch(&self, desc: &Descriptor) -> Result<Vec<u8>> {
        self.on_each_host(&self.blob_name(desc), |h: Host| async move {
            let sized = self
                .client
                .pull_blob_stream(&self.image.to_client_ref(&h.host), desc.digest.as_str())
                .await
                .map_err(|e| map_err(&h.host, &self.image, e))?;
            read_capped(sized.stream, read_cap(desc))
                .await
                .map_err(|e| Error::Registry {
                    host: h.host.clone(),
                    reference: self.blob_name(desc),
                    message: format!("reading blob: {e}"),
                })
        })
        .await
    }

    async fn open(&self, desc: &Descriptor) -> Result<Box<dyn Read + Send>> {
        let sized = self
            .on_each_host(&self.blob_name(desc), |h: Host| async move {
                self.client
                    .pull_blob_stream(&self.image.to_client_ref(&h.host), desc.digest.as_str())
                    .await
                    .map_err(|e| map_err(&h.host, &self.image, e))
            })
            .await?;
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

/// oci-client checks the digest when a blob stream ends and reports a mismatch as an
/// error item. Our own check of the same bytes says it with the digests we expect, so that
/// item is taken as the end of the stream.
fn is_client_digest_check(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<DigestError>())
        .is_some_and(|d| matches!(d, DigestError::VerificationError { .. }))
}

/// Collects a blob stream, stopping after `cap` bytes.
async fn read_capped(
    mut stream: impl futures::Stream<Item = io::Result<bytes::Bytes>> + Unpin,
    cap: u64,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) if is_client_digest_check(&e) => break,
            Err(e) => return Err(e),
        };
        let room = usize::try_from(cap.saturating_sub(out.len() as u64)).unwrap_or(usize::MAX);
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() as u64 >= cap {
            break;
        }
    }
    Ok(out)
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
                Some(Err(e)) if is_client_digest_check(&e) => return Ok(0),
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

    #[tokio::test]
    async fn small_blobs_stop_after_the_cap() {
        let endless = futures::stream::repeat_with(|| Ok(bytes::Bytes::from_static(&[7u8; 1000])));
        let got = read_capped(endless, 2501).await.expect("read");
        assert_eq!(got.len(), 2501);
        let short = futures::stream::iter([Ok(bytes::Bytes::from_static(b"abc"))]);
        assert_eq!(read_capped(short, 10).await.expect("read"), b"abc");
        // oci-client's own digest check ends the stream: our check reports the mismatch.
        let tampered = futures::stream::iter([
            Ok(bytes::Bytes::from_static(b"abc")),
            Err(io::Error::other(DigestError::VerificationError {
                expected: "sha256:00".into(),
                actual: "sha256:11".into(),
            })),
        ]);
        assert_eq!(read_capped(tampered, 10).await.expect("read"), b"abc");
        let broken = futures::stream::iter([Err(io::Error::other("connection reset"))]);
        assert!(read_capped(broken, 10).await.is_err());
    }

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
