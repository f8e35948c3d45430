//! Exec and attach sessions: the client's channels (WebSocket) or streams (SPDY) wired
//! to a [`StreamIo`] for the backend, and the outcome reported on the error channel.
//!
//! An exec ends with its process. An attach ends when the container exits, or when
//! the client goes away (its connection ends): attaching never outlives the client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::protocol::{self, Incoming, ResizeDecoder, Version, header, stream_type};
use super::spdy::conn::{Connection, Stream, Writer};
use super::spdy::rst;
use super::status::Outcome;
use super::{Backend, StreamIo, TermSize, ws};

/// How long a SPDY client has to open all its streams (the kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunks queued per stream.
const QUEUE: usize = 16;

/// What the session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Exec {
        container_id: String,
        cmd: Vec<String>,
    },
    Attach {
        container_id: String,
    },
}

/// Which streams the CRI request asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// Runs the target; `client_gone` is cancelled when the client's connection ended.
async fn run(
    backend: &dyn Backend,
    target: &Target,
    io: StreamIo,
    client_gone: CancellationToken,
) -> Outcome {
    match target {
        Target::Exec { container_id, cmd } => match backend.exec(container_id, cmd, io).await {
            Ok(code) => Outcome::Exited {
                code,
                cmd: cmd.clone(),
            },
            Err(e) => Outcome::Failed(format!("error executing command in container: {e}")),
        },
        Target::Attach { container_id } => {
            // Dropping the attach detaches from the container, which keeps running.
            tokio::select! {
                r = backend.attach(container_id, io) => match r {
                    Ok(()) => Outcome::Exited {
                        code: 0,
                        cmd: Vec::new(),
                    },
                    Err(e) => Outcome::Failed(format!("error attaching to container: {e}")),
                },
                () = client_gone.cancelled() => {
                    tracing::debug!("the client went away: detached");
                    Outcome::Failed("the client went away".into())
                }
            }
        }
    }
}

fn status_payload(version: Version, outcome: &Outcome) -> Option<Vec<u8>> {
    if version.json_status() {
        Some(outcome.to_json())
    } else {
        outcome.to_text().map(String::into_bytes)
    }
}

