//! Tests of TLS bootstrap and rotation: the CSR as upstream makes it, the files, expiry,
//! the rotation point, the kubeconfig, and the API round trip against a fake API server
//! (a tower service in place of the HTTP client).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{Value, json};

use super::pki::tests::TestCa;
use super::pki::{self, CertInfo, Pair, Template};
use super::*;

type R = anyhow::Result<()>;

const HOUR: Duration = Duration::from_secs(3600);

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A pair for `template` signed by `ca`, valid over `[not_before, not_after]`: (chain PEM,
/// key PEM).
fn issue(
    ca: &TestCa,
    template: &Template,
    not_before: SystemTime,
    not_after: SystemTime,
) -> (Vec<u8>, String) {
    let req = pki::new_request(template).expect("a request");
    (
        ca.sign(req.csr_pem.as_bytes(), not_before, not_after),
        req.key_pem,
    )
}

fn parse_csr(pem: &[u8]) -> (Vec<String>, Vec<String>, Vec<String>, Vec<std::net::IpAddr>) {
    use rustls::pki_types::pem::PemObject as _;
    use x509_parser::prelude::FromDer as _;
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem).expect("PEM");
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .expect("a CSR");
    csr.verify_signature().expect("signed by its key");
    let info = &csr.certification_request_info;
    let s = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.map(|a| a.as_str().expect("utf-8").to_string())
            .collect::<Vec<_>>()
    };
    let (mut dns, mut ips) = (vec![], vec![]);
    for ext in csr.requested_extensions().into_iter().flatten() {
        if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        ips.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).expect("v4")))
                    }
                    _ => {}
                }
            }
        }
    }
    (
        s(&mut info.subject.iter_common_name()),
        s(&mut info.subject.iter_organization()),
        dns,
        ips,
    )
}

