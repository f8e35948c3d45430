//! TLS bootstrap and certificate rotation, as upstream's `pkg/kubelet/certificate` and
//! `certificate/bootstrap`.
//!
//! - [`load_client_cert`]: with `--bootstrap-kubeconfig`, makes sure `--kubeconfig`
//!   holds a valid client certificate, requesting one with the bootstrap token if not
//!   (an ECDSA P-256 key made here, a CSR to `kubernetes.io/kube-apiserver-client-kubelet`
//!   for `CN=system:node:<node>`, `O=system:nodes`).
//! - [`client`]: the agent's `kube::Client`. With a client certificate it presents the
//!   current one and, with `rotateCertificates`, a task renews it at 70–90% of its
//!   lifetime; the same client keeps working across rotations (connections made with the
//!   old certificate are closed, callers reconnect by themselves), so nothing in the
//!   agent ever rebuilds it.
//! - [`serving_certificate`]: the :10250 server's certificate, self-signed
//!   (`kubelet.crt`/`kubelet.key`) or, with `serverTLSBootstrap`, requested from
//!   `kubernetes.io/kubelet-serving` and rotated the same way.
//!
//! Files under `--cert-dir` are upstream's: `kubelet-client-<ts>.pem` and
//! `kubelet-server-<ts>.pem` (chain then key, mode 0600), with `*-current.pem` symlinks
//! swapped atomically. Rooms: [`pki`] (keys, CSRs, certificates), [`store`] (files),
//! [`kubeconfig`], [`csr`] (the API round trip), [`rotation`], [`transport`] (the
//! rotating client).

mod csr;
mod kubeconfig;
mod pki;
mod rotation;
mod store;
mod transport;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use pki::CertInfo;

/// How long a CSR may wait to be approved and signed (upstream's 15 minutes).
pub const DEFAULT_CERT_WAIT: Duration = Duration::from_secs(15 * 60);

/// `--cert-dir` when not given: `<root-dir>/pki`, as upstream.
pub fn default_cert_dir(root_dir: &Path) -> PathBuf {
    root_dir.join("pki")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("kubeconfig {path}: {reason}")]
    KubeconfigContent { path: PathBuf, reason: String },
    #[error("API client from kubeconfig {path}: {source}")]
    Client {
        path: PathBuf,
        #[source]
        source: kube::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    InvalidPem { path: PathBuf, reason: String },
    #[error("making a key and certificate request for {subject}: {source}")]
    Generate {
        subject: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("creating a certificate signing request for signer {signer}: {source}")]
    CreateCsr {
        signer: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("certificate signing request {name} (signer {signer}) was denied: {reason}: {message}")]
    Denied {
        name: String,
        signer: String,
        reason: String,
        message: String,
    },
    #[error("certificate signing request {name} (signer {signer}) failed: {reason}: {message}")]
    Failed {
        name: String,
        signer: String,
        reason: String,
        message: String,
    },
    #[error("certificate signing request {name} was deleted before a certificate was issued")]
    Deleted { name: String },
    #[error(
        "certificate signing request {name} (signer {signer}) was not approved and signed within {waited:?}"
    )]
    Timeout {
        name: String,
        signer: String,
        waited: Duration,
    },
    #[error("certificate signing request {name}: the issued certificate is unusable: {reason}")]
    BadCertificate { name: String, reason: String },
    #[error("stopped while {what}")]
    Stopped { what: String },
    #[error(
        "serverTLSBootstrap requests the serving certificate through the API: it needs --kubeconfig"
    )]
    NoClient,
}

