//! Port-forward sessions: each forwarded connection is a pair of client streams (data,
//! error) joined to a TCP connection on the pod's loopback.
//!
//! Ending follows containerd: when either direction ends, the other gets a moment to
//! finish. When the client ends first, the pod side gets a half-close and all the time
//! it needs to answer (the client may still read); when the pod side ends first, the
//! client's last bytes get `GRACE` to arrive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::protocol::{self, Incoming, header, stream_type};
use super::spdy::conn::{Connection, Stream, Writer};
use super::spdy::rst;
use super::{Backend, Duplex, ws};

/// How long a SPDY client has to open the second stream of a pair.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// After the pod side closed, how long the client's last data may still flow in.
const GRACE: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 32 << 10;

/// Joins `target` with the client: `from_client` until it ends (then the target gets a
/// half-close), and the target's bytes through `to_client` until it ends.
async fn join<F, Fut>(target: Box<dyn Duplex>, mut from_client: mpsc::Receiver<Bytes>, to_client: F)
where
    F: Fn(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let (mut r, mut w) = tokio::io::split(target);
    let up = async move {
        while let Some(data) = from_client.recv().await {
            if w.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !to_client(Bytes::copy_from_slice(&buf[..n])).await {
                        break;
                    }
                }
            }
        }
    };
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut up => down.await,
        () = &mut down => {
            let _ = tokio::time::timeout(GRACE, up).await;
        }
    }
}

fn failure(port: u16, sandbox_id: &str, e: &crate::runtime::Error) -> String {
    format!("error forwarding port {port} to pod {sandbox_id}: {e}")
}

/// A data and an error stream of one forwarded connection, as they arrive.
#[derive(Debug)]
struct Pair {
    port: u16,
    since: Instant,
    data: Option<Stream>,
    error: Option<Stream>,
}

/// What a port-forward stream's headers say.
fn classify(stream: &Stream) -> Result<(bool, u16, String), String> {
    let h = &stream.headers;
    let port = h
        .get(header::PORT)
        .ok_or("port header is required")?
        .parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or("port header is not a port")?;
    let is_data = match h.get(header::STREAM_TYPE) {
        Some(stream_type::DATA) => true,
        Some(stream_type::ERROR) => false,
        _ => return Err("streamType header must be data or error".into()),
    };
    // Old clients send no request id; their streams come in (error, data) order, two
    // ids apart, which gives a stand-in id as the kubelet computes it.
    let request = match h.get(header::REQUEST_ID) {
        Some(id) if !id.is_empty() => id.to_string(),
        _ if is_data => stream.id.saturating_sub(2).to_string(),
        _ => stream.id.to_string(),
    };
    Ok((is_data, port, request))
}

/// Serves port-forward over SPDY until the client closes the connection.
#[tracing::instrument(skip_all, fields(sandbox.id = %sandbox_id))]
pub async fn serve_spdy(mut conn: Connection, sandbox_id: String, backend: Arc<dyn Backend>) {
    let writer = conn.writer();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut running = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            s = conn.accept() => {
                let Some(stream) = s else { break };
                let (is_data, port, request) = match classify(&stream) {
                    Ok(c) => c,
                    Err(msg) => {
                        tracing::debug!(%msg, "refusing a port-forward stream");
                        let _ = writer.reset(stream.id, rst::PROTOCOL_ERROR).await;
                        continue;
                    }
                };
                let pair = pairs.entry(request.clone()).or_insert_with(|| Pair {
                    port,
                    since: Instant::now(),
                    data: None,
                    error: None,
                });
                let slot = if is_data { &mut pair.data } else { &mut pair.error };
                if slot.is_some() {
                    tracing::debug!(%request, "duplicate port-forward stream");
                    let _ = writer.reset(stream.id, rst::PROTOCOL_ERROR).await;
                    continue;
                }
                *slot = Some(stream);
                if pair.data.is_none() || pair.error.is_none() {
                    continue;
                }
                if let Some(Pair { port, data: Some(data), error: Some(error), .. }) = pairs.remove(&request) {
                    running.spawn(forward_spdy(backend.clone(), sandbox_id.clone(), port, data, error, writer.clone()));
                }
            }
            _ = tick.tick() => {
                let expired: Vec<String> = pairs
                    .iter()
                    .filter(|(_, p)| p.since.elapsed() > STREAM_CREATION_TIMEOUT)
                    .map(|(k, _)| k.clone())
                    .collect();
                for request in expired {
                    if let Some(p) = pairs.remove(&request)
                        && let Some(error) = p.error
                    {
                        let msg = format!("timed out waiting for the streams of request {request}");
                        let _ = writer.send(error.id, Bytes::from(msg)).await;
                        let _ = writer.finish(error.id).await;
                    }
                }
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
        }
    }
    // The client is gone: what still runs ends as its streams do.
    drop(writer);
    while running.join_next().await.is_some() {}
    conn.close().await;
}

