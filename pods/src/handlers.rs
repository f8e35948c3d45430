//! Running one Kubernetes handler against a container: the actions shared by probes and
//! lifecycle hooks (exec through the CRI, httpGet, tcpSocket, gRPC health, sleep).
//!
//! Every function answers with an [`Outcome`] and never an error: a handler that cannot
//! even be attempted (a named port the container does not declare, a pod without an
//! IP) has failed, and the message says why, as the upstream kubelet's events do.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{ACCEPT, HOST, HeaderName, HeaderValue, LOCATION, USER_AGENT};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{
    Container, GRPCAction, HTTPGetAction, LifecycleHandler, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use proto::v1;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls;

use crate::cri::Cri;

/// The container a handler runs against.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub cri: &'a Cri,
    pub container_id: &'a str,
    /// The pod's IP, `""` when it has none (yet).
    pub pod_ip: &'a str,
    pub host_network: bool,
}

/// What running a handler came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Why it failed, for events and logs.
    Failure(String),
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    fn from_result(r: Result<(), String>) -> Self {
        match r {
            Ok(()) => Outcome::Success,
            Err(msg) => Outcome::Failure(msg),
        }
    }
}

/// Output of a command or body of a response kept for a message, as kubelet keeps.
const MAX_OUTPUT: usize = 10 * 1024;
/// The User-Agent of probe requests unless the probe sets its own.
pub const PROBE_USER_AGENT: &str = "kube-probe/1.33";
/// Redirects followed (same host only) before a probe gives up.
const MAX_REDIRECTS: usize = 10;
/// How long past its own timeout a runtime may take to answer an `ExecSync`.
const EXEC_GRACE: Duration = Duration::from_secs(2);

/// Runs `command` in the container through CRI `ExecSync`; exit code 0 is success.
/// The runtime gets `timeout` in whole seconds (rounded up, at least 1).
pub async fn exec(t: &Target<'_>, command: &[String], timeout: Duration) -> Outcome {
    if command.is_empty() {
        return Outcome::Failure("exec handler has no command".into());
    }
    let secs = whole_seconds(timeout);
    let request = v1::ExecSyncRequest {
        container_id: t.container_id.into(),
        cmd: command.to_vec(),
        timeout: i64::try_from(secs).unwrap_or(i64::MAX),
    };
    let mut runtime = t.cri.runtime.clone();
    let call = runtime.exec_sync(request);
    let timed_out = || Outcome::Failure(format!("command {command:?} timed out after {secs}s"));
    match tokio::time::timeout(Duration::from_secs(secs) + EXEC_GRACE, call).await {
        Err(_) => timed_out(),
        Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => timed_out(),
        Ok(Err(status)) => Outcome::Failure(format!(
            "exec {command:?} in container {}: {}",
            t.container_id,
            status.message()
        )),
        Ok(Ok(response)) => {
            let r = response.into_inner();
            if r.exit_code == 0 {
                Outcome::Success
            } else {
                let mut output = r.stdout;
                output.extend_from_slice(&r.stderr);
                Outcome::Failure(format!(
                    "command {command:?} exited with {}: {}",
                    r.exit_code,
                    truncated(&output)
                ))
            }
        }
    }
}