/// Where the client credentials live and how they are renewed.
#[derive(Debug, Clone)]
pub struct ClientCertConfig {
    /// `--kubeconfig`: used when its client certificate is valid, else written after
    /// bootstrap (pointing at `<cert-dir>/kubelet-client-current.pem`).
    pub kubeconfig: PathBuf,
    /// `--bootstrap-kubeconfig`: the API server, its CA and a bootstrap token.
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// `--cert-dir`.
    pub cert_dir: PathBuf,
    /// The node's name (`CN=system:node:<name>`).
    pub node_name: String,
    /// `rotateCertificates`: renew the client certificate before it expires.
    pub rotate: bool,
    /// How long one CSR may wait for its certificate ([`DEFAULT_CERT_WAIT`]).
    pub wait: Duration,
}

/// Where the client certificate came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No `--bootstrap-kubeconfig`: the kubeconfig is used as it is.
    NotRequested,
    /// The kubeconfig's certificate is valid.
    Kubeconfig(CertInfo),
    /// A valid pair from an earlier run was in the cert dir; the kubeconfig was written.
    CertDir(CertInfo),
    /// A certificate was requested, issued and stored; the kubeconfig was written.
    Issued { csr: String, certificate: CertInfo },
}

/// Upstream's `LoadClientCert`: with a bootstrap kubeconfig, returns once
/// `cfg.kubeconfig` holds a valid client certificate, requesting one if needed. A denied
/// or failed CSR, or none signed within `cfg.wait`, is an error.
pub async fn load_client_cert(
    cfg: &ClientCertConfig,
    shutdown: &CancellationToken,
) -> Result<Loaded> {
    let Some(bootstrap) = &cfg.bootstrap_kubeconfig else {
        return Ok(Loaded::NotRequested);
    };
    let now = SystemTime::now();
    match kubeconfig::check(&cfg.kubeconfig, now)? {
        kubeconfig::Validity::Valid(cert) => {
            tracing::info!(kubeconfig = %cfg.kubeconfig.display(), subject = %cert.common_name, not_after = %rfc3339(cert.not_after), "kubeconfig has a valid client certificate; no bootstrap needed");
            return Ok(Loaded::Kubeconfig(cert));
        }
        kubeconfig::Validity::Missing => {
            tracing::info!(kubeconfig = %cfg.kubeconfig.display(), bootstrap = %bootstrap.display(), "no kubeconfig yet: TLS bootstrap");
        }
        kubeconfig::Validity::Invalid(why) => {
            tracing::warn!(kubeconfig = %cfg.kubeconfig.display(), bootstrap = %bootstrap.display(), %why, "kubeconfig not usable: TLS bootstrap");
        }
    }
    let bootstrap_kc = kubeconfig::read(bootstrap)?;
    let (cluster, _) = kubeconfig::current(&bootstrap_kc, bootstrap)?;
    let store = store::Store::new(&cfg.cert_dir, store::CLIENT);
    let template = pki::Template::client(&cfg.node_name);
    match store.load() {
        Ok(Some(pair)) if pair.expired_at(now).is_none() && template.satisfied_by(pair.leaf()) => {
            kubeconfig::write_for_cert(&cfg.kubeconfig, &cluster, &store.current_path())?;
            tracing::info!(kubeconfig = %cfg.kubeconfig.display(), certificate = %store.current_path().display(), "the cert dir holds a valid client certificate; kubeconfig written");
            return Ok(Loaded::CertDir(pair.leaf().clone()));
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(err = %e, "the current client certificate is not usable"),
    }
    let client = plain_client(bootstrap).await?;
    let issued = csr::obtain(&client, &template, cfg.wait, shutdown).await?;
    store.update(
        &issued.cert_pem,
        issued.key_pem.as_bytes(),
        SystemTime::now(),
    )?;
    kubeconfig::write_for_cert(&cfg.kubeconfig, &cluster, &store.current_path())?;
    tracing::info!(kubeconfig = %cfg.kubeconfig.display(), certificate = %store.current_path().display(), csr = %issued.csr, "TLS bootstrap done");
    Ok(Loaded::Issued {
        csr: issued.csr,
        certificate: issued.pair.leaf().clone(),
    })
}

/// [`load_client_cert`], then the agent's client for `cfg.kubeconfig`, good for the
/// agent's whole life: with a client certificate it presents the current one
/// (`<cert-dir>/kubelet-client-current.pem` when that is valid, as rotation writes
/// there, else the kubeconfig's own) and, with `cfg.rotate`, a task (stopped by
/// `shutdown`) renews it at 70–90% of its lifetime, swaps it into this same client and
/// closes the connections made with the old one: requests and watches reconnect by
/// themselves, nothing needs a new client. A kubeconfig with a token gives kube's plain
/// client.
pub async fn client(cfg: &ClientCertConfig, shutdown: &CancellationToken) -> Result<kube::Client> {
    load_client_cert(cfg, shutdown).await?;
    let path = &cfg.kubeconfig;
    let kc = kubeconfig::read(path)?;
    let (_, user) = kubeconfig::current(&kc, path)?;
    let store = store::Store::new(&cfg.cert_dir, store::CLIENT);
    let now = SystemTime::now();
    let managed = cfg.rotate || cfg.bootstrap_kubeconfig.is_some();
    let from_store = if managed {
        match store.load() {
            Ok(Some(pair)) if pair.expired_at(now).is_none() => Some(pair),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(err = %e, "the current client certificate is not usable");
                None
            }
        }
    } else {
        None
    };
    let pair = match from_store {
        Some(p) => Some(p),
        None => kubeconfig::client_pair(&user, path)?,
    };
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: path.clone(),
                source,
            })?;
    let Some(pair) = pair else {
        if cfg.rotate {
            tracing::info!(kubeconfig = %path.display(), "rotateCertificates: the kubeconfig has no client certificate to rotate");
        }
        return kube::Client::try_from(config).map_err(|source| Error::Client {
            path: path.clone(),
            source,
        });
    };
    let leaf = pair.leaf().clone();
    if let Some(c) = pair.expired_at(now) {
        tracing::warn!(kubeconfig = %path.display(), subject = %c.common_name, not_after = %rfc3339(c.not_after), "the client certificate has expired");
    }
    let key = pair.certified_key().map_err(|reason| Error::InvalidPem {
        path: path.clone(),
        reason,
    })?;
    let identity = transport::Identity::new(key);
    let client = transport::client(config, identity.clone()).map_err(|source| Error::Client {
        path: path.clone(),
        source,
    })?;
    tracing::info!(subject = %leaf.common_name, not_after = %rfc3339(leaf.not_after), rotate = cfg.rotate, "API client with a client certificate");
    if cfg.rotate {
        let rotation = rotation::Rotation {
            store,
            template: pki::Template::client(&cfg.node_name),
            wait: cfg.wait,
            client: client.clone(),
            bootstrap: cfg.bootstrap_kubeconfig.clone(),
            target: rotation::Target::Client { identity },
        };
        tokio::spawn(rotation.run(Some(leaf), shutdown.clone()));
    }
    Ok(client)
}

