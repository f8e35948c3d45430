//! TLS bootstrap and certificate rotation, end to end: the `kubelet` binary joins the
//! test API server (`e2e::apiserver`) with only a bootstrap token, as upstream's
//! `--bootstrap-kubeconfig`, `--kubeconfig` and `--cert-dir`; the test plays the
//! cluster's approver and signer (a CA of its own, honouring the requested subject) and
//! checks what an operator would: the CSR, the files under the cert dir, the kubeconfig,
//! the node registering, a denial stopping the kubelet with its reason, and rotation.
//!
//! The test API server speaks plain HTTP, so the issued certificate is never presented
//! over TLS here (kubelet's unit tests check that); what shows here is that after the
//! bootstrap nothing uses the bootstrap token any more.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use e2e::apiserver::{ApiServer, CsrToSign, Gvr, UserInfo};
use e2e::kubelet::{KubeletNode, NODE_NAME};
use serde_json::{Value, json};

type R<T = ()> = anyhow::Result<T>;

const WAIT: Duration = Duration::from_secs(60);

/// The identity of the bootstrap token (upstream's `system:bootstrap:<token-id>` in
/// `system:bootstrappers`).
const BOOTSTRAP_USER: &str = "system:bootstrap:abcdef";

/// The cluster's CA: signs CSRs for the subject and SANs they ask, for `lifetime`.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl TestCa {
    fn new() -> R<Self> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "e2e-cluster-ca");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        })
    }

    fn sign(&self, csr: &CsrToSign, lifetime: Duration) -> R<Vec<u8>> {
        let text = std::str::from_utf8(&csr.request_pem).context("CSR PEM is not text")?;
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(text)
            .with_context(|| format!("csr {}: not a signed PKCS#10 request", csr.name))?;
        let now = SystemTime::now();
        req.params.not_before = time::OffsetDateTime::from(now);
        req.params.not_after = time::OffsetDateTime::from(now + lifetime);
        req.params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        req.params.extended_key_usages = csr
            .usages
            .iter()
            .filter_map(|u| match u.as_str() {
                "client auth" => Some(rcgen::ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => Some(rcgen::ExtendedKeyUsagePurpose::ServerAuth),
                _ => None,
            })
            .collect();
        let cert = req.signed_by(&self.issuer)?;
        Ok(format!("{}{}", cert.pem(), self.pem).into_bytes())
    }
}

/// What the approver does with a CSR.
#[derive(Clone)]
enum Verdict {
    /// Approve it and sign for this long.
    Sign(Duration),
    Deny {
        reason: String,
        message: String,
    },
}