#[test]
fn client_csr_is_upstreams() {
    let template = Template::client("node-a");
    let req = pki::new_request(&template).expect("a request");
    let obj = csr::object(&template, &req.csr_pem);
    assert_eq!(obj.metadata.generate_name.as_deref(), Some("csr-"));
    assert_eq!(obj.metadata.name, None);
    assert_eq!(
        obj.spec.signer_name,
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(
        obj.spec.usages.as_deref(),
        Some(&["digital signature".to_string(), "client auth".to_string()][..])
    );
    assert_eq!(obj.spec.expiration_seconds, None);
    let request = String::from_utf8(obj.spec.request.0.clone()).expect("PEM text");
    assert!(request.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    assert!(!request.contains("PRIVATE KEY"));
    let (cn, o, dns, ips) = parse_csr(request.as_bytes());
    assert_eq!(cn, ["system:node:node-a"]);
    assert_eq!(o, ["system:nodes"]);
    assert!(dns.is_empty() && ips.is_empty());
    // ECDSA P-256, as upstream.
    assert!(req.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let key = rcgen::KeyPair::from_pem(&req.key_pem).expect("the key parses");
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
}

#[test]
fn serving_csr_names_the_node_addresses() {
    let ip: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
    let template = Template::serving(
        "node-a",
        &[
            "node-a.example".into(),
            "10.9.9.9".into(),
            "node-a.example".into(),
        ],
        &[ip],
    );
    assert_eq!(template.signer, "kubernetes.io/kubelet-serving");
    assert_eq!(template.usages, ["digital signature", "server auth"]);
    let req = pki::new_request(&template).expect("a request");
    let (cn, o, dns, ips) = parse_csr(req.csr_pem.as_bytes());
    assert_eq!(cn, ["system:node:node-a"]);
    assert_eq!(o, ["system:nodes"]);
    assert_eq!(dns, ["node-a.example"]);
    assert_eq!(
        ips,
        [ip, "10.9.9.9".parse::<std::net::IpAddr>().expect("ip")]
    );
}

#[test]
fn a_certificate_satisfies_a_template_when_it_names_all_it_asks() {
    let ip: std::net::IpAddr = "10.1.2.3".parse().expect("ip");
    let cert = CertInfo {
        common_name: "system:node:a".into(),
        organizations: vec!["system:nodes".into()],
        dns_names: vec!["a".into(), "extra".into()],
        ips: vec![ip],
        not_before: at(0),
        not_after: at(10),
    };
    assert!(Template::serving("a", &["a".into()], &[ip]).satisfied_by(&cert));
    assert!(Template::client("a").satisfied_by(&cert));
    assert!(!Template::client("b").satisfied_by(&cert), "another node");
    assert!(!Template::serving("a", &["b".into()], &[ip]).satisfied_by(&cert));
    let other: std::net::IpAddr = "10.1.2.4".parse().expect("ip");
    assert!(!Template::serving("a", &[], &[other]).satisfied_by(&cert));
}

#[test]
fn store_writes_timestamped_pairs_and_swaps_the_current_link() -> R {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new();
    let template = Template::client("node-a");
    let store = store::Store::new(&dir.path().join("pki"), store::CLIENT);
    assert!(store.load()?.is_none(), "nothing stored yet");
    let now = SystemTime::now();
    let (cert1, key1) = issue(&ca, &template, now, now + HOUR);
    // 2024-01-02T03:04:05Z
    let first = store.update(&cert1, key1.as_bytes(), at(1_704_164_645))?;
    assert_eq!(
        first.file_name().and_then(|n| n.to_str()),
        Some("kubelet-client-2024-01-02-03-04-05.pem")
    );
    let mode = std::fs::metadata(&first)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the private key is in it");
    let text = std::fs::read_to_string(&first)?;
    let cert_at = text.find("BEGIN CERTIFICATE").expect("the chain");
    let key_at = text.find("BEGIN PRIVATE KEY").expect("the key");
    assert!(cert_at < key_at, "the chain, then the key");
    let current = dir.path().join("pki/kubelet-client-current.pem");
    assert_eq!(store.current_path(), current);
    assert!(
        std::fs::symlink_metadata(&current)?
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        std::fs::read_link(&current)?,
        std::path::Path::new("kubelet-client-2024-01-02-03-04-05.pem")
    );

    let (cert2, key2) = issue(&ca, &template, now, now + 2 * HOUR);
    let second = store.update(&cert2, key2.as_bytes(), at(1_704_164_646))?;
    assert_ne!(first, second);
    assert!(first.exists(), "older pairs are kept, as upstream");
    assert_eq!(
        std::fs::read_link(&current)?,
        second.strip_prefix(dir.path().join("pki"))?
    );
    let loaded = store.load()?.expect("a current pair");
    let expect = Pair::from_pem(&cert2, key2.as_bytes()).map_err(anyhow::Error::msg)?;
    assert_eq!(loaded.leaf(), expect.leaf());
    let names: Vec<String> = std::fs::read_dir(dir.path().join("pki"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert!(
        !names
            .iter()
            .any(|n| n.contains("updated") || n.contains(".tmp")),
        "{names:?}"
    );

    // A key that is not the certificate's is refused.
    std::fs::write(&second, [cert2.clone(), key1.into_bytes()].concat())?;
    let err = store.load().expect_err("mismatched key").to_string();
    assert!(
        err.contains("kubelet-client-current.pem") && err.contains("key"),
        "{err}"
    );
    Ok(())
}

#[test]
fn pair_file_names_use_utc_timestamps() {
    assert_eq!(store::timestamp(at(0)), "1970-01-01-00-00-00");
    assert_eq!(store::timestamp(at(1_704_164_645)), "2024-01-02-03-04-05");
    assert_eq!(rfc3339(at(1_704_164_645)), "2024-01-02T03:04:05Z");
}

fn write_kubeconfig_with_cert(
    dir: &std::path::Path,
    cert: &[u8],
    key: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert),
            b64(key.as_bytes())
        ),
    )?;
    Ok(path)
}

#[test]
fn expired_or_missing_client_certificates_are_detected() -> R {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new();
    let template = Template::client("node-a");
    let now = SystemTime::now();
    let path = dir.path().join("kubeconfig");
    assert!(matches!(
        kubeconfig::check(&path, now)?,
        kubeconfig::Validity::Missing
    ));

    let (cert, key) = issue(&ca, &template, now - HOUR, now + HOUR);
    let path = write_kubeconfig_with_cert(dir.path(), &cert, &key)?;
    match kubeconfig::check(&path, now)? {
        kubeconfig::Validity::Valid(c) => assert_eq!(c.common_name, "system:node:node-a"),
        other => panic!("valid expected: {other:?}"),
    }
    // Used until the instant it expires, not after.
    let pair = Pair::from_pem(&cert, key.as_bytes()).map_err(anyhow::Error::msg)?;
    let not_after = pair.leaf().not_after;
    assert!(pair.expired_at(not_after).is_none());
    assert!(
        pair.expired_at(not_after + Duration::from_secs(1))
            .is_some()
    );
    match kubeconfig::check(&path, not_after + Duration::from_secs(1))? {
        kubeconfig::Validity::Invalid(why) => assert!(why.contains("expired"), "{why}"),
        other => panic!("expired expected: {other:?}"),
    }

    let (old, old_key) = issue(&ca, &template, now - 2 * HOUR, now - HOUR);
    let path = write_kubeconfig_with_cert(dir.path(), &old, &old_key)?;
    assert!(matches!(
        kubeconfig::check(&path, now)?,
        kubeconfig::Validity::Invalid(_)
    ));

    // A kubeconfig with a token has no client certificate to use.
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n    token: abc\n",
    )?;
    match kubeconfig::check(&path, now)? {
        kubeconfig::Validity::Invalid(why) => {
            assert!(why.contains("no client certificate"), "{why}")
        }
        other => panic!("invalid expected: {other:?}"),
    }
    std::fs::write(&path, "{not yaml")?;
    assert!(matches!(
        kubeconfig::check(&path, now)?,
        kubeconfig::Validity::Invalid(_)
    ));
    Ok(())
}

#[test]
fn rotation_happens_between_70_and_90_percent_of_the_lifetime() {
    let (nb, na) = (at(1_000_000), at(1_000_000 + 100_000));
    assert_eq!(pki::rotation_deadline(nb, na, 0.0), at(1_070_000));
    assert_eq!(pki::rotation_deadline(nb, na, 0.5), at(1_080_000));
    assert_eq!(pki::rotation_deadline(nb, na, 1.0), at(1_090_000));
    let mut seen = (SystemTime::now() + HOUR * 1_000_000, UNIX_EPOCH);
    for _ in 0..2000 {
        let d = pki::rotation_deadline(nb, na, fastrand::f64());
        assert!(d >= at(1_070_000) && d <= at(1_090_000), "{d:?}");
        seen = (seen.0.min(d), seen.1.max(d));
    }
    // Jittered, not one fixed point.
    assert!(seen.1.duration_since(seen.0).unwrap_or_default() > Duration::from_secs(10_000));
    // A certificate valid for no time at all is renewed at once.
    assert_eq!(pki::rotation_deadline(na, nb, 0.3), na);
}

#[test]
fn bootstrapped_kubeconfig_points_at_the_current_pair() -> R {
    let dir = tempfile::tempdir()?;
    let bootstrap = dir.path().join("bootstrap.conf");
    std::fs::write(
        &bootstrap,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://10.0.0.1:6443\n    certificate-authority-data: Y2EtZGF0YQ==\n    tls-server-name: kubernetes\ncontexts:\n- name: b\n  context:\n    cluster: k\n    user: tls-bootstrap-token-user\ncurrent-context: b\nusers:\n- name: tls-bootstrap-token-user\n  user:\n    token: abcdef.0123456789abcdef\n",
    )?;
    let (cluster, user) = kubeconfig::current(&kubeconfig::read(&bootstrap)?, &bootstrap)?;
    assert!(user.token.is_some());
    let kubeconfig = dir.path().join("etc/kubelet.conf");
    let pem = dir.path().join("pki/kubelet-client-current.pem");
    kubeconfig::write_for_cert(&kubeconfig, &cluster, &pem)?;
    assert_eq!(
        std::fs::metadata(&kubeconfig)?.permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&kubeconfig)?;
    assert!(
        !text.contains("abcdef"),
        "the bootstrap token is not copied: {text}"
    );
    let (c, u) = kubeconfig::current(&kubeconfig::read(&kubeconfig)?, &kubeconfig)?;
    assert_eq!(c.server.as_deref(), Some("https://10.0.0.1:6443"));
    assert_eq!(
        c.certificate_authority_data.as_deref(),
        Some("Y2EtZGF0YQ==")
    );
    assert_eq!(c.tls_server_name.as_deref(), Some("kubernetes"));
    let pem = pem.display().to_string();
    assert_eq!(u.client_certificate.as_deref(), Some(pem.as_str()));
    assert_eq!(u.client_key.as_deref(), Some(pem.as_str()));
    assert!(u.token.is_none());
    let yaml: Value = serde_yaml_ng::from_str(&text)?;
    assert_eq!(yaml["current-context"], "default-context");
    assert_eq!(yaml["contexts"][0]["context"]["namespace"], "default");
    Ok(())
}

#[tokio::test]
async fn self_signed_serving_certificate_is_made_once() -> R {
    let dir = tempfile::tempdir()?;
    let ip: std::net::IpAddr = "10.1.2.3".parse()?;
    let cfg = ServingConfig {
        cert_dir: dir.path().join("pki"),
        node_name: "node-a".into(),
        hostnames: vec!["node-a".into()],
        ips: vec![ip],
        tls_bootstrap: false,
        wait: DEFAULT_CERT_WAIT,
    };
    let stop = CancellationToken::new();
    let rx = serving_certificate(&cfg, None, &stop).await?;
    let paths = rx.borrow().clone().expect("at once");
    assert_eq!(paths.cert, dir.path().join("pki/kubelet.crt"));
    assert_eq!(paths.key, dir.path().join("pki/kubelet.key"));
    assert_eq!(
        std::fs::metadata(&paths.key)?.permissions().mode() & 0o777,
        0o600
    );
    let (cert, key) = (std::fs::read(&paths.cert)?, std::fs::read(&paths.key)?);
    let pair = Pair::from_pem(&cert, &key).map_err(anyhow::Error::msg)?;
    let leaf = pair.leaf();
    assert!(leaf.common_name.starts_with("node-a@"), "{leaf:?}");
    assert_eq!(leaf.dns_names, ["node-a"]);
    assert_eq!(leaf.ips, [ip]);
    let life = leaf.not_after.duration_since(leaf.not_before)?;
    assert_eq!(life, pki::SELF_SIGNED_LIFETIME);
    // Kept across restarts while valid.
    let again = serving_certificate(&cfg, None, &stop).await?;
    assert_eq!(again.borrow().as_ref(), Some(&paths));
    assert_eq!(std::fs::read(&paths.cert)?, cert);
    // Remade when expired.
    let later = self_signed_files(&cfg, SystemTime::now() + 2 * pki::SELF_SIGNED_LIFETIME)?;
    assert_eq!(later, paths);
    assert_ne!(std::fs::read(&paths.cert)?, cert);
    // serverTLSBootstrap needs an API client.
    let cfg = ServingConfig {
        tls_bootstrap: true,
        ..cfg
    };
    assert!(matches!(
        serving_certificate(&cfg, None, &stop).await,
        Err(Error::NoClient)
    ));
    stop.cancel();
    Ok(())
}

/// What the fake API server does with CSRs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Sign,
    Deny,
}

