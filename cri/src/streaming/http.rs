//! The HTTP/1.1 side: `/exec/{token}`, `/attach/{token}`, `/portforward/{token}`. A
//! token is consumed by the first request that names it, whatever becomes of it; the
//! request must upgrade to WebSocket (RFC 6455) or SPDY/3.1, and the session runs on
//! the upgraded connection in a task of its own.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::cache::Pending;
use super::protocol::{self, Version};
use super::remotecommand::{Options, Target};
use super::spdy::conn::Connection;
use super::{State, portforward, remotecommand};

type Body = Full<Bytes>;

const SPDY_UPGRADE: &str = "SPDY/3.1";
const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";

/// Accepts connections until the task is aborted.
pub(crate) async fn serve(listener: tokio::net::TcpListener, state: Arc<State>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: do not spin.
                tracing::warn!(err = %e, "streaming server accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req)) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, err = %e, "streaming connection ended");
            }
        });
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(message.into())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn handle(state: &Arc<State>, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').split('/');
    let (verb, token) = match (parts.next(), parts.next(), parts.next()) {
        (Some(verb), Some(token), None) if !token.is_empty() => (verb, token),
        _ => return text(StatusCode::NOT_FOUND, "not found"),
    };
    if !matches!(verb, "exec" | "attach" | "portforward") {
        return text(StatusCode::NOT_FOUND, "not found");
    }
    let Some(pending) = state.cache.consume(token) else {
        return text(StatusCode::NOT_FOUND, "unknown or expired streaming token");
    };
    let upgrade = Upgrade::of(req.headers());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let backend = state.backend.clone();
    match (verb, pending) {
        ("exec", Pending::Exec(r)) => remote_command(
            upgrade,
            on_upgrade,
            Target::Exec {
                container_id: r.container_id,
                cmd: r.cmd,
            },
            Options {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            backend,
        ),
        ("attach", Pending::Attach(r)) => remote_command(
            upgrade,
            on_upgrade,
            Target::Attach {
                container_id: r.container_id,
            },
            Options {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            backend,
        ),
        ("portforward", Pending::PortForward(r)) => {
            // The CRI request's ports; a WebSocket client may name them in the query.
            let mut ports: Vec<u16> = r
                .port
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .collect();
            if ports.is_empty() {
                ports = query_ports(req.uri().query().unwrap_or_default());
            }
            port_forward(upgrade, on_upgrade, r.pod_sandbox_id, ports, backend)
        }
        _ => text(
            StatusCode::BAD_REQUEST,
            "the token was issued for another verb",
        ),
    }
}

/// `port=8080&port=9090,9091` → ports.
fn query_ports(query: &str) -> Vec<u16> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "port")
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|p| p.parse::<u16>().ok().filter(|p| *p > 0))
        .collect()
}