/// The cluster's approver and signer, in the background: every new CSR gets the verdict
/// `decide` gives (by the order it came in, from 0); kept as first seen.
struct Approver {
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Approver {
    fn start(
        server: Arc<ApiServer>,
        ca: Arc<TestCa>,
        decide: impl Fn(usize, &Value) -> Verdict + Send + 'static,
    ) -> Self {
        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                for csr in server.list(Gvr::CSRS, None) {
                    let name = csr["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let n = {
                        let mut seen = record.lock().unwrap_or_else(PoisonError::into_inner);
                        if seen.iter().any(|s| s["metadata"]["name"] == name.as_str()) {
                            continue;
                        }
                        seen.push(csr.clone());
                        seen.len() - 1
                    };
                    let done = match decide(n, &csr) {
                        Verdict::Sign(lifetime) => server.approve_csr(&name).and_then(|_| {
                            server.sign_csr(&name, &|c: &CsrToSign| ca.sign(c, lifetime))
                        }),
                        Verdict::Deny { reason, message } => {
                            server.update(Gvr::CSRS, None, &name, |obj| {
                                obj["status"] = json!({"conditions": [{
                                    "type": "Denied", "status": "True",
                                    "reason": reason, "message": message,
                                }]});
                            })
                        }
                    };
                    if let Err(e) = done {
                        eprintln!("approver: csr {name}: {e:#}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        Self { seen, task }
    }

    fn seen(&self) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits (bounded) for the `n`th CSR (from 1).
    async fn wait_for(&self, n: usize, limit: Duration) -> R<Value> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(csr) = self.seen().get(n - 1) {
                return Ok(csr.clone());
            }
            if Instant::now() > deadline {
                bail!(
                    "no CSR number {n} within {limit:?}; seen: {:?}",
                    self.seen()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Approver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A node about to bootstrap: the API server, its CA, the bootstrap kubeconfig and
/// where the kubelet's kubeconfig and certificates go.
struct Setup {
    server: Arc<ApiServer>,
    ca: Arc<TestCa>,
    bootstrap_token: String,
    bootstrap: PathBuf,
    kubeconfig: PathBuf,
    cert_dir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> R<Self> {
        let server = Arc::new(ApiServer::start()?);
        let dir = tempfile::tempdir()?;
        let bootstrap = dir.path().join("bootstrap-kubelet.conf");
        let bootstrap_token = server.write_kubeconfig_for(
            &bootstrap,
            &UserInfo::new(BOOTSTRAP_USER, &["system:bootstrappers"]),
        )?;
        Ok(Self {
            server,
            ca: Arc::new(TestCa::new()?),
            bootstrap_token,
            bootstrap,
            kubeconfig: dir.path().join("kubelet.conf"),
            cert_dir: dir.path().join("pki"),
            _dir: dir,
        })
    }

    fn flags(&self) -> Vec<String> {
        vec![
            "--bootstrap-kubeconfig".into(),
            self.bootstrap.display().to_string(),
            "--kubeconfig".into(),
            self.kubeconfig.display().to_string(),
            "--cert-dir".into(),
            self.cert_dir.display().to_string(),
        ]
    }

    /// Starts the kubelet with the bootstrap flags (and `extra`).
    async fn start(&self, extra: &[&str]) -> R<KubeletNode> {
        let mut flags = self.flags();
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        KubeletNode::start_with(&flags).await
    }

    fn current(&self, prefix: &str) -> PathBuf {
        self.cert_dir.join(format!("{prefix}-current.pem"))
    }

    async fn wait_node(&self, kubelet: &KubeletNode) -> R<Value> {
        self.server
            .wait_for_async(Gvr::NODES, None, NODE_NAME, WAIT, |n| n.is_some())
            .await
            .with_context(|| kubelet.log_text())?
            .context("node")
    }
}

/// The PEM request of a CSR object, and its subject's CN and O values and SANs.
struct Requested {
    pem: String,
    cn: Vec<String>,
    o: Vec<String>,
    dns: Vec<String>,
    ips: Vec<std::net::IpAddr>,
}

fn requested(csr: &Value) -> R<Requested> {
    use base64::Engine as _;
    use x509_parser::prelude::FromDer as _;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(csr["spec"]["request"].as_str().context("spec.request")?)?;
    let pem = String::from_utf8(pem)?;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body)?;
    let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| anyhow::anyhow!("not a CSR: {e}"))?;
    let subject = &req.certification_request_info.subject;
    let strings = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let (mut dns, mut ips) = (vec![], vec![]);
    for ext in req.requested_extensions().into_iter().flatten() {
        if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => ips.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*b)?)),
                        _ => ips.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*b)?)),
                    },
                    _ => {}
                }
            }
        }
    }
    Ok(Requested {
        cn: strings(&mut subject.iter_common_name()),
        o: strings(&mut subject.iter_organization()),
        dns,
        ips,
        pem,
    })
}

/// The base64 body of the private key in a PEM file.
fn private_key_body(pem_file: &Path) -> R<String> {
    let text = std::fs::read_to_string(pem_file)?;
    let start = text
        .find("PRIVATE KEY-----")
        .with_context(|| format!("no private key in {}", pem_file.display()))?;
    let body = &text[start + "PRIVATE KEY-----".len()..];
    let end = body.find("-----END").context("unterminated key")?;
    Ok(body[..end].split_whitespace().collect())
}

fn mode(path: &Path) -> R<u32> {
    Ok(std::fs::metadata(path)?.permissions().mode() & 0o777)
}

