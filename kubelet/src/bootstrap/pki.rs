//! Keys, certificate requests and certificates: made with rcgen (aws-lc-rs), read back
//! with x509-parser. Pure functions, no I/O.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

/// The signer of kubelet client certificates (`O=system:nodes`, `CN=system:node:<name>`).
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of kubelet serving certificates.
pub const SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// Upstream's usages for an ECDSA client key (an RSA key would add key encipherment).
pub const CLIENT_USAGES: &[&str] = &["digital signature", "client auth"];
/// Upstream's usages for an ECDSA serving key.
pub const SERVING_USAGES: &[&str] = &["digital signature", "server auth"];
/// The group every node certificate names.
pub const NODES_GROUP: &str = "system:nodes";

/// What a requested certificate must say (upstream's CSR template).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub common_name: String,
    pub organization: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub signer: &'static str,
    pub usages: &'static [&'static str],
}

impl Template {
    /// The node's client certificate: `CN=system:node:<name>`, `O=system:nodes`.
    pub fn client(node_name: &str) -> Self {
        Self {
            common_name: format!("system:node:{node_name}"),
            organization: NODES_GROUP.into(),
            dns_names: Vec::new(),
            ips: Vec::new(),
            signer: CLIENT_SIGNER,
            usages: CLIENT_USAGES,
        }
    }

    /// The node's serving certificate, for its addresses and host names (deduplicated,
    /// sorted, as upstream).
    pub fn serving(node_name: &str, hostnames: &[String], ips: &[IpAddr]) -> Self {
        let mut dns_names: Vec<String> = hostnames
            .iter()
            .filter(|h| !h.is_empty() && h.parse::<IpAddr>().is_err())
            .cloned()
            .collect();
        let mut ips: Vec<IpAddr> = ips
            .iter()
            .copied()
            .chain(hostnames.iter().filter_map(|h| h.parse().ok()))
            .collect();
        dns_names.sort();
        dns_names.dedup();
        ips.sort();
        ips.dedup();
        Self {
            common_name: format!("system:node:{node_name}"),
            organization: NODES_GROUP.into(),
            dns_names,
            ips,
            signer: SERVING_SIGNER,
            usages: SERVING_USAGES,
        }
    }

    /// Whether `cert` says everything this template asks for (extra names are fine), so
    /// it need not be requested again.
    pub fn satisfied_by(&self, cert: &CertInfo) -> bool {
        cert.common_name == self.common_name
            && cert.organizations.contains(&self.organization)
            && self.dns_names.iter().all(|d| cert.dns_names.contains(d))
            && self.ips.iter().all(|ip| cert.ips.contains(ip))
    }
}

/// A new key and the PEM certificate request it signed. The key stays on the node.
pub struct Request {
    pub key_pem: String,
    pub csr_pem: String,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

/// A new ECDSA P-256 key (as upstream) and a CSR for `template`: subject and SANs only,
/// the usages go in the API object.
pub fn new_request(template: &Template) -> Result<Request, rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(&template.common_name, Some(&template.organization));
    params.subject_alt_names = sans(&template.dns_names, &template.ips)?;
    let csr = params.serialize_request(&key)?;
    Ok(Request {
        key_pem: key.serialize_pem(),
        csr_pem: csr.pem()?,
    })
}

fn subject(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    // O before CN, the order Go's pkix.Name encodes.
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn sans(dns_names: &[String], ips: &[IpAddr]) -> Result<Vec<SanType>, rcgen::Error> {
    let mut out = Vec::with_capacity(dns_names.len() + ips.len());
    for d in dns_names {
        out.push(SanType::DnsName(d.clone().try_into()?));
    }
    out.extend(ips.iter().copied().map(SanType::IpAddress));
    Ok(out)
}

/// How long a self-signed serving certificate is good for (upstream: a year).
pub const SELF_SIGNED_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// A self-signed serving certificate for `host` (a name or an address) and `ips`, as
/// upstream makes when neither a serving certificate nor serverTLSBootstrap is
/// configured: `(certificate PEM, key PEM)`.
pub fn self_signed(
    host: &str,
    ips: &[IpAddr],
    now: SystemTime,
) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    params.distinguished_name = subject(&format!("{host}@{}", since.as_secs()), None);
    let (mut dns, mut addrs) = (Vec::new(), ips.to_vec());
    match host.parse::<IpAddr>() {
        Ok(ip) => addrs.insert(0, ip),
        Err(_) => dns.push(host.to_string()),
    }
    addrs.dedup();
    params.subject_alt_names = sans(&dns, &addrs)?;
    params.not_before = time::OffsetDateTime::from(now);
    params.not_after = time::OffsetDateTime::from(now + SELF_SIGNED_LIFETIME);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// What the agent needs to know of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let strings = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
            it.filter_map(|a| a.as_str().ok().map(str::to_string))
                .collect::<Vec<_>>()
        };
        let common_name = strings(&mut cert.subject().iter_common_name())
            .into_iter()
            .next()
            .unwrap_or_default();
        let organizations = strings(&mut cert.subject().iter_organization());
        let (mut dns_names, mut ips) = (Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            ips.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            ips.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        Ok(Self {
            common_name,
            organizations,
            dns_names,
            ips,
            not_before: system_time(validity.not_before.timestamp()),
            not_after: system_time(validity.not_after.timestamp()),
        })
    }

    /// Upstream's test: a certificate is used until the instant it expires.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        now > self.not_after
    }
}