/// What the request asks to upgrade to.
#[derive(Debug, PartialEq, Eq)]
enum Upgrade {
    WebSocket { key: String, protocols: Vec<String> },
    Spdy { protocols: Vec<String> },
    Invalid(&'static str),
    None,
}

impl Upgrade {
    fn of(h: &HeaderMap) -> Self {
        let values = |name: &str| {
            protocol::tokens(h.get_all(name).iter().filter_map(|v| v.to_str().ok()))
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        let connection_upgrade = values(header::CONNECTION.as_str())
            .iter()
            .any(|t| t.eq_ignore_ascii_case("upgrade"));
        let upgrade = values(header::UPGRADE.as_str());
        if !connection_upgrade || upgrade.is_empty() {
            return Upgrade::None;
        }
        if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
            let version = h
                .get(header::SEC_WEBSOCKET_VERSION)
                .and_then(|v| v.to_str().ok());
            let Some(key) = h
                .get(header::SEC_WEBSOCKET_KEY)
                .and_then(|v| v.to_str().ok())
            else {
                return Upgrade::Invalid("missing Sec-WebSocket-Key");
            };
            if version != Some("13") {
                return Upgrade::Invalid("unsupported Sec-WebSocket-Version (want 13)");
            }
            return Upgrade::WebSocket {
                key: key.to_string(),
                protocols: values(header::SEC_WEBSOCKET_PROTOCOL.as_str()),
            };
        }
        if upgrade.iter().any(|u| u.eq_ignore_ascii_case(SPDY_UPGRADE)) {
            return Upgrade::Spdy {
                protocols: values(STREAM_PROTOCOL_HEADER),
            };
        }
        Upgrade::Invalid("unsupported Upgrade (want websocket or SPDY/3.1)")
    }
}

fn switching(headers: &[(&'static str, String)]) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in headers {
        if let Ok(v) = http::HeaderValue::from_str(value) {
            r.headers_mut().insert(*name, v);
        }
    }
    r
}

fn websocket_response(key: &str, protocol: Option<&str>) -> Response<Body> {
    let mut headers = vec![
        ("connection", "Upgrade".to_string()),
        ("upgrade", "websocket".to_string()),
        ("sec-websocket-accept", derive_accept_key(key.as_bytes())),
    ];
    if let Some(p) = protocol {
        headers.push(("sec-websocket-protocol", p.to_string()));
    }
    switching(&headers)
}

fn spdy_response(protocol: &str) -> Response<Body> {
    switching(&[
        ("connection", "Upgrade".to_string()),
        ("upgrade", SPDY_UPGRADE.to_string()),
        (STREAM_PROTOCOL_HEADER, protocol.to_string()),
    ])
}

fn unnegotiable(offered: &[String], supported: &[&str]) -> Response<Body> {
    text(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"
        ),
    )
}

async fn upgraded(on_upgrade: OnUpgrade) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match on_upgrade.await {
        Ok(u) => Some(TokioIo::new(u)),
        Err(e) => {
            tracing::debug!(err = %e, "streaming upgrade failed");
            None
        }
    }
}

fn remote_command(
    upgrade: Upgrade,
    on_upgrade: OnUpgrade,
    target: Target,
    opts: Options,
    backend: Arc<dyn super::Backend>,
) -> Response<Body> {
    match upgrade {
        Upgrade::WebSocket { key, protocols } => {
            // No subprotocol at all: the first version of the channel protocol.
            let version = if protocols.is_empty() {
                Some(Version::V1)
            } else {
                let offered: Vec<&str> = protocols.iter().map(String::as_str).collect();
                protocol::negotiate(&offered, protocol::WEBSOCKET_EXEC, Version::name)
            };
            let Some(version) = version else {
                let names: Vec<&str> = protocol::WEBSOCKET_EXEC.iter().map(|v| v.name()).collect();
                return unnegotiable(&protocols, &names);
            };
            let echoed = (!protocols.is_empty()).then(|| version.name());
            tokio::spawn(async move {
                let Some(io) = upgraded(on_upgrade).await else {
                    return;
                };
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                remotecommand::serve_websocket(ws, version, opts, target, backend).await;
            });
            websocket_response(&key, echoed)
        }
        Upgrade::Spdy { protocols } => {
            let offered: Vec<&str> = protocols.iter().map(String::as_str).collect();
            let Some(version) = protocol::negotiate(&offered, protocol::SPDY_EXEC, Version::name)
            else {
                let names: Vec<&str> = protocol::SPDY_EXEC.iter().map(|v| v.name()).collect();
                return unnegotiable(&protocols, &names);
            };
            tokio::spawn(async move {
                let Some(io) = upgraded(on_upgrade).await else {
                    return;
                };
                match Connection::start(io) {
                    Ok(conn) => {
                        remotecommand::serve_spdy(conn, version, opts, target, backend).await;
                    }
                    Err(e) => tracing::warn!(err = %e, "starting a spdy connection"),
                }
            });
            spdy_response(version.name())
        }
        Upgrade::Invalid(why) => text(StatusCode::BAD_REQUEST, why),
        Upgrade::None => text(
            StatusCode::BAD_REQUEST,
            "streaming needs an Upgrade to websocket or SPDY/3.1",
        ),
    }
}

