//! The kubelet API on :10250: HTTPS with the serving certificate (reloaded as it
//! rotates), every request authenticated (client certificate, else bearer token through
//! TokenReview) and authorized (SubjectAccessReview on `nodes/<subresource>`), as
//! upstream's defaults (`anonymous: false`, webhook authentication and authorization).
//! Routes: `/healthz`, `/pods`, `/runningpods/`, `/containerLogs/{ns}/{pod}/{container}`,
//! `/stats/summary`, `/metrics/resource`.

mod auth;
mod logs;
mod stats;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::bootstrap::PemPaths;
use pods::engine::PodViews;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] tls::Error),
}

/// How long a port in use waits before binding again.
const BIND_RETRY: Duration = Duration::from_secs(5);
/// The longest a client may take over its TLS handshake, and over a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where and how the server listens.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    pub node_name: String,
    /// `--client-ca-file`: client certificates are verified against it (none: only
    /// bearer tokens authenticate).
    pub client_ca_file: Option<PathBuf>,
    pub pod_logs_dir: PathBuf,
    /// `--root-dir`: its filesystem is the node's `fs` in the summary.
    pub root_dir: PathBuf,
}

/// What the server reads from the rest of the agent.
pub struct Sources {
    pub client: kube::Client,
    pub views: watch::Receiver<PodViews>,
    pub serving: watch::Receiver<Option<PemPaths>>,
    /// The runtime, for the pods' and containers' stats.
    pub cri: pods::cri::Cri,
}

struct Shared {
    auth: auth::Auth,
    views: watch::Receiver<PodViews>,
    pod_logs_dir: PathBuf,
    root_dir: PathBuf,
    node_name: String,
    cri: pods::cri::Cri,
    cpu: stats::CpuSampler,
}

/// The client certificate's user of one connection, when it verified.
#[derive(Debug, Clone)]
struct Peer(Option<tls::CertUser>);

/// Serves until `shutdown`. Bad TLS material fails here; a port in use is retried in the
/// background (the node keeps running its pods without its API meanwhile).
pub async fn start(cfg: Config, src: Sources, shutdown: CancellationToken) -> Result<()> {
    let cas = match &cfg.client_ca_file {
        Some(path) => tls::ClientCas::load(path)?,
        None => tls::ClientCas::none(),
    };
    let serving = tls::Serving::follow(src.serving);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(serving, &cas)?));
    let shared = Arc::new(Shared {
        auth: auth::Auth::new(src.client, cfg.node_name.clone()),
        views: src.views,
        pod_logs_dir: cfg.pod_logs_dir,
        root_dir: cfg.root_dir,
        node_name: cfg.node_name.clone(),
        cri: src.cri,
        cpu: stats::CpuSampler::default(),
    });
    let app = router(shared);
    let addr = cfg.addr;
    tokio::spawn(async move {
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::error!(%addr, err = %e, "binding the kubelet API; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(BIND_RETRY) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        };
        tracing::info!(%addr, "serving the kubelet API");
        accept_loop(listener, acceptor, cas, app, shutdown).await;
    });
    Ok(())
}

fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/pods", get(pods))
        .route("/pods/", get(pods))
        .route("/runningpods/", get(running_pods))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/stats/summary", get(stats_summary))
        .route("/metrics/resource", get(metrics_resource))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    cas: tls::ClientCas,
    app: axum::Router,
    shutdown: CancellationToken,
) {
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(err = %e, "accepting a kubelet API connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let acceptor = acceptor.clone();
        let cas = cas.clone();
        let app = app.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, err = %e, "TLS handshake");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "TLS handshake timed out");
                    return;
                }
            };
            let peer = Peer(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| cas.identify(chain)),
            );
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    app.clone().oneshot(req)
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(%remote, err = %e, "kubelet API connection");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn text(status: StatusCode, msg: impl Into<String>) -> Response {
    let mut body = msg.into();
    body.push('\n');
    (status, body).into_response()
}

fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Authentication then authorization of every request.
async fn guard(State(s): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let cert = req.extensions().get::<Peer>().and_then(|p| p.0.clone());
    let user = match (cert, bearer(req.headers())) {
        (Some(c), _) => auth::User {
            name: c.name,
            uid: String::new(),
            groups: c.groups,
            extra: Vec::new(),
        },
        (None, Some(token)) => match s.auth.authenticate_token(token).await {
            Ok(Some(u)) => u,
            Ok(None) => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
            Err(e) => {
                tracing::warn!(err = %e, "authenticating a kubelet API request");
                return text(StatusCode::UNAUTHORIZED, "Unauthorized");
            }
        },
        (None, None) => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
    };
    let attrs = auth::attributes(req.method(), req.uri().path());
    match s.auth.authorize(&user, &attrs).await {
        Ok(true) => next.run(req).await,
        Ok(false) => {
            let msg = auth::forbidden_message(&user.name, &attrs);
            tracing::debug!(user = %user.name, path = %req.uri().path(), "kubelet API request forbidden");
            text(StatusCode::FORBIDDEN, msg)
        }
        Err(e) => {
            tracing::warn!(err = %e, "authorizing a kubelet API request");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "Authorization error (user={}, verb={}, resource=nodes, subresource={})",
                    user.name, attrs.verb, attrs.subresource
                ),
            )
        }
    }
}

fn pod_list(items: Vec<serde_json::Value>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    }))
}

async fn pods(State(s): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let items = s
        .views
        .borrow()
        .values()
        .filter_map(|p| serde_json::to_value(p).ok())
        .collect();
    pod_list(items)
}