/// A client for a kubeconfig as kube builds it (the bootstrap token's).
async fn plain_client(path: &Path) -> Result<kube::Client> {
    let kc = kubeconfig::read(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .map_err(|source| Error::Kubeconfig {
                path: path.to_path_buf(),
                source,
            })?;
    kube::Client::try_from(config).map_err(|source| Error::Client {
        path: path.to_path_buf(),
        source,
    })
}

/// What the serving certificate is for and how it is made.
#[derive(Debug, Clone)]
pub struct ServingConfig {
    /// `--cert-dir`.
    pub cert_dir: PathBuf,
    pub node_name: String,
    /// The node's host names (DNS SANs; an address here is an IP SAN).
    pub hostnames: Vec<String>,
    /// The node's addresses (IP SANs).
    pub ips: Vec<IpAddr>,
    /// `serverTLSBootstrap`: request it from `kubernetes.io/kubelet-serving` (and
    /// rotate it) instead of making a self-signed one.
    pub tls_bootstrap: bool,
    /// How long one CSR may wait for its certificate.
    pub wait: Duration,
}

/// A certificate chain and its key, as PEM files (the same file for a stored pair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The self-signed serving certificate's files in the cert dir, as upstream names them.
pub const SELF_SIGNED_CERT: &str = "kubelet.crt";
pub const SELF_SIGNED_KEY: &str = "kubelet.key";

/// The serving certificate's files. Self-signed (no `serverTLSBootstrap`): `kubelet.crt`
/// and `kubelet.key` in the cert dir, made when missing, unreadable or expired; the value
/// never changes. With `serverTLSBootstrap`: `kubelet-server-current.pem` (both paths),
/// none until the first certificate is issued; a task requests one when none valid is
/// stored, then renews it at 70–90% of its lifetime, and each new certificate is
/// announced (same paths: reload them). As upstream, the agent does not wait for it: a
/// serving CSR is often approved by hand.
pub async fn serving_certificate(
    cfg: &ServingConfig,
    client: Option<kube::Client>,
    shutdown: &CancellationToken,
) -> Result<watch::Receiver<Option<PemPaths>>> {
    if !cfg.tls_bootstrap {
        let paths = self_signed_files(cfg, SystemTime::now())?;
        let (tx, rx) = watch::channel(Some(paths));
        // Kept until shutdown, so readers' `changed()` only fails when the agent stops.
        let stop = shutdown.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            drop(tx);
        });
        return Ok(rx);
    }
    let client = client.ok_or(Error::NoClient)?;
    let store = store::Store::new(&cfg.cert_dir, store::SERVING);
    let paths = PemPaths {
        cert: store.current_path(),
        key: store.current_path(),
    };
    let template = pki::Template::serving(&cfg.node_name, &cfg.hostnames, &cfg.ips);
    let current = match store.load() {
        Ok(Some(pair)) if pair.expired_at(SystemTime::now()).is_none() => Some(pair.leaf().clone()),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(err = %e, "the current serving certificate is not usable");
            None
        }
    };
    let (tx, rx) = watch::channel(current.as_ref().map(|_| paths.clone()));
    let rotation = rotation::Rotation {
        store,
        template,
        wait: cfg.wait,
        client,
        bootstrap: None,
        target: rotation::Target::Serving { paths, current: tx },
    };
    tokio::spawn(rotation.run(current, shutdown.clone()));
    Ok(rx)
}