fn system_time(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(secs) => UNIX_EPOCH + Duration::from_secs(secs),
        Err(_) => UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs()),
    }
}

/// A certificate chain with its private key, as read from PEM.
#[derive(Debug)]
pub struct Pair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// One per certificate of the chain, the leaf first; never empty (private, so a
    /// pair only comes from [`Pair::from_pem`]).
    certs: Vec<CertInfo>,
}

impl Pair {
    /// Parses certificates from `cert_pem` and the first private key from `key_pem` (they
    /// may be the same bytes: upstream's `<name>-current.pem` holds both) and checks the
    /// key is the leaf's.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("bad certificate PEM: {e}"))?;
        if chain.is_empty() {
            return Err("no certificate in it".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no private key in it".to_string(),
            e => format!("bad private key PEM: {e}"),
        })?;
        let certs = chain
            .iter()
            .map(|c| CertInfo::parse(c))
            .collect::<Result<Vec<_>, _>>()?;
        let pair = Self { chain, key, certs };
        pair.certified_key()?;
        Ok(pair)
    }

    pub fn leaf(&self) -> &CertInfo {
        // from_pem refuses an empty chain, and nothing else makes a Pair.
        &self.certs[0]
    }

    /// Whether any certificate of the chain has expired at `now` (upstream's check of a
    /// kubeconfig's client certificate).
    pub fn expired_at(&self, now: SystemTime) -> Option<&CertInfo> {
        self.certs.iter().find(|c| c.expired_at(now))
    }

    /// The chain and key as rustls presents them; fails when the key is not the leaf's.
    pub fn certified_key(&self) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        rustls::sign::CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider)
            .map(Arc::new)
            .map_err(|e| format!("the key does not go with the certificate: {e}"))
    }
}

/// When to rotate a certificate valid from `not_before` to `not_after`: at `0.7 + 0.2·r`
/// of its lifetime, `r` in [0, 1) (upstream: 80% ± 10%, so nodes joined together do not
/// all renew at once).
pub fn rotation_deadline(not_before: SystemTime, not_after: SystemTime, r: f64) -> SystemTime {
    let total = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_before + total.mul_f64(0.7 + 0.2 * r.clamp(0.0, 1.0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA for tests: signs CSRs honouring their subject and SANs.
    pub struct TestCa {
        key: KeyPair,
        params: CertificateParams,
        pub pem: String,
    }

    impl TestCa {
        pub fn new() -> Self {
            let key = KeyPair::generate().expect("a CA key");
            let mut params = CertificateParams::default();
            params.distinguished_name = subject("test-ca", None);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let pem = params.self_signed(&key).expect("a CA certificate").pem();
            Self { key, params, pem }
        }

        /// A certificate for the public key of `csr_pem`, with its subject and SANs,
        /// valid over `[not_before, not_after]`; the chain (leaf, CA) as PEM.
        pub fn sign(
            &self,
            csr_pem: &[u8],
            not_before: SystemTime,
            not_after: SystemTime,
        ) -> Vec<u8> {
            let text = std::str::from_utf8(csr_pem).expect("PEM text");
            let mut csr =
                rcgen::CertificateSigningRequestParams::from_pem(text).expect("a signed CSR");
            csr.params.not_before = time::OffsetDateTime::from(not_before);
            csr.params.not_after = time::OffsetDateTime::from(not_after);
            let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
            let cert = csr.signed_by(&issuer).expect("signed");
            format!("{}{}", cert.pem(), self.pem).into_bytes()
        }
    }
}
