//! TLS of the kubelet API: the serving certificate, re-read whenever the bootstrap
//! publishes new files, and client certificates requested but checked only after the
//! handshake (as upstream's `RequestClientCert`), so a bearer token still works and a
//! certificate from an unknown CA is a 401, not a failed handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::sync::watch;

use crate::bootstrap::PemPaths;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("client CA file {path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The current serving pair; none until the first certificate exists.
#[derive(Debug)]
pub struct Serving {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl Serving {
    /// Loads the current pair and keeps it current as `paths` changes.
    pub fn follow(mut paths: watch::Receiver<Option<PemPaths>>) -> Arc<Self> {
        let serving = Arc::new(Self {
            current: RwLock::new(None),
        });
        let first = paths.borrow_and_update().clone();
        serving.load(first.as_ref());
        let weak = Arc::downgrade(&serving);
        tokio::spawn(async move {
            while paths.changed().await.is_ok() {
                let Some(s) = weak.upgrade() else { return };
                let p = paths.borrow_and_update().clone();
                s.load(p.as_ref());
            }
        });
        serving
    }

    fn load(&self, paths: Option<&PemPaths>) {
        let Some(paths) = paths else { return };
        match certified_key(&paths.cert, &paths.key) {
            Ok(key) => {
                tracing::info!(cert = %paths.cert.display(), "serving certificate loaded");
                if let Ok(mut c) = self.current.write() {
                    *c = Some(Arc::new(key));
                }
            }
            Err(e) => {
                tracing::warn!(err = %e, "serving certificate not loaded; keeping the previous one")
            }
        }
    }
}

impl ResolvesServerCert for Serving {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().and_then(|c| c.clone())
    }
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let pem = |path: &Path, reason: String| Error::Pem {
        path: path.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(cert, "no certificate".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| pem(key, e.to_string()))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// Asks for a client certificate, checks only that the client holds its key; the chain
/// is judged by [`ClientCas::identify`] after the handshake.
#[derive(Debug)]
pub struct RequestClientCert {
    provider: Arc<CryptoProvider>,
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The CAs client certificates are verified against (`--client-ca-file`).
#[derive(Debug, Clone)]
pub struct ClientCas {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// Who a verified client certificate names: user = CN, groups = O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertUser {
    pub name: String,
    pub groups: Vec<String>,
}

impl ClientCas {
    pub fn none() -> Self {
        Self { verifier: None }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let err = |reason: String| Error::ClientCa {
            path: path.to_path_buf(),
            reason,
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
            roots
                .add(cert.map_err(|e| err(e.to_string()))?)
                .map_err(|e| err(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(err("no certificate".into()));
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            verifier: Some(verifier),
        })
    }

    fn hints(&self) -> Vec<DistinguishedName> {
        self.verifier
            .as_ref()
            .map(|v| v.root_hint_subjects().to_vec())
            .unwrap_or_default()
    }

    /// The user of a presented chain, when it verifies; none otherwise.
    pub fn identify(&self, chain: &[CertificateDer<'_>]) -> Option<CertUser> {
        let verifier = self.verifier.as_ref()?;
        let (leaf, intermediates) = chain.split_first()?;
        if let Err(e) = verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            tracing::debug!(err = %e, "client certificate not accepted");
            return None;
        }
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())?
            .to_string();
        let groups = subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        Some(CertUser { name, groups })
    }
}

/// The server side of TLS: current serving pair, client certificates requested.
pub fn server_config(serving: Arc<Serving>, cas: &ClientCas) -> Result<rustls::ServerConfig> {
    let provider = provider();
    let verifier = Arc::new(RequestClientCert {
        provider: provider.clone(),
        hints: cas.hints(),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(serving);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).expect("ca").pem();
        (rcgen::Issuer::new(params, key), pem)
    }

    fn client(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "admins");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params
            .signed_by(&key, issuer)
            .expect("client")
            .der()
            .clone()
    }

    #[test]
    fn client_certificates_of_the_ca_name_their_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (issuer, pem) = ca("trusted");
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, pem).expect("write");
        let cas = ClientCas::load(&path).expect("client CA");
        assert_eq!(
            cas.identify(&[client(&issuer)]),
            Some(CertUser {
                name: "alice".into(),
                groups: vec!["admins".into()],
            })
        );
        let (other, _) = ca("other");
        assert_eq!(cas.identify(&[client(&other)]), None);
        assert_eq!(cas.identify(&[]), None);
        assert_eq!(ClientCas::none().identify(&[client(&issuer)]), None);
        std::fs::write(&path, "not a certificate").expect("write");
        assert!(ClientCas::load(&path).is_err());
    }

    fn pair(dir: &Path, name: &str) -> (PemPaths, Vec<u8>) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let paths = PemPaths {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&paths.cert, cert.pem()).expect("write");
        std::fs::write(&paths.key, key.serialize_pem()).expect("write");
        (paths, cert.der().to_vec())
    }

    fn current(s: &Serving) -> Option<Vec<u8>> {
        let c = s.current.read().expect("lock");
        c.as_ref().map(|k| k.cert[0].to_vec())
    }

    #[tokio::test]
    async fn serving_certificate_follows_the_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, rx) = watch::channel(None);
        let serving = Serving::follow(rx);
        assert_eq!(current(&serving), None);
        let (a, a_der) = pair(dir.path(), "a");
        tx.send_replace(Some(a));
        let (b, b_der) = pair(dir.path(), "b");
        for want in [a_der, b_der] {
            let mut ok = false;
            for _ in 0..100 {
                tokio::task::yield_now().await;
                if current(&serving).as_ref() == Some(&want) {
                    ok = true;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(ok, "serving certificate not reloaded");
            tx.send_replace(Some(b.clone()));
        }
        // Unreadable files: the previous pair stays.
        std::fs::write(&b.cert, "garbage").expect("write");
        tx.send_replace(Some(b));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(current(&serving).is_some());
    }
}