/// Serves one exec or attach over WebSocket.
#[tracing::instrument(skip_all, fields(protocol = version.name(), ?target))]
pub async fn serve_websocket<S>(
    ws: WebSocketStream<S>,
    version: Version,
    opts: Options,
    target: Target,
    backend: Arc<dyn Backend>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (out, writer, mut source) = ws::split(ws);
    let mut io = StreamIo {
        tty: opts.tty,
        ..StreamIo::default()
    };
    let mut stdin_tx = None;
    if opts.stdin {
        let (tx, rx) = mpsc::channel(QUEUE);
        stdin_tx = Some(tx);
        io.stdin = Some(rx);
    }
    let mut resize_tx = None;
    if opts.tty {
        let (tx, rx) = mpsc::channel(QUEUE);
        resize_tx = Some(tx);
        io.resize = Some(rx);
    }
    let mut pumps = Vec::new();
    for (wanted, channel, slot) in [
        (opts.stdout, protocol::STDOUT, &mut io.stdout),
        (opts.stderr, protocol::STDERR, &mut io.stderr),
    ] {
        if wanted {
            let (tx, rx) = mpsc::channel(QUEUE);
            *slot = Some(tx);
            pumps.push(tokio::spawn(ws::forward(rx, channel, out.clone())));
        }
    }
    let client_gone = CancellationToken::new();
    let gone_on_exit = client_gone.clone().drop_guard();
    let reader = tokio::spawn(async move {
        let _gone_on_exit = gone_on_exit;
        let mut sizes = ResizeDecoder::default();
        while let Some(msg) = source.next().await {
            let data = match msg {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match protocol::parse(&data, version) {
                Incoming::Data {
                    channel: protocol::STDIN,
                    data,
                } => {
                    if let Some(tx) = &stdin_tx
                        && tx.send(Bytes::copy_from_slice(data)).await.is_err()
                    {
                        stdin_tx = None;
                    }
                }
                Incoming::Data {
                    channel: protocol::RESIZE,
                    data,
                } => {
                    for size in sizes.push(data) {
                        if let Some(tx) = &resize_tx {
                            let _ = tx.send(size).await;
                        }
                    }
                }
                Incoming::Close {
                    channel: protocol::STDIN,
                } => stdin_tx = None,
                Incoming::Data { .. } | Incoming::Close { .. } | Incoming::Empty => {}
            }
        }
    });
    let outcome = run(backend.as_ref(), &target, io, client_gone).await;
    for p in pumps {
        let _ = p.await;
    }
    tracing::debug!(?outcome, "remote command finished");
    if let Some(payload) = status_payload(version, &outcome) {
        let _ = out
            .send(ws::channel_message(protocol::ERROR, &payload))
            .await;
    }
    drop(out);
    ws::finish(writer, reader).await;
}

/// The streams a SPDY client opened, by type.
#[derive(Debug, Default)]
struct Streams {
    error: Option<Stream>,
    stdin: Option<Stream>,
    stdout: Option<Stream>,
    stderr: Option<Stream>,
    resize: Option<Stream>,
}

/// Serves one exec or attach over SPDY.
#[tracing::instrument(skip_all, fields(protocol = version.name(), ?target))]
pub async fn serve_spdy(
    mut conn: Connection,
    version: Version,
    opts: Options,
    target: Target,
    backend: Arc<dyn Backend>,
) {
    let writer = conn.writer();
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && version.resize());
    let mut streams = Streams::default();
    let mut received = 0;
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while received < expected {
        let stream = tokio::select! {
            s = conn.accept() => match s {
                Some(s) => s,
                None => return,
            },
            _ = &mut deadline => {
                tracing::warn!(received, expected, "client did not open its streams in time");
                conn.close().await;
                return;
            }
        };
        let slot = match stream.headers.get(header::STREAM_TYPE) {
            Some(stream_type::ERROR) => &mut streams.error,
            Some(stream_type::STDIN) => &mut streams.stdin,
            Some(stream_type::STDOUT) => &mut streams.stdout,
            Some(stream_type::STDERR) => &mut streams.stderr,
            Some(stream_type::RESIZE) => &mut streams.resize,
            other => {
                tracing::debug!(stream_type = ?other, "refusing an unexpected stream");
                let _ = writer.reset(stream.id, rst::REFUSED_STREAM).await;
                continue;
            }
        };
        *slot = Some(stream);
        received += 1;
    }
    conn.stop_accepting();

    let mut io = StreamIo {
        tty: opts.tty,
        ..StreamIo::default()
    };
    io.stdin = streams.stdin.take().map(|s| s.data);
    let resize = streams.resize.take().map(|mut s| {
        let (tx, rx) = mpsc::channel::<TermSize>(QUEUE);
        io.resize = Some(rx);
        tokio::spawn(async move {
            let mut sizes = ResizeDecoder::default();
            while let Some(data) = s.data.recv().await {
                for size in sizes.push(&data) {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
        })
    });
    let mut pumps = Vec::new();
    for (stream, slot) in [
        (streams.stdout.take(), &mut io.stdout),
        (streams.stderr.take(), &mut io.stderr),
    ] {
        if let Some(s) = stream {
            let (tx, rx) = mpsc::channel(QUEUE);
            *slot = Some(tx);
            pumps.push(tokio::spawn(forward(rx, writer.clone(), s.id)));
        }
    }
    let outcome = run(backend.as_ref(), &target, io, conn.peer_gone()).await;
    for p in pumps {
        let _ = p.await;
    }
    if let Some(t) = resize {
        t.abort();
    }
    tracing::debug!(?outcome, "remote command finished");
    if let Some(error) = streams.error.take() {
        if let Some(payload) = status_payload(version, &outcome) {
            let _ = writer.send(error.id, Bytes::from(payload)).await;
        }
        let _ = writer.finish(error.id).await;
    }
    drop(writer);
    conn.close().await;
}

/// Copies a channel to a SPDY stream, then half-closes the stream.
async fn forward(mut rx: mpsc::Receiver<Bytes>, writer: Writer, stream_id: u32) {
    while let Some(data) = rx.recv().await {
        if writer.send(stream_id, data).await.is_err() {
            return;
        }
    }
    let _ = writer.finish(stream_id).await;
}