/// An HTTP GET probe: status 200..400 is success. Redirects are followed only to the
/// same host; a redirect elsewhere is itself the (successful) answer, as in kubelet.
/// HTTPS does not verify the server's certificate, as kubelet does not.
pub async fn http_get(
    t: &Target<'_>,
    get: &HTTPGetAction,
    container: &Container,
    timeout: Duration,
) -> Outcome {
    let run = async {
        let (status, body) = get_following(t, get, container).await?;
        if (200..400).contains(&status.as_u16()) {
            if status.is_redirection() {
                tracing::debug!(%status, "probe got a redirect to another host, taken as success");
            }
            Ok(())
        } else {
            Err(format!(
                "http probe failed with status {}: {}",
                status.as_u16(),
                truncated(&body)
            ))
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => Outcome::from_result(r),
        Err(_) => Outcome::Failure(format!("http probe timed out after {timeout:?}")),
    }
}

/// A TCP probe: the connection being accepted is success.
pub async fn tcp(
    t: &Target<'_>,
    tcp: &TCPSocketAction,
    container: &Container,
    timeout: Duration,
) -> Outcome {
    let run = async {
        let host = host(t, tcp.host.as_deref())?;
        let port = resolve_port(&tcp.port, container)?;
        connect(&host, port).await.map(drop)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => Outcome::from_result(r),
        Err(_) => Outcome::Failure(format!("tcp probe timed out after {timeout:?}")),
    }
}

/// The request of `grpc.health.v1.Health/Check`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// The response of `grpc.health.v1.Health/Check`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    /// `ServingStatus`: 0 unknown, 1 serving, 2 not serving, 3 service unknown.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `ServingStatus.SERVING` of the health protocol.
pub const SERVING: i32 = 1;
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// A gRPC probe: `grpc.health.v1.Health/Check` for `service` on the pod's IP; the
/// answer `SERVING` is success.
pub async fn grpc(t: &Target<'_>, g: &GRPCAction, timeout: Duration) -> Outcome {
    let run = async {
        let host = host(t, None)?;
        let port = port_number(i64::from(g.port))?;
        let address = authority(&host, port);
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("grpc probe address {address}: {e}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .user_agent(PROBE_USER_AGENT)
            .map_err(|e| format!("grpc probe user agent: {e}"))?;
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| format!("grpc probe failed to connect to {address}: {}", chain(&e)))?;
        let mut client = tonic::client::Grpc::new(channel);
        client
            .ready()
            .await
            .map_err(|e| format!("grpc probe connection to {address}: {}", chain(&e)))?;
        let request = tonic::Request::new(HealthCheckRequest {
            service: g.service.clone().unwrap_or_default(),
        });
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(HEALTH_CHECK);
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        match client.unary(request, path, codec).await {
            Ok(response) => match response.into_inner().status {
                SERVING => Ok(()),
                other => Err(format!(
                    "grpc service unhealthy (responded with {})",
                    serving_status(other)
                )),
            },
            Err(status) if status.code() == tonic::Code::Unimplemented => Err(format!(
                "the server at {address} does not implement the grpc health protocol \
                 (grpc.health.v1.Health): {}",
                status.message()
            )),
            Err(status) => Err(format!(
                "grpc health check at {address}: {:?}: {}",
                status.code(),
                status.message()
            )),
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => Outcome::from_result(r),
        Err(_) => Outcome::Failure(format!("grpc probe timed out after {timeout:?}")),
    }
}

/// A lifecycle hook (postStart, preStop), given at most `budget`: exec (with `budget` as
/// its timeout), httpGet (any HTTP answer is success, as kubelet's hooks take it) or
/// sleep. A sleep longer than the budget is cut short and fails. tcpSocket is deprecated
/// in hooks and, as in kubelet, does nothing.
pub async fn lifecycle(
    t: &Target<'_>,
    h: &LifecycleHandler,
    container: &Container,
    budget: Duration,
) -> Outcome {
    if let Some(e) = &h.exec {
        let command = e.command.as_deref().unwrap_or_default();
        exec(t, command, budget).await
    } else if let Some(get) = &h.http_get {
        match tokio::time::timeout(budget, get_following(t, get, container)).await {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(msg)) => Outcome::Failure(format!("http lifecycle hook: {msg}")),
            Err(_) => Outcome::Failure(format!("http lifecycle hook timed out after {budget:?}")),
        }
    } else if let Some(sleep) = &h.sleep {
        let Ok(seconds) = u64::try_from(sleep.seconds) else {
            return Outcome::Success;
        };
        let wanted = Duration::from_secs(seconds);
        if wanted <= budget {
            tokio::time::sleep(wanted).await;
            Outcome::Success
        } else {
            tokio::time::sleep(budget).await;
            Outcome::Failure(format!(
                "sleep hook of {seconds}s cut short after {budget:?}"
            ))
        }
    } else if h.tcp_socket.is_some() {
        tracing::warn!(
            container.id = t.container_id,
            "tcpSocket lifecycle hooks are deprecated and do nothing"
        );
        Outcome::Success
    } else {
        Outcome::Failure("lifecycle handler has no action".into())
    }
}

/// Whole seconds of `d`, rounded up, at least 1.
fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// At most [`MAX_OUTPUT`] bytes of `bytes`, as text.
fn truncated(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_OUTPUT)];
    String::from_utf8_lossy(cut).trim_end().to_string()
}

