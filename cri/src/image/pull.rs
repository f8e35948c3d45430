//! Pulling from registries (OCI Distribution API v2) through `oci-client`, which does the
//! HTTP, the `WWW-Authenticate` bearer-token flow and basic auth. On top of it: mirrors
//! tried in order with fallback to the upstream (as containerd's hosts configuration),
//! insecure (plain HTTP) registries, extra root certificates for private CAs (for every
//! host or for one), and our own verification of every byte.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
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
    /// PEM files of root certificates trusted, besides the system's, for every registry
    /// and mirror.
    pub ca_files: Vec<PathBuf>,
    /// Host (`host[:port]` of a registry or a mirror) → a PEM file of root certificates
    /// trusted for that host only, besides `ca_files` and the system's.
    pub host_ca_files: HashMap<String, PathBuf>,
}

/// One place to pull from: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub plain_http: bool,
    pub is_mirror: bool,
}

/// Where the API of `registry` lives: docker.io's is at registry-1.docker.io.
fn api_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "registry-1.docker.io"
    } else {
        registry
    }
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
        let upstream = api_host(registry);
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

/// Root certificates from the configured PEM files, read once at start.
#[derive(Debug, Clone, Default)]
struct Roots {
    /// Trusted for every host.
    global: Vec<Certificate>,
    /// API host → trusted for that host only.
    by_host: HashMap<String, Vec<Certificate>>,
}

impl Roots {
    fn load(config: &RegistryConfig) -> Result<Self> {
        let mut roots = Self::default();
        for path in &config.ca_files {
            roots.global.push(load_ca_file(path)?);
        }
        for (host, path) in &config.host_ca_files {
            roots
                .by_host
                .entry(api_host(host).to_string())
                .or_default()
                .push(load_ca_file(path)?);
        }
        Ok(roots)
    }
}

/// Reads a PEM file of root certificates and checks that every certificate in it parses
/// as a root, the way the pull clients will take it.
fn load_ca_file(path: &Path) -> Result<Certificate> {
    let bad = |reason: String| Error::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let data = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    // The client skips anything in the file that is not a certificate.
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    if !data.windows(BEGIN.len()).any(|w| w == BEGIN) {
        return Err(bad("no PEM certificate in it".into()));
    }
    let cert = Certificate {
        encoding: CertificateEncoding::Pem,
        data,
    };
    client(Vec::new(), vec![cert.clone()]).map_err(|e| bad(error_chain(&e)))?;
    Ok(cert)
}

/// An oci client speaking plain HTTP to `http_hosts` and trusting `roots` besides the
/// system's roots (which [`crate::tls_roots::ensure`] made sure exist).
fn client(
    http_hosts: Vec<String>,
    roots: Vec<Certificate>,
) -> std::result::Result<oci_client::Client, OciDistributionError> {
    let config = ClientConfig {
        protocol: ClientProtocol::HttpsExcept(http_hosts),
        // Digests are verified by us; platform selection too.
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(30)),
        read_timeout: Some(std::time::Duration::from_secs(300)),
        extra_root_certificates: roots,
        ..Default::default()
    };
    // Never `Client::new`: its fallback drops the roots we were told to trust.
    oci_client::Client::try_from(config)
}

/// Clients by trust: one for the hosts with no roots of their own, one per host with
/// some. A client caches tokens, so one set serves one set of credentials.
#[derive(Clone)]
struct Clients {
    default: oci_client::Client,
    by_host: HashMap<String, oci_client::Client>,
}

impl Clients {
    fn build(config: &RegistryConfig, roots: &Roots) -> Result<Self> {
        let build = |host: &str, roots: Vec<Certificate>| {
            client(config.http_hosts(), roots).map_err(|e| Error::RegistryClient {
                host: host.to_string(),
                reason: error_chain(&e),
            })
        };
        let default = build("*", roots.global.clone())?;
        let mut by_host = HashMap::new();
        for (host, own) in &roots.by_host {
            let all = roots.global.iter().chain(own).cloned().collect();
            by_host.insert(host.clone(), build(host, all)?);
        }
        Ok(Self { default, by_host })
    }

