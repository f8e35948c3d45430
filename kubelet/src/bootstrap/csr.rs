//! One certificate through the API: a new key made here, a `certificates.k8s.io/v1`
//! CertificateSigningRequest sent, and a watch on it until a signer has issued the
//! certificate, or an approver denied it, or it failed (upstream's `csr.RequestCertificate`
//! and `csr.WaitForCertificate`). The private key never leaves this process.

use std::pin::pin;
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher;
use tokio_util::sync::CancellationToken;

use super::pki::{self, Pair, Template};
use super::{Error, Result};

/// A certificate issued for a key made here.
pub struct Issued {
    /// The CSR's name.
    pub csr: String,
    /// The chain the signer issued, as it came.
    pub cert_pem: Vec<u8>,
    pub key_pem: String,
    pub pair: Pair,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("csr", &self.csr)
            .field("leaf", self.pair.leaf())
            .finish_non_exhaustive()
    }
}

/// The CSR object for `csr_pem` (`generateName: csr-`, as upstream's certificate
/// manager; no `expirationSeconds`: the signer's default lifetime).
pub fn object(template: &Template, csr_pem: &str) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            generate_name: Some("csr-".into()),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.as_bytes().to_vec()),
            signer_name: template.signer.to_string(),
            usages: Some(template.usages.iter().map(|u| u.to_string()).collect()),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    }
}

/// Makes a key, requests a certificate for it as `template` says and waits up to `wait`
/// for it (creation is retried while the API server is unreachable).
pub async fn obtain(
    client: &kube::Client,
    template: &Template,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Result<Issued> {
    let request = pki::new_request(template).map_err(|source| Error::Generate {
        subject: template.common_name.clone(),
        source,
    })?;
    let api: Api<CertificateSigningRequest> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + wait;
    let created = create(&api, template, &request.csr_pem, deadline, shutdown).await?;
    let name = created.metadata.name.clone().unwrap_or_default();
    tracing::info!(
        csr = %name,
        signer = template.signer,
        subject = %template.common_name,
        "certificate signing request created; waiting for approval and a certificate"
    );
    let cert_pem = wait_for_certificate(
        api,
        &name,
        created.metadata.uid.as_deref(),
        template.signer,
        deadline,
        wait,
        shutdown,
    )
    .await?;
    let pair = Pair::from_pem(&cert_pem, request.key_pem.as_bytes()).map_err(|reason| {
        Error::BadCertificate {
            name: name.clone(),
            reason,
        }
    })?;
    let leaf = pair.leaf();
    if leaf.expired_at(SystemTime::now()) {
        return Err(Error::BadCertificate {
            name,
            reason: format!("it expired at {}", super::rfc3339(leaf.not_after)),
        });
    }
    tracing::info!(
        csr = %name,
        signer = template.signer,
        subject = %leaf.common_name,
        not_after = %super::rfc3339(leaf.not_after),
        "certificate issued"
    );
    Ok(Issued {
        csr: name,
        cert_pem,
        key_pem: request.key_pem,
        pair,
    })
}

/// Creates the CSR; an unreachable or overloaded API server is retried until
/// `deadline`, a refusal (401, 403, 422…) is final.
async fn create(
    api: &Api<CertificateSigningRequest>,
    template: &Template,
    csr_pem: &str,
    deadline: tokio::time::Instant,
    shutdown: &CancellationToken,
) -> Result<CertificateSigningRequest> {
    let obj = object(template, csr_pem);
    let mut delay = Duration::from_millis(500);
    loop {
        match api.create(&PostParams::default(), &obj).await {
            Ok(created) => return Ok(created),
            Err(source) => {
                let transient = match &source {
                    kube::Error::Api(s) => s.code == 429 || s.code >= 500,
                    _ => true,
                };
                if !transient || tokio::time::Instant::now() + delay >= deadline {
                    return Err(Error::CreateCsr {
                        signer: template.signer,
                        source,
                    });
                }
                tracing::warn!(signer = template.signer, err = %source, "creating a certificate signing request; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Err(Error::Stopped { what: format!("creating a certificate signing request for signer {}", template.signer) }),
                }
                delay = (delay * 2).min(Duration::from_secs(8));
            }
        }
    }
}

/// What a CSR says now: its certificate once approved and issued, an error once denied
/// or failed, nothing yet otherwise.
pub fn outcome(
    name: &str,
    signer: &str,
    csr: &CertificateSigningRequest,
) -> Result<Option<Vec<u8>>> {
    let status = csr.status.as_ref();
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    let mut approved = false;
    for c in conditions.iter().filter(|c| c.status == "True") {
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        match c.type_.as_str() {
            "Denied" => {
                return Err(Error::Denied {
                    name: name.to_string(),
                    signer: signer.to_string(),
                    reason: text(&c.reason),
                    message: text(&c.message),
                });
            }
            "Failed" => {
                return Err(Error::Failed {
                    name: name.to_string(),
                    signer: signer.to_string(),
                    reason: text(&c.reason),
                    message: text(&c.message),
                });
            }
            "Approved" => approved = true,
            _ => {}
        }
    }
    Ok(status
        .and_then(|s| s.certificate.as_ref())
        .filter(|c| approved && !c.0.is_empty())
        .map(|c| c.0.clone()))
}

/// Watches CSR `name` (uid `uid`) until [`outcome`] decides, the CSR is deleted (or
/// replaced by another of that name), `deadline` passes or the agent stops. Watch
/// failures are retried with backoff.
async fn wait_for_certificate(
    api: Api<CertificateSigningRequest>,
    name: &str,
    uid: Option<&str>,
    signer: &str,
    deadline: tokio::time::Instant,
    wait: Duration,
    shutdown: &CancellationToken,
) -> Result<Vec<u8>> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = pin!(watcher(api, config).default_backoff());
    let deleted = || Error::Deleted {
        name: name.to_string(),
    };
    let mut listed = false;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Error::Timeout { name: name.to_string(), signer: signer.to_string(), waited: wait });
            }
            _ = shutdown.cancelled() => {
                return Err(Error::Stopped { what: format!("waiting for certificate signing request {name}") });
            }
        };
        match event {
            None => return Err(deleted()),
            Some(Err(e)) => {
                tracing::warn!(csr = %name, err = %e, "watching the certificate signing request; retrying");
            }
            Some(Ok(watcher::Event::Init)) => listed = false,
            Some(Ok(watcher::Event::InitApply(csr) | watcher::Event::Apply(csr))) => {
                listed = true;
                if uid.is_some() && csr.metadata.uid.as_deref() != uid {
                    return Err(deleted());
                }
                if let Some(cert) = outcome(name, signer, &csr)? {
                    return Ok(cert);
                }
            }
            Some(Ok(watcher::Event::InitDone)) => {
                if !listed {
                    return Err(deleted());
                }
            }
            Some(Ok(watcher::Event::Delete(_))) => return Err(deleted()),
        }
    }
}