/// A fake API server for the CSR round trip: CREATE names the CSR and records it; the
/// LIST a watcher starts with returns it decided (signed by `ca`, or denied).
#[derive(Clone)]
struct FakeApi {
    ca: Arc<TestCa>,
    verdict: Verdict,
    created: Arc<Mutex<Vec<Value>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    fn new(verdict: Verdict) -> Self {
        Self {
            ca: Arc::new(TestCa::new()),
            verdict,
            created: Arc::default(),
            requests: Arc::default(),
        }
    }

    fn client(&self) -> kube::Client {
        let api = self.clone();
        let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let api = api.clone();
            async move { Ok::<_, std::convert::Infallible>(api.answer(req).await) }
        });
        kube::Client::new(svc, "default")
    }

    async fn answer(
        &self,
        req: http::Request<kube::client::Body>,
    ) -> http::Response<kube::client::Body> {
        use http_body_util::BodyExt as _;
        let method = req.method().clone();
        let uri = req.uri().to_string();
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(format!("{method} {uri}"));
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let reply = |status: u16, v: Value| {
            http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(v.to_string().into_bytes()))
                .expect("a response")
        };
        if !uri.starts_with("/apis/certificates.k8s.io/v1/certificatesigningrequests") {
            return reply(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not here"}),
            );
        }
        if method == http::Method::POST {
            let mut csr: Value = serde_json::from_slice(&body).unwrap_or_default();
            csr["metadata"]["name"] = json!("csr-fake1");
            csr["metadata"]["uid"] = json!("uid-1");
            csr["metadata"]["resourceVersion"] = json!("5");
            self.created
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(csr.clone());
            return reply(201, csr);
        }
        if uri.contains("watch=true") {
            // Decided in the list already; a watch would only wait.
            return reply(200, json!({}));
        }
        let created = self
            .created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .last()
            .cloned();
        let items: Vec<Value> = created
            .into_iter()
            .map(|mut csr| {
                let request = base64::engine::general_purpose::STANDARD
                    .decode(csr["spec"]["request"].as_str().unwrap_or_default())
                    .unwrap_or_default();
                csr["status"] = match self.verdict {
                    Verdict::Sign => {
                        let now = SystemTime::now();
                        let cert = self.ca.sign(&request, now - HOUR, now + 10 * HOUR);
                        json!({
                            "conditions": [{"type": "Approved", "status": "True", "reason": "AutoApproved", "message": "Auto approving kubelet client certificate after SubjectAccessReview."}],
                            "certificate": base64::engine::general_purpose::STANDARD.encode(cert),
                        })
                    }
                    Verdict::Deny => json!({
                        "conditions": [{"type": "Denied", "status": "True", "reason": "KubectlDeny", "message": "This CSR was denied by kubectl certificate deny."}],
                    }),
                };
                csr
            })
            .collect();
        reply(
            200,
            json!({"kind": "CertificateSigningRequestList", "apiVersion": "certificates.k8s.io/v1", "metadata": {"resourceVersion": "6"}, "items": items}),
        )
    }

    fn created(&self) -> Vec<Value> {
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[tokio::test]
async fn a_certificate_is_requested_and_issued_through_the_api() -> R {
    let api = FakeApi::new(Verdict::Sign);
    let stop = CancellationToken::new();
    let template = Template::client("node-a");
    let issued = csr::obtain(&api.client(), &template, Duration::from_secs(30), &stop).await?;
    assert_eq!(issued.csr, "csr-fake1");
    assert_eq!(issued.pair.leaf().common_name, "system:node:node-a");
    assert_eq!(issued.pair.leaf().organizations, ["system:nodes"]);
    let created = api.created();
    assert_eq!(created.len(), 1);
    let spec = &created[0]["spec"];
    assert_eq!(
        spec["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(spec["usages"], json!(["digital signature", "client auth"]));
    assert!(spec.get("expirationSeconds").is_none());
    assert_eq!(created[0]["metadata"]["generateName"], "csr-");
    // The key never went to the API server.
    let sent = created[0].to_string();
    assert!(!sent.contains("PRIVATE KEY"));
    let key_b64 = issued
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    assert!(!sent.contains(&key_b64[..40]));
    Ok(())
}

#[tokio::test]
async fn a_denied_csr_is_an_error_naming_it_and_why() {
    let api = FakeApi::new(Verdict::Deny);
    let stop = CancellationToken::new();
    let err = csr::obtain(
        &api.client(),
        &Template::client("node-a"),
        Duration::from_secs(30),
        &stop,
    )
    .await
    .expect_err("denied");
    let text = err.to_string();
    assert!(matches!(err, Error::Denied { .. }), "{text}");
    for part in [
        "csr-fake1",
        "denied",
        "KubectlDeny",
        "denied by kubectl certificate deny",
        "kube-apiserver-client-kubelet",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
}

#[test]
fn outcome_waits_for_approval_and_a_certificate() {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequest, CertificateSigningRequestCondition,
        CertificateSigningRequestStatus,
    };
    let cond = |t: &str, s: &str| CertificateSigningRequestCondition {
        type_: t.into(),
        status: s.into(),
        reason: Some("R".into()),
        message: Some("M".into()),
        ..Default::default()
    };
    let csr = |conditions: Vec<CertificateSigningRequestCondition>, cert: Option<&[u8]>| {
        CertificateSigningRequest {
            status: Some(CertificateSigningRequestStatus {
                conditions: Some(conditions),
                certificate: cert.map(|c| k8s_openapi::ByteString(c.to_vec())),
            }),
            ..Default::default()
        }
    };
    let decide = |c: &CertificateSigningRequest| csr::outcome("c", "s", c);
    assert!(matches!(
        decide(&CertificateSigningRequest::default()),
        Ok(None)
    ));
    assert!(matches!(
        decide(&csr(vec![cond("Approved", "True")], None)),
        Ok(None)
    ));
    assert!(
        matches!(decide(&csr(vec![], Some(b"x"))), Ok(None)),
        "not approved"
    );
    assert!(matches!(
        decide(&csr(vec![cond("Approved", "True")], Some(b""))),
        Ok(None)
    ));
    assert!(
        matches!(decide(&csr(vec![cond("Approved", "True")], Some(b"x"))), Ok(Some(c)) if c == b"x")
    );
    assert!(matches!(
        decide(&csr(
            vec![cond("Denied", "False"), cond("Approved", "True")],
            Some(b"x")
        )),
        Ok(Some(_))
    ));
    assert!(matches!(
        decide(&csr(vec![cond("Denied", "True")], None)),
        Err(Error::Denied { .. })
    ));
    let failed = decide(&csr(
        vec![cond("Approved", "True"), cond("Failed", "True")],
        None,
    ));
    assert!(
        matches!(failed, Err(Error::Failed { ref reason, ref message, .. }) if reason == "R" && message == "M")
    );
}

fn bootstrap_kubeconfig(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join("bootstrap-kubelet.conf");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: http://127.0.0.1:9\ncontexts:\n- name: b\n  context:\n    cluster: k\n    user: b\ncurrent-context: b\nusers:\n- name: b\n  user:\n    token: abcdef.0123456789abcdef\n",
    )?;
    Ok(path)
}

#[tokio::test]
async fn a_valid_pair_in_the_cert_dir_needs_no_new_csr() -> R {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new();
    let now = SystemTime::now();
    let cfg = ClientCertConfig {
        kubeconfig: dir.path().join("kubelet.conf"),
        bootstrap_kubeconfig: Some(bootstrap_kubeconfig(dir.path())?),
        cert_dir: dir.path().join("pki"),
        node_name: "node-a".into(),
        rotate: true,
        wait: Duration::from_secs(1),
    };
    let store = store::Store::new(&cfg.cert_dir, store::CLIENT);
    let (cert, key) = issue(&ca, &Template::client("node-a"), now - HOUR, now + HOUR);
    store.update(&cert, key.as_bytes(), now)?;
    let stop = CancellationToken::new();
    // The bootstrap server (port 9) is never asked.
    let loaded = load_client_cert(&cfg, &stop).await?;
    assert!(
        matches!(loaded, Loaded::CertDir(ref c) if c.common_name == "system:node:node-a"),
        "{loaded:?}"
    );
    let again = load_client_cert(&cfg, &stop).await?;
    assert!(matches!(again, Loaded::Kubeconfig(_)), "{again:?}");
    // A pair for another node does not count.
    let (cert, key) = issue(&ca, &Template::client("node-b"), now - HOUR, now + HOUR);
    store.update(&cert, key.as_bytes(), now + Duration::from_secs(1))?;
    std::fs::remove_file(&cfg.kubeconfig)?;
    let err = load_client_cert(&cfg, &stop)
        .await
        .expect_err("no API server at port 9");
    assert!(
        matches!(err, Error::CreateCsr { .. } | Error::Timeout { .. }),
        "{err}"
    );
    // Without a bootstrap kubeconfig nothing is done.
    let cfg = ClientCertConfig {
        bootstrap_kubeconfig: None,
        ..cfg
    };
    assert_eq!(load_client_cert(&cfg, &stop).await?, Loaded::NotRequested);
    Ok(())
}

/// A loopback HTTP/1.1 server answering every request `200 {}` on kept-alive
/// connections; counts connections opened and closed.
async fn counting_server() -> anyhow::Result<(String, Arc<Mutex<BTreeMap<&'static str, usize>>>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counts: Arc<Mutex<BTreeMap<&'static str, usize>>> = Arc::default();
    let bump = |counts: &Arc<Mutex<BTreeMap<&'static str, usize>>>, k: &'static str| {
        *counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(k)
            .or_default() += 1;
    };
    let c = counts.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            bump(&c, "opened");
            let c = c.clone();
            tokio::spawn(async move {
                serve_http(conn).await;
                bump(&c, "closed");
            });
        }
    });
    Ok((format!("http://{addr}"), counts))
}