/// The host a network handler dials: its own `host`, else the pod's IP; a host-network
/// pod without an IP of its own is reached on the loopback address.
fn host(t: &Target<'_>, own: Option<&str>) -> Result<String, String> {
    match own {
        Some(h) if !h.is_empty() => Ok(h.to_string()),
        _ if !t.pod_ip.is_empty() => Ok(t.pod_ip.to_string()),
        _ if t.host_network => Ok("127.0.0.1".into()),
        _ => Err("the pod has no IP to probe".into()),
    }
}

/// A handler's port: a number, a number in a string, or the name of one of the
/// container's ports. An empty name means 80, as kubelet reads it.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => port_number(i64::from(*n)),
        IntOrString::String(s) if s.is_empty() => Ok(80),
        IntOrString::String(s) => {
            if let Ok(n) = s.parse::<i64>() {
                return port_number(n);
            }
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .ok_or_else(|| format!("container {:?} has no port named {s:?}", container.name))
                .and_then(|p| port_number(i64::from(p.container_port)))
        }
    }
}

fn port_number(n: i64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("invalid port {n}"))
}

/// `host:port`, with brackets around an IPv6 address.
fn authority(host: &str, port: u16) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    let dialed = match host.parse::<IpAddr>() {
        Ok(ip) => TcpStream::connect((ip, port)).await,
        Err(_) => TcpStream::connect((host, port)).await,
    };
    dialed.map_err(|e| format!("dial tcp {}: {e}", authority(host, port)))
}

fn serving_status(status: i32) -> String {
    match status {
        0 => "UNKNOWN".into(),
        1 => "SERVING".into(),
        2 => "NOT_SERVING".into(),
        3 => "SERVICE_UNKNOWN".into(),
        n => n.to_string(),
    }
}

/// An error and its sources, `a: b: c`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Where an HTTP request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Url {
    https: bool,
    /// Without brackets.
    host: String,
    port: u16,
    /// Starts with `/`.
    path: String,
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(
            f,
            "{scheme}://{}{}",
            authority(&self.host, self.port),
            self.path
        )
    }
}

impl Url {
    /// Where `location` (a redirect's `Location`) points, seen from `self`.
    fn join(&self, location: &str) -> Option<Url> {
        if location.contains("://") || location.starts_with("//") {
            let absolute = if location.starts_with("//") {
                let scheme = if self.https { "https:" } else { "http:" };
                format!("{scheme}{location}")
            } else {
                location.to_string()
            };
            let uri: hyper::Uri = absolute.parse().ok()?;
            let https = match uri.scheme_str()? {
                s if s.eq_ignore_ascii_case("http") => false,
                s if s.eq_ignore_ascii_case("https") => true,
                _ => return None,
            };
            let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let path = uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .filter(|p| p.starts_with('/'))
                .unwrap_or_else(|| "/".into());
            Some(Url {
                https,
                host: host.to_string(),
                port,
                path,
            })
        } else if location.starts_with('/') {
            Some(Url {
                path: location.to_string(),
                ..self.clone()
            })
        } else {
            let path = self.path.split(['?', '#']).next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            Some(Url {
                path: format!("{dir}{location}"),
                ..self.clone()
            })
        }
    }
}

/// The URL and headers of an HTTPGetAction.
fn http_request(
    t: &Target<'_>,
    get: &HTTPGetAction,
    container: &Container,
) -> Result<(Url, Vec<(HeaderName, HeaderValue)>), String> {
    let https = match get.scheme.as_deref() {
        None | Some("") => false,
        Some(s) if s.eq_ignore_ascii_case("http") => false,
        Some(s) if s.eq_ignore_ascii_case("https") => true,
        Some(s) => return Err(format!("unsupported scheme {s:?}")),
    };
    let host = host(t, get.host.as_deref())?;
    let port = resolve_port(&get.port, container)?;
    let path = match get.path.as_deref() {
        None | Some("") => "/".to_string(),
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
    };
    let mut headers = Vec::new();
    for h in get.http_headers.iter().flatten() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| format!("http header name {:?}: {e}", h.name))?;
        let value = HeaderValue::from_str(&h.value)
            .map_err(|e| format!("http header {:?} value: {e}", h.name))?;
        headers.push((name, value));
    }
    Ok((
        Url {
            https,
            host,
            port,
            path,
        },
        headers,
    ))
}