/// The pair file `<cert-dir>/<prefix>-current.pem` points at, checked to be
/// `<prefix>-YYYY-MM-DD-HH-MM-SS.pem` in the cert dir.
fn pair_file(current: &Path, prefix: &str) -> R<PathBuf> {
    let meta = std::fs::symlink_metadata(current)
        .with_context(|| format!("{} missing", current.display()))?;
    assert!(
        meta.file_type().is_symlink(),
        "{} is a symlink",
        current.display()
    );
    let target = std::fs::read_link(current)?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .context("a file name")?
        .to_string();
    let stamp = name
        .strip_prefix(&format!("{prefix}-"))
        .and_then(|s| s.strip_suffix(".pem"))
        .with_context(|| format!("{name} is not {prefix}-<timestamp>.pem"))?;
    let parts: Vec<&str> = stamp.split('-').collect();
    assert!(
        parts.len() == 6 && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
        "{name}: timestamp YYYY-MM-DD-HH-MM-SS"
    );
    let dir = current.parent().context("cert dir")?;
    Ok(dir.join(name))
}

/// The leaf certificate of a PEM file: its DER.
fn leaf_der(pem_file: &Path) -> R<Vec<u8>> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(pem_file)?;
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .context("no certificate")?;
    let body = &text[start + "-----BEGIN CERTIFICATE-----".len()..];
    let end = body
        .find("-----END CERTIFICATE-----")
        .context("unterminated")?;
    let b64: String = body[..end].split_whitespace().collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
}

