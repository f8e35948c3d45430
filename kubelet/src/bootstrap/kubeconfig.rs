//! Reading the client certificate a kubeconfig names, and writing the kubeconfig a
//! bootstrapped node uses: the bootstrap kubeconfig's cluster (server, CA) with the
//! node's own certificate, as upstream writes it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::Engine as _;
use kube::config::{
    AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext,
};
use secrecy::ExposeSecret as _;

use super::pki::{CertInfo, Pair};
use super::{Error, Result, store};

/// Reads a kubeconfig (file paths in it made absolute, as kube does).
pub fn read(path: &Path) -> Result<Kubeconfig> {
    Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
        path: path.to_path_buf(),
        source,
    })
}

/// The cluster and user of the kubeconfig's current context.
pub fn current(kc: &Kubeconfig, path: &Path) -> Result<(Cluster, AuthInfo)> {
    let bad = |reason: String| Error::KubeconfigContent {
        path: path.to_path_buf(),
        reason,
    };
    let context_name = match &kc.current_context {
        Some(c) if !c.is_empty() => c.clone(),
        _ => match kc.contexts.as_slice() {
            [only] => only.name.clone(),
            _ => return Err(bad("no current-context".into())),
        },
    };
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| bad(format!("context {context_name:?} is not defined")))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| bad(format!("cluster {:?} is not defined", context.cluster)))?;
    let user = match &context.user {
        Some(name) => kc
            .auth_infos
            .iter()
            .find(|u| &u.name == name)
            .and_then(|u| u.auth_info.clone())
            .ok_or_else(|| bad(format!("user {name:?} is not defined")))?,
        None => AuthInfo::default(),
    };
    Ok((cluster, user))
}

/// The client certificate and key of `user` (inline data or files); none when the user
/// authenticates otherwise (a token).
pub fn client_pair(user: &AuthInfo, kubeconfig: &Path) -> Result<Option<Pair>> {
    let load = |data: Option<&str>, file: Option<&String>, what: &str| -> Result<Option<Vec<u8>>> {
        if let Some(d) = data.filter(|d| !d.is_empty()) {
            return base64::engine::general_purpose::STANDARD
                .decode(d.trim())
                .map(Some)
                .map_err(|e| Error::KubeconfigContent {
                    path: kubeconfig.to_path_buf(),
                    reason: format!("{what}-data is not base64: {e}"),
                });
        }
        match file.filter(|f| !f.is_empty()) {
            Some(f) => std::fs::read(f).map(Some).map_err(|source| Error::Read {
                path: PathBuf::from(f),
                source,
            }),
            None => Ok(None),
        }
    };
    let cert = load(
        user.client_certificate_data.as_deref(),
        user.client_certificate.as_ref(),
        "client-certificate",
    )?;
    let key = load(
        user.client_key_data.as_ref().map(|k| k.expose_secret()),
        user.client_key.as_ref(),
        "client-key",
    )?;
    let where_ = || {
        user.client_certificate
            .clone()
            .map(PathBuf::from)
            .unwrap_or_else(|| kubeconfig.to_path_buf())
    };
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(Error::KubeconfigContent {
            path: kubeconfig.to_path_buf(),
            reason: "client-certificate without client-key".into(),
        }),
        (None, Some(_)) => Err(Error::KubeconfigContent {
            path: kubeconfig.to_path_buf(),
            reason: "client-key without client-certificate".into(),
        }),
        (Some(c), Some(k)) => {
            Pair::from_pem(&c, &k)
                .map(Some)
                .map_err(|reason| Error::InvalidPem {
                    path: where_(),
                    reason,
                })
        }
    }
}

/// Whether a kubeconfig holds a usable client certificate.
#[derive(Debug)]
pub enum Validity {
    Missing,
    /// Why it is not usable (logged; the node bootstraps again).
    Invalid(String),
    Valid(CertInfo),
}

/// Upstream's `isClientConfigStillValid`: the kubeconfig exists, names a client
/// certificate and key that load, and no certificate of the chain has expired. Only a
/// failure to look at the file at all is an error.
pub fn check(path: &Path, now: SystemTime) -> Result<Validity> {
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Validity::Missing),
        Err(source) => {
            return Err(Error::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    let pair = read(path)
        .and_then(|kc| current(&kc, path))
        .and_then(|(_, user)| client_pair(&user, path));
    Ok(match pair {
        Err(e) => Validity::Invalid(e.to_string()),
        Ok(None) => Validity::Invalid(format!("{} has no client certificate", path.display())),
        Ok(Some(pair)) => match pair.expired_at(now) {
            Some(c) => Validity::Invalid(format!(
                "the client certificate in {} ({}) expired at {}",
                path.display(),
                c.common_name,
                super::rfc3339(c.not_after)
            )),
            None => Validity::Valid(pair.leaf().clone()),
        },
    })
}

/// Writes (atomically, mode 0600) a kubeconfig for `cluster` whose user is the client
/// certificate and key in `pem` (both the same file, as upstream).
pub fn write_for_cert(path: &Path, cluster: &Cluster, pem: &Path) -> Result<()> {
    let pem = pem.display().to_string();
    let kc = Kubeconfig {
        api_version: Some("v1".into()),
        kind: Some("Config".into()),
        clusters: vec![NamedCluster {
            name: "default-cluster".into(),
            cluster: Some(cluster.clone()),
            ..NamedCluster::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "default-auth".into(),
            auth_info: Some(AuthInfo {
                client_certificate: Some(pem.clone()),
                client_key: Some(pem),
                ..AuthInfo::default()
            }),
            ..NamedAuthInfo::default()
        }],
        contexts: vec![NamedContext {
            name: "default-context".into(),
            context: Some(Context {
                cluster: "default-cluster".into(),
                user: Some("default-auth".into()),
                namespace: Some("default".into()),
                ..Context::default()
            }),
            ..NamedContext::default()
        }],
        current_context: Some("default-context".into()),
        ..Kubeconfig::default()
    };
    let text = serde_yaml_ng::to_string(&kc).map_err(|e| Error::KubeconfigContent {
        path: path.to_path_buf(),
        reason: format!("serializing: {e}"),
    })?;
    store::write_atomic(path, text.as_bytes(), 0o600)
}