/// GETs what `get` describes, following redirects to the same host; the final status
/// and the start of its body.
async fn get_following(
    t: &Target<'_>,
    get: &HTTPGetAction,
    container: &Container,
) -> Result<(StatusCode, Vec<u8>), String> {
    let (first, headers) = http_request(t, get, container)?;
    let custom_host = headers.iter().any(|(n, _)| n == HOST);
    let mut url = first.clone();
    let mut keep_host = true;
    for _ in 0..=MAX_REDIRECTS {
        let mut builder = Request::get(url.path.as_str());
        if !(custom_host && keep_host) {
            builder = builder.header(HOST, authority(&url.host, url.port));
        }
        if !headers.iter().any(|(n, _)| n == USER_AGENT) {
            builder = builder.header(USER_AGENT, PROBE_USER_AGENT);
        }
        if !headers.iter().any(|(n, _)| n == ACCEPT) {
            builder = builder.header(ACCEPT, "*/*");
        }
        for (name, value) in &headers {
            if name != HOST || keep_host {
                builder = builder.header(name, value);
            }
        }
        let request = builder
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("http request for {url}: {e}"))?;
        let (status, location, body) = send(&url, request).await?;
        let next = location
            .filter(|_| status.is_redirection())
            .and_then(|l| url.join(&l));
        match next {
            Some(next) if next.host == first.host => {
                // A custom Host header survives only relative redirects, as in Go.
                keep_host = keep_host && next.host == url.host && next.port == url.port;
                url = next;
            }
            _ => return Ok((status, body)),
        }
    }
    Err(format!("{first}: stopped after {MAX_REDIRECTS} redirects"))
}

/// One request on its own connection: status, `Location` and the start of the body.
async fn send(
    url: &Url,
    request: Request<Empty<Bytes>>,
) -> Result<(StatusCode, Option<String>, Vec<u8>), String> {
    let tcp = connect(&url.host, url.port).await?;
    if url.https {
        let name = rustls::pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| format!("{url}: server name: {e}"))?;
        let tls = TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{url}: tls handshake: {e}"))?;
        exchange(url, tls, request).await
    } else {
        exchange(url, tcp, request).await
    }
}

async fn exchange<S>(
    url: &Url,
    io: S,
    request: Request<Empty<Bytes>>,
) -> Result<(StatusCode, Option<String>, Vec<u8>), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("{url}: {}", chain(&e)))?;
    let work = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("get {url}: {}", chain(&e)))?;
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = response.into_body();
        let mut kept = Vec::new();
        while kept.len() < MAX_OUTPUT {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        kept.extend_from_slice(data);
                    }
                }
                // A body cut off after the status line does not change the answer.
                Some(Err(_)) | None => break,
            }
        }
        Ok((status, location, kept))
    };
    // The connection ends once the request is answered and `sender` dropped.
    let (result, _) = tokio::join!(work, conn);
    result
}

/// TLS that accepts any server certificate (kubelet probes skip verification too) but
/// still checks that the handshake is signed by the certificate presented.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let verifier = Arc::new(AnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            });
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls configuration: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

#[derive(Debug)]
struct AnyCertificate {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::task::{Context, Poll};

    use k8s_openapi::api::core::v1::{ContainerPort, HTTPHeader, SleepAction};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tonic::codegen::http;

    use super::*;

    fn cri() -> Cri {
        Cri::connect("unix:///nonexistent/cri.sock").expect("lazy connect")
    }

    fn target<'a>(cri: &'a Cri, pod_ip: &'a str) -> Target<'a> {
        Target {
            cri,
            container_id: "c1",
            pod_ip,
            host_network: false,
        }
    }