    fn for_host(&self, host: &str) -> oci_client::Client {
        self.by_host.get(host).unwrap_or(&self.default).clone()
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

/// Shared registry access. Anonymous pulls share one set of clients (and their token
/// caches); authenticated pulls get their own, so tokens never leak between credentials.
pub struct Registries {
    config: RegistryConfig,
    roots: Roots,
    anonymous: Clients,
}

impl Registries {
    /// Reads the configured root certificates; a missing or unusable file is an error
    /// naming it.
    pub fn new(config: RegistryConfig) -> Result<Self> {
        let roots = Roots::load(&config)?;
        let anonymous = Clients::build(&config, &roots)?;
        Ok(Self {
            config,
            roots,
            anonymous,
        })
    }

    /// Finds the first endpoint that serves the manifest for `image`; returns a source
    /// bound to that endpoint, the manifest bytes and their digest (verified).
    pub async fn resolve(
        &self,
        image: &ImageRef,
        creds: &Credentials,
    ) -> Result<(Arc<RegistrySource>, Vec<u8>, String)> {
        let authenticated;
        let clients = match creds {
            Credentials::Anonymous => &self.anonymous,
            _ => {
                authenticated = Clients::build(&self.config, &self.roots)?;
                &authenticated
            }
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
                client: clients.for_host(&ep.host),
                is_mirror: ep.is_mirror,
                host: ep.host,
            })
            .collect();
        // Mirrors may lack an image; only the registry itself can say it does not exist.
        let mut upstream_not_found = false;
        for (i, h) in hosts.iter().enumerate() {
            let reference = image.to_client_ref(&h.host);
            tracing::debug!(host = %h.host, image = %image, "fetching manifest");
            match h
                .client
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
                        image: image.clone(),
                        hosts: hosts[i..].to_vec(),
                    });
                    return Ok((source, bytes.to_vec(), digest));
                }
                Err(e) => {
                    let err = map_err(&h.host, image, Asked::Manifest, e);
                    tracing::info!(host = %h.host, image = %image, err = %err, "registry host failed");
                    if single {
                        return Err(err);
                    }
                    if matches!(err, Error::NotFound { .. }) {
                        upstream_not_found |= !h.is_mirror;
                        errors.push(format!("{}: not found", h.host));
                    } else {
                        errors.push(format!("{}: {err}", h.host));
                    }
                }
            }
        }
        if upstream_not_found {
            return Err(Error::NotFoundOnHosts {
                reference: image.to_string(),
                errors,
            });
        }
        Err(Error::AllHostsFailed {
            reference: image.to_string(),
            errors,
        })
    }
}

/// What a registry was asked for: only a missing manifest means a missing image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Manifest,
    Blob,
}

