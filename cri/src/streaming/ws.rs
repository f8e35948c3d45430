//! Plumbing shared by WebSocket sessions: one writer task owning the sink, messages
//! queued to it through a channel, and a normal close when the queue's last sender
//! goes.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _, stream::SplitStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::protocol;

/// After our close, how long the client gets to answer it.
pub(crate) const LINGER: Duration = Duration::from_secs(5);

/// Messages queued for the writer before senders wait.
const QUEUE: usize = 32;

/// Splits `ws`: returns the message queue, the writer task and the incoming half. The
/// writer sends a normal close once every sender is dropped.
pub(crate) fn split<S>(
    ws: WebSocketStream<S>,
) -> (
    mpsc::Sender<Message>,
    JoinHandle<()>,
    SplitStream<WebSocketStream<S>>,
)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(msg) = rx.recv().await {
            if let Err(e) = sink.send(msg).await {
                tracing::debug!(err = %e, "websocket write failed");
                return;
            }
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.flush().await;
    });
    (tx, writer, source)
}

/// A binary message on a channel.
pub(crate) fn channel_message(channel: u8, data: &[u8]) -> Message {
    Message::Binary(protocol::frame(channel, data))
}

/// Forwards a stream's output to the socket as messages on `channel`.
pub(crate) async fn forward(
    mut rx: mpsc::Receiver<Bytes>,
    channel: u8,
    out: mpsc::Sender<Message>,
) {
    while let Some(data) = rx.recv().await {
        if out.send(channel_message(channel, &data)).await.is_err() {
            return;
        }
    }
}

/// Waits for the writer to finish, then gives the reader (which ends at the client's
/// close) a bounded moment before dropping the socket.
pub(crate) async fn finish(writer: JoinHandle<()>, mut reader: JoinHandle<()>) {
    let _ = writer.await;
    if tokio::time::timeout(LINGER, &mut reader).await.is_err() {
        reader.abort();
    }
}