/// `kubelet.crt`/`kubelet.key`: kept while they load and have not expired, made anew
/// otherwise.
fn self_signed_files(cfg: &ServingConfig, now: SystemTime) -> Result<PemPaths> {
    let paths = PemPaths {
        cert: cfg.cert_dir.join(SELF_SIGNED_CERT),
        key: cfg.cert_dir.join(SELF_SIGNED_KEY),
    };
    let existing = match (std::fs::read(&paths.cert), std::fs::read(&paths.key)) {
        (Ok(c), Ok(k)) => match pki::Pair::from_pem(&c, &k) {
            Ok(pair) if pair.expired_at(now).is_none() => Some(pair),
            Ok(_) => {
                tracing::info!(cert = %paths.cert.display(), "the self-signed serving certificate has expired; making a new one");
                None
            }
            Err(reason) => {
                tracing::warn!(cert = %paths.cert.display(), %reason, "the self-signed serving certificate is not usable; making a new one");
                None
            }
        },
        _ => None,
    };
    if existing.is_some() {
        return Ok(paths);
    }
    let host = cfg
        .hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| cfg.node_name.clone());
    let (cert, key) = pki::self_signed(&host, &cfg.ips, now).map_err(|source| Error::Generate {
        subject: host.clone(),
        source,
    })?;
    store::write_atomic(&paths.key, key.as_bytes(), 0o600)?;
    store::write_atomic(&paths.cert, cert.as_bytes(), 0o644)?;
    tracing::info!(cert = %paths.cert.display(), %host, "self-signed serving certificate made");
    Ok(paths)
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests;