    fn container(ports: &[(&str, u16)]) -> Container {
        Container {
            name: "web".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port)| ContainerPort {
                        name: Some(name.to_string()),
                        container_port: i32::from(*port),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn get(port: IntOrString, path: &str) -> HTTPGetAction {
        HTTPGetAction {
            port,
            path: Some(path.into()),
            ..Default::default()
        }
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// The answer of the test HTTP server to a path.
    fn answer(path: &str) -> String {
        let (status, extra, body) = match path {
            "/ok" => ("200 OK", "", "fine"),
            "/fail" => ("500 Internal Server Error", "", "broken"),
            "/redirect-local" => ("302 Found", "location: /ok\r\n", ""),
            "/redirect-fail" => ("302 Found", "location: fail\r\n", ""),
            "/redirect-away" => ("302 Found", "location: http://192.0.2.1/ok\r\n", ""),
            "/loop" => ("302 Found", "location: /loop\r\n", ""),
            _ => ("404 Not Found", "", "no"),
        };
        format!(
            "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// Request heads (lowercased) the test server saw.
    type Seen = Arc<Mutex<Vec<String>>>;

    async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, seen: Seen) {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).to_lowercase();
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        seen.lock().expect("lock").push(head);
        let _ = s.write_all(answer(&path).as_bytes()).await;
        let _ = s.shutdown().await;
    }

    /// A plain HTTP server on 127.0.0.1: its port and what it saw.
    async fn http_server() -> (u16, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Seen::default();
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve_one(s, Arc::clone(&record)));
            }
        });
        (port, seen)
    }

    /// A port nothing listens on.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr").port()
    }

    #[tokio::test]
    async fn http_get_status_headers_and_redirects() {
        let (port, seen) = http_server().await;
        let cri = cri();
        let t = target(&cri, "127.0.0.1");
        let c = container(&[]);
        let probe = |path: &str| get(IntOrString::Int(i32::from(port)), path);

        let mut ok = probe("ok");
        ok.http_headers = Some(vec![HTTPHeader {
            name: "X-Probe".into(),
            value: "yes".into(),
        }]);
        assert_eq!(http_get(&t, &ok, &c, SECOND).await, Outcome::Success);
        let head = seen.lock().expect("lock").pop().unwrap_or_default();
        assert!(head.starts_with("get /ok http/1.1\r\n"), "{head}");
        assert!(head.contains("user-agent: kube-probe/1.33\r\n"), "{head}");
        assert!(
            head.contains(&format!("host: 127.0.0.1:{port}\r\n")),
            "{head}"
        );
        assert!(head.contains("accept: */*\r\n"), "{head}");
        assert!(head.contains("x-probe: yes\r\n"), "{head}");

        let Outcome::Failure(msg) = http_get(&t, &probe("/fail"), &c, SECOND).await else {
            panic!("a 500 is a failure");
        };
        assert!(msg.contains("500") && msg.contains("broken"), "{msg}");
        assert!(
            !http_get(&t, &probe("/missing"), &c, SECOND)
                .await
                .is_success()
        );

        // Same-host redirects are followed, to success or to failure.
        seen.lock().expect("lock").clear();
        assert!(
            http_get(&t, &probe("/redirect-local"), &c, SECOND)
                .await
                .is_success()
        );
        assert!(
            !http_get(&t, &probe("/redirect-fail"), &c, SECOND)
                .await
                .is_success()
        );
        let paths: Vec<_> = seen
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|h| h.split(' ').nth(1).map(str::to_string))
            .collect();
        assert_eq!(paths, ["/redirect-local", "/ok", "/redirect-fail", "/fail"]);
        // A redirect elsewhere is not followed: the 302 itself is the answer.
        assert!(
            http_get(&t, &probe("/redirect-away"), &c, SECOND)
                .await
                .is_success()
        );
        let Outcome::Failure(msg) = http_get(&t, &probe("/loop"), &c, SECOND).await else {
            panic!("an endless redirect is a failure");
        };
        assert!(msg.contains("redirects"), "{msg}");

        // A Host header of the probe's own replaces the address.
        let mut host = probe("/ok");
        host.http_headers = Some(vec![HTTPHeader {
            name: "Host".into(),
            value: "web.example".into(),
        }]);
        assert!(http_get(&t, &host, &c, SECOND).await.is_success());
        let head = seen.lock().expect("lock").pop().unwrap_or_default();
        assert!(head.contains("host: web.example\r\n"), "{head}");
        assert_eq!(head.matches("host:").count(), 1, "{head}");
    }

    #[tokio::test]
    async fn http_get_ports_and_hosts() {
        let (port, _) = http_server().await;
        let cri = cri();
        let c = container(&[("http", port)]);
        let named = get(IntOrString::String("http".into()), "/ok");
        assert!(
            http_get(&target(&cri, "127.0.0.1"), &named, &c, SECOND)
                .await
                .is_success()
        );
        let Outcome::Failure(msg) = http_get(
            &target(&cri, "127.0.0.1"),
            &get(IntOrString::String("metrics".into()), "/ok"),
            &c,
            SECOND,
        )
        .await
        else {
            panic!("an unknown port name is a failure");
        };
        assert!(msg.contains("no port named \"metrics\""), "{msg}");

        // No pod IP: the probe's own host, else the loopback for host-network pods.
        let mut own = get(IntOrString::Int(i32::from(port)), "/ok");
        assert!(
            !http_get(&target(&cri, ""), &own, &c, SECOND)
                .await
                .is_success()
        );
        let mut host_net = target(&cri, "");
        host_net.host_network = true;
        assert!(http_get(&host_net, &own, &c, SECOND).await.is_success());
        own.host = Some("127.0.0.1".into());
        assert!(
            http_get(&target(&cri, ""), &own, &c, SECOND)
                .await
                .is_success()
        );

        let closed = get(IntOrString::Int(i32::from(closed_port().await)), "/");
        assert!(
            !http_get(&target(&cri, "127.0.0.1"), &closed, &c, SECOND)
                .await
                .is_success()
        );
    }

    #[tokio::test]
    async fn http_get_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Accepts and never answers.
        let _hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let cri = cri();
        let g = get(IntOrString::Int(i32::from(port)), "/");
        let out = http_get(
            &target(&cri, "127.0.0.1"),
            &g,
            &container(&[]),
            Duration::from_millis(200),
        )
        .await;
        assert!(
            matches!(&out, Outcome::Failure(m) if m.contains("timed out")),
            "{out:?}"
        );
    }

    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBkjCCATigAwIBAgIUW75dknG/vCM3o1AihVVp0DjrvrgwCgYIKoZIzj0EAwIw
