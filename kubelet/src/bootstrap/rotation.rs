//! Renewal before expiry (upstream's certificate manager): sleep until a random point
//! between 70% and 90% of the current certificate's lifetime, then a new key and CSR,
//! retried with backoff (2 s doubling to 32 s, then every 32 s) until issued; the new
//! pair is stored and made current.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::csr::{self, Issued};
use super::pki::{CertInfo, Template, rotation_deadline};
use super::store::Store;
use super::transport::Identity;
use super::{Error, PemPaths, Result, rfc3339};

/// What a renewed certificate goes to.
pub enum Target {
    /// The agent's client identity (closing connections made with the old one).
    Client { identity: Identity },
    /// The serving certificate's readers (told to reload the same paths).
    Serving {
        paths: PemPaths,
        current: watch::Sender<Option<PemPaths>>,
    },
}

pub struct Rotation {
    pub store: Store,
    pub template: Template,
    /// How long one CSR may wait for its certificate.
    pub wait: Duration,
    /// The agent's client: with a client certificate, it presents the current one.
    pub client: kube::Client,
    /// For the client certificate: once the current one has expired, requests go with
    /// the bootstrap kubeconfig's credentials instead (as upstream).
    pub bootstrap: Option<PathBuf>,
    pub target: Target,
}

impl Rotation {
    fn what(&self) -> &'static str {
        match self.target {
            Target::Client { .. } => "client",
            Target::Serving { .. } => "serving",
        }
    }

    /// Renews for as long as the agent runs; `current` is the certificate in use (none:
    /// request one at once).
    pub async fn run(self, mut current: Option<CertInfo>, shutdown: CancellationToken) {
        let what = self.what();
        loop {
            let now = SystemTime::now();
            let deadline = match &current {
                Some(c) if self.template.satisfied_by(c) => {
                    let d = rotation_deadline(c.not_before, c.not_after, fastrand::f64());
                    tracing::info!(
                        certificate = what,
                        not_after = %rfc3339(c.not_after),
                        rotation = %rfc3339(d),
                        "certificate rotation scheduled"
                    );
                    d
                }
                Some(c) => {
                    tracing::info!(certificate = what, subject = %c.common_name, dns = ?c.dns_names, ips = ?c.ips, "the current certificate does not name what the node needs; requesting a new one");
                    now
                }
                None => now,
            };
            if !sleep_until(deadline, &shutdown).await {
                return;
            }
            let Some(issued) = self.renew(current.as_ref(), &shutdown).await else {
                return;
            };
            current = Some(issued.pair.leaf().clone());
        }
    }

    /// One certificate, retried until issued and installed; none when stopped.
    async fn renew(
        &self,
        current: Option<&CertInfo>,
        shutdown: &CancellationToken,
    ) -> Option<Issued> {
        let what = self.what();
        let mut delay = Duration::from_secs(2);
        let mut attempts = 0u32;
        loop {
            let attempt = async {
                let client = self.credentials(current).await?;
                let issued = csr::obtain(&client, &self.template, self.wait, shutdown).await?;
                self.install(&issued)?;
                Ok::<_, Error>(issued)
            };
            match attempt.await {
                Ok(issued) => {
                    tracing::info!(certificate = what, csr = %issued.csr, not_after = %rfc3339(issued.pair.leaf().not_after), "certificate rotated");
                    return Some(issued);
                }
                Err(Error::Stopped { .. }) => return None,
                Err(e) => {
                    tracing::error!(certificate = what, err = %e, retry_in = ?delay, "renewing the certificate");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return None,
            }
            attempts += 1;
            // Upstream: five doublings from 2 s, then every 32 s.
            if attempts < 5 {
                delay *= 2;
            }
        }
    }

    /// The client the CSR goes through.
    async fn credentials(&self, current: Option<&CertInfo>) -> Result<kube::Client> {
        let expired = current.is_none_or(|c| c.expired_at(SystemTime::now()));
        match (&self.target, &self.bootstrap) {
            (Target::Client { .. }, Some(path)) if expired => {
                tracing::info!(bootstrap = %path.display(), "the client certificate has expired; requesting with the bootstrap credentials");
                super::plain_client(path).await
            }
            _ => Ok(self.client.clone()),
        }
    }

    fn install(&self, issued: &Issued) -> Result<()> {
        self.store.update(
            &issued.cert_pem,
            issued.key_pem.as_bytes(),
            SystemTime::now(),
        )?;
        match &self.target {
            Target::Client { identity } => {
                let key = issued
                    .pair
                    .certified_key()
                    .map_err(|reason| Error::BadCertificate {
                        name: issued.csr.clone(),
                        reason,
                    })?;
                identity.replace(key);
            }
            Target::Serving { paths, current } => {
                current.send_replace(Some(paths.clone()));
            }
        }
        Ok(())
    }
}

/// Sleeps until the wall clock reaches `deadline` (checked at least hourly, so a
/// suspended machine or a clock step is noticed); false when stopped first.
async fn sleep_until(deadline: SystemTime, shutdown: &CancellationToken) -> bool {
    loop {
        let left = match deadline.duration_since(SystemTime::now()) {
            Ok(left) if !left.is_zero() => left,
            _ => return true,
        };
        tokio::select! {
            _ = tokio::time::sleep(left.min(Duration::from_secs(3600))) => {}
            _ = shutdown.cancelled() => return false,
        }
    }
}