async fn forward_spdy(
    backend: Arc<dyn Backend>,
    sandbox_id: String,
    port: u16,
    data: Stream,
    error: Stream,
    writer: Writer,
) {
    match backend.port_forward(&sandbox_id, port).await {
        Ok(target) => {
            let w = writer.clone();
            let id = data.id;
            join(target, data.data, move |b| {
                let w = w.clone();
                async move { w.send(id, b).await.is_ok() }
            })
            .await;
        }
        Err(e) => {
            let msg = failure(port, &sandbox_id, &e);
            tracing::debug!(%msg, "port-forward failed");
            let _ = writer.send(error.id, Bytes::from(msg)).await;
        }
    }
    let _ = writer.finish(data.id).await;
    let _ = writer.finish(error.id).await;
}

/// Serves port-forward of `ports` over WebSocket: channel `2i` carries data of
/// `ports[i]`, `2i+1` its errors, and each starts with the port (little-endian).
#[tracing::instrument(skip_all, fields(sandbox.id = %sandbox_id, ?ports))]
pub async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    version: protocol::Version,
    ports: Vec<u16>,
    sandbox_id: String,
    backend: Arc<dyn Backend>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (out, writer, mut source) = ws::split(ws);
    let mut inputs = Vec::with_capacity(ports.len());
    let mut running = JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, error_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, error_ch] {
            let _ = out.send(ws::channel_message(ch, &port.to_le_bytes())).await;
        }
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        inputs.push(Some(tx));
        let (out, backend, sandbox_id) = (out.clone(), backend.clone(), sandbox_id.clone());
        running.spawn(async move {
            match backend.port_forward(&sandbox_id, port).await {
                Ok(target) => {
                    join(target, rx, move |b| {
                        let out = out.clone();
                        async move { out.send(ws::channel_message(data_ch, &b)).await.is_ok() }
                    })
                    .await;
                }
                Err(e) => {
                    let msg = failure(port, &sandbox_id, &e);
                    tracing::debug!(%msg, "port-forward failed");
                    let _ = out
                        .send(ws::channel_message(error_ch, msg.as_bytes()))
                        .await;
                }
            }
        });
    }
    let reader = tokio::spawn(async move {
        while let Some(msg) = source.next().await {
            let data = match msg {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match protocol::parse(&data, version) {
                Incoming::Data { channel, data } if channel % 2 == 0 => {
                    let slot = inputs.get_mut(usize::from(channel / 2));
                    if let Some(slot) = slot
                        && let Some(tx) = slot
                        && tx.send(Bytes::copy_from_slice(data)).await.is_err()
                    {
                        *slot = None;
                    }
                }
                Incoming::Close { channel } if channel % 2 == 0 => {
                    if let Some(slot) = inputs.get_mut(usize::from(channel / 2)) {
                        *slot = None;
                    }
                }
                _ => {}
            }
        }
    });
    while running.join_next().await.is_some() {}
    drop(out);
    ws::finish(writer, reader).await;
}