FTETMBEGA1UEAwwKcHJvYmUtdGVzdDAgFw0yNjExMjMxOTIxNTFaGA8yMTI2MTAz
MDE5MjE1MVowFTETMBEGA1UEAwwKcHJvYmUtdGVzdDBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABKf62FHxfA5Pf3ZNPcDUKNtcZbLd9yStOH/zICQtOBgkFTeuyDYT
slA4ShdDGgtEGimCvjUe3Wuu16G2z2fmAMCjZDBiMB0GA1UdDgQWBBQLqnCMOr4B
qhPln9FM6VUxir3lhDAfBgNVHSMEGDAWgBQLqnCMOr4BqhPln9FM6VUxir3lhDAP
BgNVHRMBAf8EBTADAQH/MA8GA1UdEQQIMAaHBH8AAAEwCgYIKoZIzj0EAwIDSAAw
RQIgSb4hYJ5oOBfwHiKGCVHmPozXQ8x/05y7Bk5R/SpXLfwCIQCSGvMWepqdS+96
IxHBoT/Z0nljWZrUbIOQN3JlA6nGdA==
-----END CERTIFICATE-----
";
    /// The throwaway key of the self-signed test certificate above.
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgPMjaS4bheEyo+P4w
ejt2f5e3cUC9mYwRmemJu8B+DGmhRANCAASn+thR8XwOT392TT3A1CjbXGWy3fck
rTh/8yAkLTgYJBU3rsg2E7JQOEoXQxoLRBopgr41Ht1rrtehts9n5gDA
-----END PRIVATE KEY-----
";

    #[tokio::test]
    async fn https_probe_skips_certificate_verification() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let cert = CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).expect("cert");
        let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Seen::default();
        let record = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                if let Ok(tls) = acceptor.accept(s).await {
                    tokio::spawn(serve_one(tls, Arc::clone(&record)));
                }
            }
        });

        let cri = cri();
        let mut g = get(IntOrString::Int(i32::from(port)), "/ok");
        g.scheme = Some("HTTPS".into());
        let out = http_get(&target(&cri, "127.0.0.1"), &g, &container(&[]), SECOND).await;
        assert_eq!(out, Outcome::Success);
        assert_eq!(seen.lock().expect("lock").len(), 1);
        g.path = Some("/fail".into());
        let out = http_get(&target(&cri, "127.0.0.1"), &g, &container(&[]), SECOND).await;
        assert!(!out.is_success());
    }

    #[tokio::test]
    async fn tcp_listening_and_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let cri = cri();
        let t = target(&cri, "127.0.0.1");
        let c = container(&[("db", port)]);
        let action = |port| TCPSocketAction { host: None, port };
        assert!(
            tcp(&t, &action(IntOrString::Int(i32::from(port))), &c, SECOND)
                .await
                .is_success()
        );
        assert!(
            tcp(&t, &action(IntOrString::String("db".into())), &c, SECOND)
                .await
                .is_success()
        );
        let closed = IntOrString::Int(i32::from(closed_port().await));
        let Outcome::Failure(msg) = tcp(&t, &action(closed), &c, SECOND).await else {
            panic!("a closed port is a failure");
        };
        assert!(msg.starts_with("dial tcp 127.0.0.1:"), "{msg}");
    }

    /// A health service: "" serving, "down" not serving, anything else unknown.
    #[derive(Clone)]
    struct Health;

    impl tonic::server::NamedService for Health {
        const NAME: &'static str = "grpc.health.v1.Health";
    }

    type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

    impl tower::Service<http::Request<tonic::body::Body>> for Health {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
            Box::pin(async move {
                let check = tower::service_fn(|r: tonic::Request<HealthCheckRequest>| async move {
                    match r.get_ref().service.as_str() {
                        "" => Ok(tonic::Response::new(HealthCheckResponse {
                            status: SERVING,
                        })),
                        "down" => Ok(tonic::Response::new(HealthCheckResponse { status: 2 })),
                        other => Err(tonic::Status::not_found(format!("unknown service {other}"))),
                    }
                });
                let codec =
                    tonic_prost::ProstCodec::<HealthCheckResponse, HealthCheckRequest>::default();
                Ok(tonic::server::Grpc::new(codec).unary(check, req).await)
            })
        }
    }

    #[tokio::test]
    async fn grpc_health() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(Health)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let cri = cri();
        let t = target(&cri, "127.0.0.1");
        let action = |port: u16, service: Option<&str>| GRPCAction {
            port: i32::from(port),
            service: service.map(str::to_string),
        };
        assert_eq!(
            grpc(&t, &action(port, None), SECOND).await,
            Outcome::Success
        );
        let Outcome::Failure(msg) = grpc(&t, &action(port, Some("down")), SECOND).await else {
            panic!("NOT_SERVING is a failure");
        };
        assert!(msg.contains("NOT_SERVING"), "{msg}");
        let Outcome::Failure(msg) = grpc(&t, &action(port, Some("other")), SECOND).await else {
            panic!("an unknown service is a failure");
        };
        assert!(msg.contains("NotFound"), "{msg}");
        let closed = closed_port().await;
        assert!(!grpc(&t, &action(closed, None), SECOND).await.is_success());
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_hook_honors_the_budget() {
        let cri = cri();
        let t = target(&cri, "");
        let c = container(&[]);
        let sleep = |seconds| LifecycleHandler {
            sleep: Some(SleepAction { seconds }),
            ..Default::default()
        };
        let start = tokio::time::Instant::now();
        assert_eq!(
            lifecycle(&t, &sleep(5), &c, 10 * SECOND).await,
            Outcome::Success
        );
        assert_eq!(start.elapsed(), 5 * SECOND);

        let start = tokio::time::Instant::now();
        let out = lifecycle(&t, &sleep(30), &c, 2 * SECOND).await;
        assert!(
            matches!(&out, Outcome::Failure(m) if m.contains("cut short")),
            "{out:?}"
        );
        assert_eq!(start.elapsed(), 2 * SECOND);
    }

    #[tokio::test]
    async fn lifecycle_http_tcp_and_nothing() {
        let (port, seen) = http_server().await;
        let cri = cri();
        let t = target(&cri, "127.0.0.1");
        let c = container(&[]);
        // Any HTTP answer is success for a hook, as in kubelet.
        let http = LifecycleHandler {
            http_get: Some(get(IntOrString::Int(i32::from(port)), "/fail")),
            ..Default::default()
        };
        assert_eq!(lifecycle(&t, &http, &c, SECOND).await, Outcome::Success);
        assert_eq!(seen.lock().expect("lock").len(), 1);
        let unreachable = LifecycleHandler {
            http_get: Some(get(IntOrString::Int(i32::from(closed_port().await)), "/")),
            ..Default::default()
        };
        assert!(!lifecycle(&t, &unreachable, &c, SECOND).await.is_success());

        let tcp = LifecycleHandler {
            tcp_socket: Some(TCPSocketAction {
                host: None,
                port: IntOrString::Int(1),
            }),
            ..Default::default()
        };
        assert_eq!(lifecycle(&t, &tcp, &c, SECOND).await, Outcome::Success);
        let nothing = LifecycleHandler::default();
        assert!(!lifecycle(&t, &nothing, &c, SECOND).await.is_success());
    }

    #[test]
    fn ports() {
        let c = container(&[("http", 8080), ("zero", 0)]);
        let table = [
            (IntOrString::Int(80), Ok(80)),
            (IntOrString::String("8443".into()), Ok(8443)),
            (IntOrString::String("http".into()), Ok(8080)),
            (IntOrString::String(String::new()), Ok(80)),
            (IntOrString::Int(0), Err(())),
            (IntOrString::Int(70000), Err(())),
            (IntOrString::String("-1".into()), Err(())),
            (IntOrString::String("zero".into()), Err(())),
            (IntOrString::String("grpc".into()), Err(())),
        ];
        for (port, want) in table {
            assert_eq!(resolve_port(&port, &c).map_err(drop), want, "{port:?}");
        }
    }

    #[test]
    fn redirect_locations() {
        let base = Url {
            https: false,
            host: "10.0.0.2".into(),
            port: 8080,
            path: "/a/b?x=1".into(),
        };
        let at = |https, host: &str, port, path: &str| Url {
            https,
            host: host.into(),
            port,
            path: path.into(),
        };
        let table = [
            ("/c", Some(at(false, "10.0.0.2", 8080, "/c"))),
            ("c?y=2", Some(at(false, "10.0.0.2", 8080, "/a/c?y=2"))),
            ("https://10.0.0.2/d", Some(at(true, "10.0.0.2", 443, "/d"))),
            ("http://[fd00::1]:81", Some(at(false, "fd00::1", 81, "/"))),
            ("//other:9/e", Some(at(false, "other", 9, "/e"))),
            ("ftp://10.0.0.2/", None),
        ];
        for (location, want) in table {
            assert_eq!(base.join(location), want, "{location}");
        }
        assert_eq!(
            at(false, "fd00::1", 81, "/").to_string(),
            "http://[fd00::1]:81/"
        );
    }

    #[test]
    fn exec_timeouts_in_whole_seconds() {
        let table = [
            (Duration::ZERO, 1),
            (Duration::from_millis(300), 1),
            (SECOND, 1),
            (Duration::from_millis(1500), 2),
            (Duration::from_secs(30), 30),
        ];
        for (d, want) in table {
            assert_eq!(whole_seconds(d), want, "{d:?}");
        }
    }

    #[test]
    fn output_is_truncated() {
        let long = vec![b'x'; MAX_OUTPUT + 100];
        assert_eq!(truncated(&long).len(), MAX_OUTPUT);
        assert_eq!(truncated(b"fine\n"), "fine");
    }
}
