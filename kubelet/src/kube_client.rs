//! The API-server client: a kubeconfig (client certificate or bearer token) turned into
//! a `kube` client, and the few error shapes the agent acts on.

use std::path::Path;

use anyhow::Context as _;

/// A client for the API server the kubeconfig at `path` names.
pub async fn from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("kubeconfig {}", path.display()))?;
    kube::Client::try_from(config)
        .with_context(|| format!("API client from kubeconfig {}", path.display()))
}

/// The HTTP status of an API error answer (`None` for a transport failure).
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

pub fn is_not_found(e: &kube::Error) -> bool {
    status_code(e) == Some(404)
}

pub fn is_conflict(e: &kube::Error) -> bool {
    status_code(e) == Some(409)
}