fn not_after(pem_file: &Path) -> R<i64> {
    let der = leaf_der(pem_file)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("not a certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

#[tokio::test]
async fn bootstrap_token_gets_a_node_certificate_and_the_node_registers() -> R {
    let s = Setup::new()?;
    let approver = Approver::start(s.server.clone(), s.ca.clone(), |_, _| {
        Verdict::Sign(Duration::from_secs(3600))
    });
    let mut kubelet = s.start(&[]).await?;
    let csr = approver
        .wait_for(1, WAIT)
        .await
        .with_context(|| kubelet.log_text())?;
    s.wait_node(&kubelet).await?;

    // The request: upstream's signer, usages and subject, from the bootstrap identity.
    let spec = &csr["spec"];
    assert_eq!(
        spec["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_eq!(spec["usages"], json!(["digital signature", "client auth"]));
    assert!(spec.get("expirationSeconds").is_none(), "{spec}");
    assert_eq!(spec["username"], BOOTSTRAP_USER);
    assert!(
        csr["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("csr-")),
        "{csr}"
    );
    let req = requested(&csr)?;
    assert_eq!(req.cn, [format!("system:node:{NODE_NAME}")]);
    assert_eq!(req.o, ["system:nodes"]);
    assert!(
        req.dns.is_empty() && req.ips.is_empty(),
        "a client certificate names no hosts"
    );
    assert!(!req.pem.contains("PRIVATE KEY"));

    // The files: the pair (0600, chain then key) and the current link.
    let current = s.current("kubelet-client");
    let pair = pair_file(&current, "kubelet-client")?;
    assert_eq!(mode(&pair)?, 0o600, "{}", pair.display());
    let text = std::fs::read_to_string(&pair)?;
    assert!(text.find("BEGIN CERTIFICATE") < text.find("PRIVATE KEY"));
    let issued = s
        .server
        .get(
            Gvr::CSRS,
            None,
            csr["metadata"]["name"].as_str().unwrap_or_default(),
        )
        .context("the CSR")?;
    use base64::Engine as _;
    let issued_pem = base64::engine::general_purpose::STANDARD.decode(
        issued["status"]["certificate"]
            .as_str()
            .context("certificate")?,
    )?;
    assert!(
        text.starts_with(std::str::from_utf8(&issued_pem)?),
        "the chain as issued"
    );

    // The key never went to the API server: in no object, in no request line.
    let key = private_key_body(&current)?;
    for gvr in [Gvr::CSRS, Gvr::NODES, Gvr::LEASES] {
        for obj in s.server.list(gvr, None) {
            let obj = obj.to_string();
            assert!(
                !obj.contains(&key[..48]) && !obj.contains("PRIVATE KEY"),
                "{gvr}: {obj}"
            );
        }
    }
    assert!(
        s.server
            .requests()
            .iter()
            .all(|r| !r.path.contains(&key[..48]))
    );

    // The kubeconfig: the bootstrap kubeconfig's server, the node's own certificate.
    assert_eq!(mode(&s.kubeconfig)?, 0o600);
    let kc = kube::config::Kubeconfig::read_from(&s.kubeconfig)?;
    let cluster = kc.clusters[0].cluster.as_ref().context("cluster")?;
    assert_eq!(cluster.server.as_deref(), Some(s.server.url().as_str()));
    let user = kc.auth_infos[0].auth_info.as_ref().context("user")?;
    let current_text = current.display().to_string();
    assert_eq!(
        user.client_certificate.as_deref(),
        Some(current_text.as_str())
    );
    assert_eq!(user.client_key.as_deref(), Some(current_text.as_str()));
    assert!(user.token.is_none());

    // After the bootstrap, the agent's requests no longer carry the bootstrap token.
    let node_posts: Vec<_> = s
        .server
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/v1/nodes") || r.path.contains("/leases"))
        .collect();
    assert!(!node_posts.is_empty());
    assert!(
        node_posts
            .iter()
            .all(|r| r.token.as_deref() != Some(s.bootstrap_token.as_str())),
        "{node_posts:?}"
    );

    // The serving certificate (no serverTLSBootstrap): self-signed in the cert dir.
    let crt = s.cert_dir.join("kubelet.crt");
    let key_file = s.cert_dir.join("kubelet.key");
    assert!(crt.is_file(), "{}", crt.display());
    assert_eq!(mode(&key_file)?, 0o600);

    // A restart uses the kubeconfig as it is: no second CSR.
    kubelet.terminate()?;
    s.server.clear_requests();
    kubelet.spawn().await?;
    let deadline = Instant::now() + WAIT;
    while !s
        .server
        .requests()
        .iter()
        .any(|r| r.path.contains(&format!("/nodes/{NODE_NAME}")) || r.path.contains("/leases"))
    {
        if Instant::now() > deadline {
            bail!(
                "the restarted kubelet did not talk to the API server:\n{}",
                kubelet.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.server.list(Gvr::CSRS, None).len(),
        1,
        "no new CSR after a restart"
    );
    assert_eq!(pair_file(&current, "kubelet-client")?, pair);
    Ok(())
}

#[tokio::test]
async fn a_denied_csr_stops_the_kubelet_naming_the_denial() -> R {
    let s = Setup::new()?;
    let message = "denied by the e2e approver: node testnode is not expected";
    let approver = Approver::start(s.server.clone(), s.ca.clone(), move |_, _| Verdict::Deny {
        reason: "E2EDeny".into(),
        message: message.into(),
    });
    // Bootstrap may come before or after the kubelet serves /healthz: either it never
    // serves, or it exits soon after.
    let log = match s.start(&[]).await {
        Err(e) => format!("{e:#}"),
        Ok(mut kubelet) => {
            let pid = kubelet.pid().context("pid")?;
            let deadline = Instant::now() + WAIT;
            loop {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // Exited: a zombie until reaped (or gone).
                if stat.is_empty() || stat.split(' ').nth(2) == Some("Z") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "the kubelet kept running after the denial:\n{}",
                        kubelet.log_text()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let status = kubelet.terminate()?;
            assert!(!status.success(), "exit status {status}");
            kubelet.log_text()
        }
    };
    let csr = approver.wait_for(1, Duration::from_secs(1)).await?;
    let name = csr["metadata"]["name"].as_str().unwrap_or_default();
    for part in [name, "denied", "E2EDeny", message] {
        assert!(
            log.contains(part),
            "{part:?} not in the kubelet's error:\n{log}"
        );
    }
    assert!(
        s.server.get(Gvr::NODES, None, NODE_NAME).is_none(),
        "no node without a certificate"
    );
    assert!(
        !s.kubeconfig.exists(),
        "no kubeconfig without a certificate"
    );
    Ok(())
}

#[tokio::test]
async fn the_client_certificate_is_rotated_with_the_current_one() -> R {
    let s = Setup::new()?;
    // The first certificate lives 30 s: renewed 21–27 s after issue. The next lives long.
    let approver = Approver::start(s.server.clone(), s.ca.clone(), |n, _| {
        Verdict::Sign(Duration::from_secs(if n == 0 { 30 } else { 3600 }))
    });
    let kubelet = s.start(&["--rotate-certificates"]).await?;
    s.wait_node(&kubelet).await?;
    let current = s.current("kubelet-client");
    let first = pair_file(&current, "kubelet-client")?;
    let first_expiry = not_after(&first)?;

    let second = approver
        .wait_for(2, Duration::from_secs(60))
        .await
        .with_context(|| kubelet.log_text())?;
    let name = second["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        second["spec"]["signerName"],
        "kubernetes.io/kube-apiserver-client-kubelet"
    );
    assert_ne!(
        second["spec"]["username"], BOOTSTRAP_USER,
        "rotation uses the current certificate, not the bootstrap token"
    );
    let post = s.server.requests().into_iter().find(|r| {
        r.method == "POST"
            && r.path.contains("certificatesigningrequests")
            && r.status == 201
            && r.token.as_deref() != Some(s.bootstrap_token.as_str())
    });
    assert!(
        post.is_some(),
        "the rotation CSR was not sent without the bootstrap token"
    );
    let req = requested(&second)?;
    assert_eq!(req.cn, [format!("system:node:{NODE_NAME}")]);

    // The link moves to the new pair once it is issued; the old pair stays.
    let deadline = Instant::now() + WAIT;
    let renewed = loop {
        let now = pair_file(&current, "kubelet-client")?;
        if now != first {
            break now;
        }
        if Instant::now() > deadline {
            bail!(
                "{name} signed but the current link did not move:\n{}",
                kubelet.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(first.exists());
    assert_eq!(mode(&renewed)?, 0o600);
    assert!(not_after(&renewed)? > first_expiry + 600);
    assert_ne!(
        private_key_body(&first)?,
        private_key_body(&renewed)?,
        "a new key"
    );

    // The agent goes on talking to the API server after the swap.
    s.server.clear_requests();
    let deadline = Instant::now() + WAIT;
    while !s
        .server
        .requests()
        .iter()
        .any(|r| r.path.contains("/leases") && r.status < 300)
    {
        if Instant::now() > deadline {
            bail!(
                "no lease renewal after the rotation:\n{}",
                kubelet.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The InternalIP the node reports.
fn internal_ip(node: &Value) -> Option<&str> {
    node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
}

#[tokio::test]
async fn server_tls_bootstrap_requests_a_serving_certificate() -> R {
    let s = Setup::new()?;
    let approver = Approver::start(s.server.clone(), s.ca.clone(), |_, _| {
        Verdict::Sign(Duration::from_secs(3600))
    });
    let mut kubelet = s.start(&[]).await?;
    let node = s
        .server
        .wait_for_async(Gvr::NODES, None, NODE_NAME, WAIT, |n| {
            n.is_some_and(|n| internal_ip(n).is_some())
        })
        .await
        .with_context(|| kubelet.log_text())?
        .context("node")?;
    let internal_ip = internal_ip(&node).context("InternalIP")?.to_string();
    // serverTLSBootstrap has no flag upstream: set it in the harness's config file.
    kubelet.terminate()?;
    let config = kubelet.dir().join("kubelet-config.yaml");
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str("serverTLSBootstrap: true\n");
    std::fs::write(&config, text)?;
    kubelet.spawn().await?;

    let serving = approver
        .wait_for(2, WAIT)
        .await
        .with_context(|| kubelet.log_text())?;
    let spec = &serving["spec"];
    assert_eq!(spec["signerName"], "kubernetes.io/kubelet-serving");
    assert_eq!(spec["usages"], json!(["digital signature", "server auth"]));
    assert_ne!(
        spec["username"], BOOTSTRAP_USER,
        "asked with the node's own identity"
    );
    let req = requested(&serving)?;
    assert_eq!(req.cn, [format!("system:node:{NODE_NAME}")]);
    assert_eq!(req.o, ["system:nodes"]);
    assert!(req.dns.iter().any(|d| d == NODE_NAME), "{:?}", req.dns);
    assert!(
        req.ips.iter().any(|ip| ip.to_string() == internal_ip),
        "{:?} lacks {internal_ip}",
        req.ips
    );

    let current = s.current("kubelet-server");
    let deadline = Instant::now() + WAIT;
    while std::fs::symlink_metadata(&current).is_err() {
        if Instant::now() > deadline {
            bail!(
                "no {} after signing:\n{}",
                current.display(),
                kubelet.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pair = pair_file(&current, "kubelet-server")?;
    assert_eq!(mode(&pair)?, 0o600);
    assert!(std::fs::read_to_string(&pair)?.contains("PRIVATE KEY"));
    Ok(())
}