#[tokio::test]
async fn rotation_closes_the_connections_of_the_old_certificate() -> R {
    let (url, counts) = counting_server().await?;
    let ca = TestCa::new();
    let now = SystemTime::now();
    let template = Template::client("node-a");
    let (cert, key) = issue(&ca, &template, now - HOUR, now + HOUR);
    let pair = Pair::from_pem(&cert, key.as_bytes()).map_err(anyhow::Error::msg)?;
    let identity = transport::Identity::new(pair.certified_key().map_err(anyhow::Error::msg)?);
    let config = kube::Config::new(url.parse()?);
    let client = transport::client(config, identity.clone())?;
    let get = || async {
        client
            .request_text(http::Request::get("/healthz").body(Vec::new())?)
            .await
            .map_err(anyhow::Error::from)
    };
    let count = |k: &str| {
        counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(k)
            .copied()
            .unwrap_or(0)
    };
    get().await?;
    get().await?;
    assert_eq!(count("opened"), 1, "kept alive");

    let (cert2, key2) = issue(&ca, &template, now, now + 2 * HOUR);
    let pair2 = Pair::from_pem(&cert2, key2.as_bytes()).map_err(anyhow::Error::msg)?;
    let new_key = pair2.certified_key().map_err(anyhow::Error::msg)?;
    identity.replace(new_key.clone());
    use rustls::client::ResolvesClientCert as _;
    let presented = identity.resolve(&[], &[]).expect("a certificate");
    assert_eq!(
        presented.cert, new_key.cert,
        "new handshakes present the new certificate"
    );
    // The idle connection goes at once, without a request.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count("closed") < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old connection was not closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    get().await?;
    assert_eq!(count("opened"), 2, "a new connection after rotation");
    Ok(())
}

