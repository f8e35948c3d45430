//! The read-only endpoint: `/pods` (a PodList of every pod this node runs, with its
//! status, like the upstream kubelet's) and `/healthz`.

use axum::Json;
use axum::extract::State;
use axum::routing::get;
use tokio::sync::watch;

use pods::engine::PodViews;

pub async fn serve(
    listener: tokio::net::TcpListener,
    views: watch::Receiver<PodViews>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let app = axum::Router::new()
        .route("/pods", get(pods))
        .route("/pods/", get(pods))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(views);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(err = %e, "read-only endpoint stopped");
    }
}

async fn pods(State(views): State<watch::Receiver<PodViews>>) -> Json<serde_json::Value> {
    let items: Vec<_> = views.borrow().values().cloned().collect();
    Json(serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": items,
    }))
}