/// Pods with running containers, as the runtime has them: names and images only.
async fn running_pods(State(s): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let items = s
        .views
        .borrow()
        .values()
        .filter_map(|p| {
            let running: Vec<_> = p
                .status
                .as_ref()?
                .container_statuses
                .iter()
                .flatten()
                .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
                .map(|c| serde_json::json!({"name": c.name, "image": c.image}))
                .collect();
            (!running.is_empty()).then(|| {
                serde_json::json!({
                    "metadata": {
                        "name": p.metadata.name,
                        "namespace": p.metadata.namespace,
                        "uid": p.metadata.uid,
                    },
                    "spec": {"containers": running},
                    "status": {},
                })
            })
        })
        .collect();
    pod_list(items)
}

/// The node's and its pods' stats now; whether the runtime failed to answer.
async fn summary(s: &Shared) -> (stats::Summary, bool) {
    let now = stats::now_ns();
    // The filesystem of the kubelet's data (--root-dir), as upstream's nodefs.
    let mut node = stats::node_stats(&s.node_name, &s.root_dir, &s.cpu, now);
    let (pods, failed) = match stats::from_runtime(&s.cri).await {
        Ok((sandboxes, containers, images)) => {
            node.runtime = Some(stats::RuntimeStats {
                image_fs: images.as_ref().and_then(|i| stats::image_fs(i, now)),
            });
            let views = s.views.borrow().clone();
            (
                stats::pod_stats(&sandboxes, &containers, &views, now),
                false,
            )
        }
        Err(e) => {
            tracing::warn!(err = %e, "reading the runtime's stats");
            (Vec::new(), true)
        }
    };
    (stats::Summary { node, pods }, failed)
}

async fn stats_summary(State(s): State<Arc<Shared>>) -> Response {
    let (summary, failed) = summary(&s).await;
    if failed {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to get the runtime's pod and container stats",
        );
    }
    Json(summary).into_response()
}

async fn metrics_resource(State(s): State<Arc<Shared>>) -> Response {
    let (summary, failed) = summary(&s).await;
    let body = stats::resource_metrics(&summary, failed, stats::now_ns());
    Response::builder()
        .header(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )
        .body(Body::from(body))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

fn find_pod(views: &PodViews, namespace: &str, name: &str) -> Option<Pod> {
    views
        .values()
        .find(|p| {
            p.metadata.namespace.as_deref().unwrap_or("default") == namespace
                && p.metadata.name.as_deref() == Some(name)
        })
        .cloned()
}

fn has_container(pod: &Pod, name: &str) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| c.name == name)
            || s.init_containers.iter().flatten().any(|c| c.name == name)
            || s.ephemeral_containers
                .iter()
                .flatten()
                .any(|c| c.name == name)
    })
}

/// Whether a container of a pod runs, as the engine last saw it.
struct Running {
    views: watch::Receiver<PodViews>,
    target: logs::Target,
}

impl logs::Liveness for Running {
    fn running(&self) -> bool {
        let views = self.views.borrow();
        let Some(pod) = find_pod(&views, &self.target.namespace, &self.target.pod) else {
            return false;
        };
        pod.status.iter().any(|st| {
            st.container_statuses
                .iter()
                .flatten()
                .chain(st.init_container_statuses.iter().flatten())
                .chain(st.ephemeral_container_statuses.iter().flatten())
                .any(|c| {
                    c.name == self.target.container
                        && c.state.as_ref().is_some_and(|s| s.running.is_some())
                })
        })
    }
}

struct NotRunning;

impl logs::Liveness for NotRunning {
    fn running(&self) -> bool {
        false
    }
}

async fn container_logs(
    State(s): State<Arc<Shared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let target = match logs::Target::parse(&namespace, &pod, &container) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let query: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let opts = match logs::Options::from_query(&query) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let Some(found) = find_pod(&s.views.borrow(), &target.namespace, &target.pod) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {}/{} not found", target.namespace, target.pod),
        );
    };
    if !has_container(&found, &target.container) {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "container {:?} not found in pod {}/{}",
                target.container, target.namespace, target.pod
            ),
        );
    }
    let uid = found.metadata.uid.unwrap_or_default();
    let dir = s
        .pod_logs_dir
        .join(format!("{}_{}_{}", target.namespace, target.pod, uid))
        .join(&target.container);
    let mut instances = logs::instances(&dir);
    let path = if opts.previous {
        instances.pop();
        match instances.pop() {
            Some((_, p)) => p,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container {:?} in pod {:?} not found",
                        target.container, target.pod
                    ),
                );
            }
        }
    } else {
        match instances.pop() {
            Some((_, p)) => p,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "container {:?} in pod {:?} is waiting to start",
                        target.container, target.pod
                    ),
                );
            }
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let previous = opts.previous;
    let live = Running {
        views: s.views.clone(),
        target,
    };
    tokio::spawn(async move {
        let shown = path.display().to_string();
        let r = if previous {
            logs::stream(path, opts, NotRunning, tx).await
        } else {
            logs::stream(path, opts, live, tx).await
        };
        if let Err(e) = r {
            tracing::debug!(path = %shown, err = %e, "reading a container log");
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Response::builder()
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (v, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("Bearer ", None),
            ("Basic abc", None),
            ("abc", None),
        ] {
            h.insert(
                http::header::AUTHORIZATION,
                v.parse().expect("header value"),
            );
            assert_eq!(bearer(&h), want, "{v:?}");
        }
    }
}