#[tokio::test]
async fn the_client_certificate_is_renewed_before_it_expires() -> R {
    let api = FakeApi::new(Verdict::Sign);
    let dir = tempfile::tempdir()?;
    let store = store::Store::new(&dir.path().join("pki"), store::CLIENT);
    let template = Template::client("node-a");
    let now = SystemTime::now();
    // 90% of its life is already behind it: renewed at once.
    let (cert, key) = issue(
        &api.ca,
        &template,
        now - Duration::from_secs(90),
        now + Duration::from_secs(10),
    );
    store.update(&cert, key.as_bytes(), now - Duration::from_secs(90))?;
    let pair = store.load()?.expect("stored");
    let identity = transport::Identity::new(pair.certified_key().map_err(anyhow::Error::msg)?);
    let rotation = rotation::Rotation {
        store: store.clone(),
        template,
        wait: Duration::from_secs(30),
        client: api.client(),
        bootstrap: None,
        target: rotation::Target::Client {
            identity: identity.clone(),
        },
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(rotation.run(Some(pair.leaf().clone()), stop.clone()));
    use rustls::client::ResolvesClientCert as _;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while identity.resolve(&[], &[]).map(|k| k.cert.clone()) == Some(pair.chain.clone()) {
        assert!(tokio::time::Instant::now() < deadline, "not renewed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = store.load()?.expect("the new pair");
    assert!(stored.leaf().not_after > now + HOUR, "{:?}", stored.leaf());
    let presented = identity.resolve(&[], &[]).expect("a certificate");
    assert_eq!(presented.cert, stored.chain, "the stored pair is presented");
    assert_eq!(api.created().len(), 1, "one CSR");
    // The next renewal is far away: no more CSRs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.created().len(), 1);
    stop.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn server_tls_bootstrap_requests_a_serving_certificate() -> R {
    let api = FakeApi::new(Verdict::Sign);
    let dir = tempfile::tempdir()?;
    let ip: std::net::IpAddr = "10.1.2.3".parse()?;
    let cfg = ServingConfig {
        cert_dir: dir.path().join("pki"),
        node_name: "node-a".into(),
        hostnames: vec!["node-a".into()],
        ips: vec![ip],
        tls_bootstrap: true,
        wait: Duration::from_secs(30),
    };
    let stop = CancellationToken::new();
    let mut rx = serving_certificate(&cfg, Some(api.client()), &stop).await?;
    let paths = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(Option::is_some))
        .await??
        .clone()
        .expect("issued");
    let current = dir.path().join("pki/kubelet-server-current.pem");
    assert_eq!(
        paths,
        PemPaths {
            cert: current.clone(),
            key: current.clone()
        }
    );
    let pem = std::fs::read(&current)?;
    let pair = Pair::from_pem(&pem, &pem).map_err(anyhow::Error::msg)?;
    assert_eq!(pair.leaf().common_name, "system:node:node-a");
    assert_eq!(pair.leaf().dns_names, ["node-a"]);
    assert_eq!(pair.leaf().ips, [ip]);
    let created = api.created();
    assert_eq!(
        created[0]["spec"]["signerName"],
        "kubernetes.io/kubelet-serving"
    );
    assert_eq!(
        created[0]["spec"]["usages"],
        json!(["digital signature", "server auth"])
    );
    assert!(
        std::fs::read_link(&current)?
            .to_string_lossy()
            .starts_with("kubelet-server-")
    );
    // A restart finds it valid and announces it at once.
    let again = serving_certificate(&cfg, Some(api.client()), &stop).await?;
    assert_eq!(again.borrow().as_ref(), Some(&paths));
    stop.cancel();
    Ok(())
}

/// Answers every HTTP/1.1 request on `conn` with `200 {}` until the client closes it.
async fn serve_http(mut conn: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let reply =
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
            if conn.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

#[tokio::test]
async fn the_client_presents_the_current_certificate_over_tls() -> R {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let ca = TestCa::new();
    let now = SystemTime::now();
    let localhost: std::net::IpAddr = "127.0.0.1".parse()?;
    let (chain, key) = issue(
        &ca,
        &Template::serving("server", &[], &[localhost]),
        now - HOUR,
        now + HOUR,
    );
    let server_pair = Pair::from_pem(&chain, key.as_bytes()).map_err(anyhow::Error::msg)?;
    let ca_der = CertificateDer::from_pem_slice(ca.pem.as_bytes())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.clone())?;
    // The server accepts only clients with a certificate from the CA, as an API server.
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()?;
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server_pair.chain.clone(), server_pair.key.clone_key())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let presented: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = presented.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    seen.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(leaf.to_vec());
                }
                serve_http(tls).await;
            });
        }
    });

    let template = Template::client("node-a");
    let (cert1, key1) = issue(&ca, &template, now - HOUR, now + HOUR);
    let pair1 = Pair::from_pem(&cert1, key1.as_bytes()).map_err(anyhow::Error::msg)?;
    let identity = transport::Identity::new(pair1.certified_key().map_err(anyhow::Error::msg)?);
    let mut config = kube::Config::new(format!("https://{addr}").parse()?);
    config.root_cert = Some(vec![ca_der.to_vec()]);
    let client = transport::client(config, identity.clone())?;
    let get = || async {
        client
            .request_text(http::Request::get("/version").body(Vec::new())?)
            .await
            .map_err(anyhow::Error::from)
    };
    let seen = || {
        presented
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    };
    get().await?;
    assert_eq!(seen(), [pair1.chain[0].to_vec()]);

    let (cert2, key2) = issue(&ca, &template, now, now + 2 * HOUR);
    let pair2 = Pair::from_pem(&cert2, key2.as_bytes()).map_err(anyhow::Error::msg)?;
    identity.replace(pair2.certified_key().map_err(anyhow::Error::msg)?);
    get().await?;
    assert_eq!(
        seen(),
        [pair1.chain[0].to_vec(), pair2.chain[0].to_vec()],
        "a new TLS connection with the new certificate"
    );
    Ok(())
}