fn map_err(host: &str, image: &ImageRef, asked: Asked, e: OciDistributionError) -> Error {
    let message = error_chain(&e);
    let has_code = |codes: &[OciErrorCode]| match &e {
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|err| codes.contains(&err.code))
        }
        _ => false,
    };
    let unauthorized = match &e {
        OciDistributionError::AuthenticationFailure(_)
        | OciDistributionError::UnauthorizedError { .. } => true,
        OciDistributionError::ServerError { code, .. } => *code == 401 || *code == 403,
        _ => has_code(&[OciErrorCode::Unauthorized, OciErrorCode::Denied]),
    };
    if unauthorized {
        return Error::Unauthorized {
            host: host.to_string(),
            reference: image.to_string(),
            message,
        };
    }
    let not_found = asked == Asked::Manifest
        && match &e {
            OciDistributionError::ImageManifestNotFoundError(_) => true,
            OciDistributionError::ServerError { code, .. } => *code == 404,
            _ => has_code(&[
                OciErrorCode::ManifestUnknown,
                OciErrorCode::NameUnknown,
                OciErrorCode::NotFound,
            ]),
        };
    if not_found {
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

/// An error with its sources: a failed TLS handshake then says which certificate check
/// failed, not only that the request did.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// One host to fetch from, with the credentials it may see and the client that trusts
/// its certificates.
#[derive(Clone)]
struct Host {
    host: String,
    auth: RegistryAuth,
    client: oci_client::Client,
    is_mirror: bool,
}

/// Blobs of one image. Each blob is asked first from the host that served the manifest,
/// then from the hosts after it (later mirrors, then the registry itself), as containerd
/// does: a mirror that has the manifest but lost a blob does not fail the pull.
pub struct RegistrySource {
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
            let (bytes, _) = h
                .client
                .pull_manifest_raw(&child.to_client_ref(&h.host), &h.auth, ACCEPTED_MANIFESTS)
                .await
                .map_err(|e| map_err(&h.host, child, Asked::Manifest, e))?;
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
            h.client.store_auth_if_needed(&h.host, &h.auth).await;
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
            let sized = h
                .client
                .pull_blob_stream(&self.image.to_client_ref(&h.host), desc.digest.as_str())
                .await
                .map_err(|e| map_err(&h.host, &self.image, Asked::Blob, e))?;
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
                h.client
                    .pull_blob_stream(&self.image.to_client_ref(&h.host), desc.digest.as_str())
                    .await
                    .map_err(|e| map_err(&h.host, &self.image, Asked::Blob, e))
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

    /// A self-signed CA certificate (its key is thrown away).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUCfuxi9PxqfSTLi28e8RdhTN9npcwCgYIKoZIzj0EAwIw
HzEdMBsGA1UEAwwUbm9kZWxldC11bml0LXRlc3QtY2EwIBcNMjYxMTIzMTk0MDIw
WhgPMjEyNjEwMzAxOTQwMjBaMB8xHTAbBgNVBAMMFG5vZGVsZXQtdW5pdC10ZXN0
LWNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEJlZKircvMyx/wrTrMYniok4T
hYKHHOlDFiN/WY/GmrdZtFSLeDclBmsp8glmpcB7sEMZrTl+rndBzWPg8mRo5aNT
MFEwHQYDVR0OBBYEFIQcynNyOxa6OPuLI0jCQ0998i7yMB8GA1UdIwQYMBaAFIQc
ynNyOxa6OPuLI0jCQ0998i7yMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwID
SAAwRQIgPPVvg67kfStY1jY7qt/fSYkmptgD/qLDTIyqa6r747kCIQDRZHdUaCGC
IUIFSWw84gBRo6xCrQqsaYzs+aHt9vlkOA==
-----END CERTIFICATE-----
";

    #[test]
    fn ca_files_are_read_at_start_and_bad_ones_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let good = write("ca.pem", CA_PEM);
        let cases = [
            (dir.path().join("missing.pem"), "No such file"),
            (write("empty.pem", ""), "no PEM certificate"),
            (
                write(
                    "key.pem",
                    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                ),
                "no PEM certificate",
            ),
            (
                write(
                    "garbage.pem",
                    "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                ),
                "",
            ),
            (
                write(
                    "notx509.pem",
                    "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
                ),
                "",
            ),
            (write("truncated.pem", &CA_PEM[..200]), ""),
        ];
        for (bad, reason) in cases {
            for cfg in [
                RegistryConfig {
                    ca_files: vec![good.clone(), bad.clone()],
                    ..Default::default()
                },
                RegistryConfig {
                    host_ca_files: HashMap::from([("myreg:5000".to_string(), bad.clone())]),
                    ..Default::default()
                },
            ] {
                let err = Registries::new(cfg).err().expect("bad CA file must fail");
                assert!(
                    matches!(&err, Error::CaFile { path, .. } if *path == bad),
                    "{}: {err}",
                    bad.display()
                );
                assert!(
                    err.to_string().contains(&bad.display().to_string()),
                    "{err}"
                );
                assert!(err.to_string().contains(reason), "{err}");
            }
        }

        let regs = Registries::new(RegistryConfig {
            ca_files: vec![good.clone()],
            host_ca_files: HashMap::from([
                ("docker.io".to_string(), good.clone()),
                ("myreg:5000".to_string(), good.clone()),
            ]),
            ..Default::default()
        })
        .expect("good CA files");
        assert_eq!(regs.roots.global.len(), 1);
        let mut hosts: Vec<&str> = regs.anonymous.by_host.keys().map(String::as_str).collect();
        hosts.sort();
        // docker.io is reached at its API host, where its roots must apply.
        assert_eq!(hosts, vec!["myreg:5000", "registry-1.docker.io"]);
    }

    #[test]
    fn registry_answers_map_to_errors() {
        use oci_client::errors::{OciEnvelope, OciError};
        let image = ImageRef::parse("127.0.0.1:5000/a/b:1").expect("ref");
        let envelope = |code: OciErrorCode| OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: "from the registry".into(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "https://127.0.0.1:5000/v2/a/b/manifests/1".into(),
        };
        let server = |code: u16| OciDistributionError::ServerError {
            code,
            url: "https://127.0.0.1:5000/v2/a/b/manifests/1".into(),
            message: String::new(),
        };
        use Asked::{Blob, Manifest};
        let cases: Vec<(Asked, OciDistributionError, &str)> = vec![
            (
                Manifest,
                envelope(OciErrorCode::ManifestUnknown),
                "not found",
            ),
            (Manifest, envelope(OciErrorCode::NameUnknown), "not found"),
            (Manifest, envelope(OciErrorCode::NotFound), "not found"),
            (Manifest, server(404), "not found"),
            (Manifest, envelope(OciErrorCode::Denied), "unauthorized"),
            (
                Manifest,
                envelope(OciErrorCode::Unauthorized),
                "unauthorized",
            ),
            (Manifest, server(403), "unauthorized"),
            (
                Manifest,
                envelope(OciErrorCode::Toomanyrequests),
                "registry",
            ),
            (Manifest, server(500), "registry"),
            (
                Manifest,
                OciDistributionError::GenericError(None),
                "registry",
            ),
            // A missing blob is a broken image, not a missing one.
            (Blob, envelope(OciErrorCode::BlobUnknown), "registry"),
            (Blob, envelope(OciErrorCode::NameUnknown), "registry"),
            (Blob, server(404), "registry"),
            (Blob, envelope(OciErrorCode::Denied), "unauthorized"),
        ];
        for (asked, e, want) in cases {
            let text = format!("{asked:?}: {e}");
            let got = match map_err("127.0.0.1:5000", &image, asked, e) {
                Error::NotFound { .. } => "not found",
                Error::Unauthorized { .. } => "unauthorized",
                Error::Registry { .. } => "registry",
                other => panic!("{text}: unexpected {other}"),
            };
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn error_chains_keep_their_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("error sending request")]
        struct Request(#[source] io::Error);
        let e = Request(io::Error::other("invalid peer certificate: UnknownIssuer"));
        assert_eq!(
            error_chain(&e),
            "error sending request: invalid peer certificate: UnknownIssuer"
        );
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
