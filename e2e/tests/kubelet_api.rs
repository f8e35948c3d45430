//! The kubelet API (:10250) of a kubelet joined to the test API server, as a cluster
//! user (or the API server proxying for one) reaches it: HTTPS with the node's serving
//! certificate, a bearer token checked through TokenReview or a client certificate from
//! `--client-ca-file`, each request authorized by a SubjectAccessReview.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use e2e::apiserver::auth::{Decision, UserInfo};
use e2e::cluster::{Cluster, condition, join, node_name, pod_manifest};

type R<T = ()> = anyhow::Result<T>;

const LONG: Duration = Duration::from_secs(60);

/// A test CA: its certificate file and a client certificate it signs.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> R<Self> {
        let key = rcgen::KeyPair::generate()?;
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
        let pem = params.self_signed(&key)?.pem();
        Ok(Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        })
    }

    /// A client certificate for `user` in `group`: (cert file, key file).
    fn client(&self, dir: &Path, user: &str, group: &str) -> R<(PathBuf, PathBuf)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, user);
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, group);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        let (c, k) = (
            dir.join(format!("{user}.crt")),
            dir.join(format!("{user}.key")),
        );
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c, k))
    }
}

/// How a test request authenticates.
enum Cred<'a> {
    None,
    Token(&'a str),
    Cert(&'a Path, &'a Path),
}