fn port_forward(
    upgrade: Upgrade,
    on_upgrade: OnUpgrade,
    sandbox_id: String,
    ports: Vec<u16>,
    backend: Arc<dyn super::Backend>,
) -> Response<Body> {
    match upgrade {
        Upgrade::WebSocket { key, protocols } => {
            let offered: Vec<&str> = protocols.iter().map(String::as_str).collect();
            let chosen = protocol::negotiate(&offered, protocol::WEBSOCKET_PORT_FORWARD, |s| s);
            if chosen.is_none() && !protocols.is_empty() {
                return unnegotiable(&protocols, protocol::WEBSOCKET_PORT_FORWARD);
            }
            if ports.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "port-forward over websocket needs ports (in the request or ?port=)",
                );
            }
            tokio::spawn(async move {
                let Some(io) = upgraded(on_upgrade).await else {
                    return;
                };
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                // Closing a data channel (`[255, n]`, as v5 frames it) half-closes its
                // connection to the pod, whichever subprotocol was agreed.
                portforward::serve_websocket(ws, Version::V5, ports, sandbox_id, backend).await;
            });
            websocket_response(&key, chosen)
        }
        Upgrade::Spdy { protocols } => {
            // Clients that send no protocol header speak the same (first) version.
            if !protocols.is_empty() && !protocols.iter().any(|p| p == protocol::PORT_FORWARD_SPDY)
            {
                return unnegotiable(&protocols, &[protocol::PORT_FORWARD_SPDY]);
            }
            tokio::spawn(async move {
                let Some(io) = upgraded(on_upgrade).await else {
                    return;
                };
                match Connection::start(io) {
                    Ok(conn) => portforward::serve_spdy(conn, sandbox_id, backend).await,
                    Err(e) => tracing::warn!(err = %e, "starting a spdy connection"),
                }
            });
            spdy_response(protocol::PORT_FORWARD_SPDY)
        }
        Upgrade::Invalid(why) => text(StatusCode::BAD_REQUEST, why),
        Upgrade::None => text(
            StatusCode::BAD_REQUEST,
            "streaming needs an Upgrade to websocket or SPDY/3.1",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_str(v).expect("test fixture"));
        }
        h
    }

    #[test]
    fn upgrade_requests() {
        let ws = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            (
                "sec-websocket-protocol",
                "v5.channel.k8s.io, v4.channel.k8s.io",
            ),
        ]);
        assert_eq!(
            Upgrade::of(&ws),
            Upgrade::WebSocket {
                key: "dGhlIHNhbXBsZSBub25jZQ==".into(),
                protocols: vec!["v5.channel.k8s.io".into(), "v4.channel.k8s.io".into()],
            }
        );
        let spdy = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "v3.channel.k8s.io"),
        ]);
        assert_eq!(
            Upgrade::of(&spdy),
            Upgrade::Spdy {
                protocols: vec!["v4.channel.k8s.io".into(), "v3.channel.k8s.io".into()],
            }
        );
        assert_eq!(Upgrade::of(&headers(&[])), Upgrade::None);
        assert!(matches!(
            Upgrade::of(&headers(&[("connection", "upgrade"), ("upgrade", "h2c")])),
            Upgrade::Invalid(_)
        ));
        assert!(matches!(
            Upgrade::of(&headers(&[
                ("connection", "upgrade"),
                ("upgrade", "websocket")
            ])),
            Upgrade::Invalid(_)
        ));
    }

    #[test]
    fn websocket_accept_key_of_rfc_6455() {
        let r = websocket_response("dGhlIHNhbXBsZSBub25jZQ==", Some("v5.channel.k8s.io"));
        assert_eq!(r.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(
            r.headers()["sec-websocket-accept"],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(r.headers()["sec-websocket-protocol"], "v5.channel.k8s.io");
    }

    #[test]
    fn ports_from_the_query() {
        assert_eq!(
            query_ports("port=80&port=90,100&x=1&port=0&port=z"),
            vec![80, 90, 100]
        );
        assert_eq!(query_ports(""), Vec::<u16>::new());
    }
}