/// `curl` over HTTPS to the kubelet, trusting only its self-signed serving certificate:
/// (status, body).
fn get(ca: &Path, port: u16, path: &str, cred: Cred<'_>) -> R<(u16, String)> {
    let host = node_name();
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code}"]);
    match cred {
        Cred::None => {}
        Cred::Token(t) => {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        Cred::Cert(c, k) => {
            cmd.arg("--cert").arg(c).arg("--key").arg(k);
        }
    }
    cmd.arg(format!("https://{host}:{port}{path}"));
    let out = cmd.output().context("curl")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl output")?;
    let code = code.trim().parse().with_context(|| {
        format!(
            "curl status {code:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((code, body.to_string()))
}

#[tokio::test]
async fn kubelet_api_authenticates_authorizes_and_serves_logs_and_pods() -> R {
    let cluster = Cluster::test_server()?;
    let server = cluster.server().context("test API server")?;
    let dir = tempfile::tempdir()?;
    let trusted = Ca::new("e2e-kubelet-client-ca")?;
    let ca_file = dir.path().join("client-ca.crt");
    std::fs::write(&ca_file, &trusted.pem)?;
    let port = {
        let l = std::net::TcpListener::bind("0.0.0.0:0")?;
        l.local_addr()?.port()
    };
    let port_flag = port.to_string();
    let kubelet = join(
        &cluster,
        &[
            "--port",
            &port_flag,
            "--client-ca-file",
            &ca_file.display().to_string(),
        ],
    )
    .await?;
    // Only "reader" (and the group "readers") may read through the kubelet.
    server.set_authorizer(|req| {
        if req.user.username == "reader" || req.user.groups.iter().any(|g| g == "readers") {
            Decision::allow()
        } else {
            Decision::deny("not a reader")
        }
    });
    let reader = server.mint_token(&UserInfo::new("reader", &[]));
    let nobody = server.mint_token(&UserInfo::new("nobody", &[]));

    let node = node_name();
    let pod = format!("logs-{}", std::process::id());
    cluster.kubectl(
        &["apply", "-f", "-"],
        Some(&pod_manifest(
            &pod,
            &node,
            "echo one; echo two; echo three; exec sleep 1000",
        )),
    )?;
    cluster
        .wait(&["pod", "-n", "default", &pod], LONG, |p| {
            p.is_some_and(|p| {
                p["status"]["phase"] == "Running"
                    && condition(p, "Ready").is_some_and(|c| c["status"] == "True")
            })
        })
        .await
        .with_context(|| kubelet.log_text())?;
    let serving = kubelet.root_dir.join("pki").join("kubelet.crt");
    let logs = format!("/containerLogs/default/{pod}/app?tailLines=2");

    // The kubelet's log of the container, written as the pod starts.
    let mut last = (0, String::new());
    for _ in 0..50 {
        last = get(&serving, port, &logs, Cred::Token(&reader))?;
        if last.1 == "two\nthree\n" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        last,
        (200, "two\nthree\n".to_string()),
        "{}",
        kubelet.log_text()
    );

    let (code, body) = get(&serving, port, "/pods", Cred::Token(&reader))?;
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(list["kind"], "PodList");
    assert!(
        list["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p["metadata"]["name"] == pod.as_str())),
        "{list}"
    );

    // The Summary API: the running pod with its container's cpu and memory.
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..50 {
        let (code, body) = get(&serving, port, "/stats/summary", Cred::Token(&reader))?;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let found = v["pods"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| {
                p["podRef"]["name"] == pod.as_str()
                    && p["podRef"]["namespace"] == "default"
                    && p["podRef"]["uid"].as_str().is_some_and(|u| !u.is_empty())
                    && p["containers"].as_array().is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["name"] == "app"
                                && c["cpu"]["usageCoreNanoSeconds"].is_u64()
                                && c["memory"]["workingSetBytes"].is_u64()
                        })
                    })
            })
        });
        last = (code, v);
        if code == 200 && found {
            break;
        }
        last.0 = 0;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last.0, 200, "{} {}", last.1, kubelet.log_text());
    assert_eq!(last.1["node"]["nodeName"], node.as_str(), "{}", last.1);
    assert!(
        last.1["node"]["cpu"]["usageCoreNanoSeconds"].is_u64(),
        "{}",
        last.1
    );
    assert!(
        last.1["node"]["memory"]["workingSetBytes"].is_u64(),
        "{}",
        last.1
    );
    let (code, body) = get(&serving, port, "/metrics/resource", Cred::Token(&reader))?;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.lines().any(|l| l.starts_with(&format!(
            "container_memory_working_set_bytes{{container=\"app\",namespace=\"default\",pod=\"{pod}\"}} "
        ))),
        "{body}"
    );
    assert!(body.contains("\nscrape_error 0\n"), "{body}");
    let (code, body) = get(&serving, port, "/stats/summary", Cred::Token(&nobody))?;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body.trim(),
        "Forbidden (user=nobody, verb=get, resource=nodes, subresource=stats)"
    );

    // Authenticated, not authorized: upstream's message.
    let (code, body) = get(&serving, port, &logs, Cred::Token(&nobody))?;
    assert_eq!(code, 403, "{body}");
    assert_eq!(
        body.trim(),
        "Forbidden (user=nobody, verb=get, resource=nodes, subresource=proxy)"
    );
    let (code, body) = get(&serving, port, "/metrics", Cred::Token(&nobody))?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("subresource=metrics"), "{body}");

    // No credentials, a token the API server does not know, a certificate of another CA.
    assert_eq!(get(&serving, port, "/pods", Cred::None)?.0, 401);
    assert_eq!(
        get(&serving, port, "/pods", Cred::Token("not-a-token"))?.0,
        401
    );
    let other = Ca::new("someone-else")?;
    let (c, k) = other.client(dir.path(), "reader", "readers")?;
    assert_eq!(get(&serving, port, "/pods", Cred::Cert(&c, &k))?.0, 401);

    // A certificate of the client CA: user = CN, groups = O.
    let (c, k) = trusted.client(dir.path(), "carol", "readers")?;
    let (code, body) = get(&serving, port, "/healthz", Cred::Cert(&c, &k))?;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (c, k) = trusted.client(dir.path(), "mallory", "others")?;
    let (code, body) = get(&serving, port, "/healthz", Cred::Cert(&c, &k))?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("user=mallory"), "{body}");

    // Authorization through SubjectAccessReviews; valid tokens reviewed once, then
    // cached (reader and nobody), an unknown one reviewed each time (once here).
    let requests = server.requests();
    let count = |what: &str| requests.iter().filter(|r| r.path.contains(what)).count();
    assert!(count("subjectaccessreviews") >= 4, "{requests:?}");
    assert_eq!(count("tokenreviews"), 3, "{requests:?}");

    // Names that would leave the pod's log directory: rejected, nothing read.
    for bad in [
        format!("/containerLogs/default/{pod}/..%2F..%2Fetc"),
        format!("/containerLogs/default/{pod}/%2e%2e"),
        format!("/containerLogs/..%2F..%2F/{pod}/app"),
        "/containerLogs/default/..%2F..%2Fetc%2Fpasswd/app".to_string(),
    ] {
        let (code, body) = get(&serving, port, &bad, Cred::Token(&reader))?;
        assert!(code == 400 || code == 404, "{bad}: {code} {body}");
        assert!(!body.contains("root:"), "{bad}: {body}");
    }
    let (code, _) = get(
        &serving,
        port,
        &format!("/containerLogs/default/{pod}/missing"),
        Cred::Token(&reader),
    )?;
    assert_eq!(code, 404);
    let (code, _) = get(
        &serving,
        port,
        "/containerLogs/default/no-such-pod/app",
        Cred::Token(&reader),
    )?;
    assert_eq!(code, 404);

    // follow: new lines as they are written, until the container exits.
    let chatty = format!("chatty-{}", std::process::id());
    cluster.kubectl(
        &["apply", "-f", "-"],
        Some(&pod_manifest(
            &chatty,
            &node,
            "echo first; sleep 2; echo second; sleep 1; exit 0",
        )),
    )?;
    cluster
        .wait(&["pod", "-n", "default", &chatty], LONG, |p| {
            p.is_some_and(|p| p["status"]["phase"] == "Running")
        })
        .await
        .with_context(|| kubelet.log_text())?;
    let followed = format!("/containerLogs/default/{chatty}/app?follow=true");
    let (code, body) = get(&serving, port, &followed, Cred::Token(&reader))?;
    assert_eq!((code, body.as_str()), (200, "first\nsecond\n"));
    Ok(())
}
