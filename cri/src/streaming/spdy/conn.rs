//! A server-side SPDY connection: a reader task that answers every SYN_STREAM with a
//! SYN_REPLY (or a reset once we stop accepting), answers PINGs and routes DATA to the
//! stream it belongs to; a writer task that owns the socket's write half. Streams reach
//! the caller through [`Connection::accept`]; data is written through a [`Writer`].
//!
//! Back-pressure is by bounded queues: a stream whose consumer stops reading stalls the
//! reader, as in spdystream.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Decoder, Encoder, Frame, Headers, MAX_PAYLOAD, rst};

/// DATA chunks queued per stream before the reader waits for the consumer.
const STREAM_QUEUE: usize = 64;
/// Frames queued for the writer.
const WRITE_QUEUE: usize = 64;
/// After our GOAWAY, how long the peer gets to close its side.
const LINGER: Duration = Duration::from_secs(5);

/// The connection is gone (closed by us or the peer, or broken).
#[derive(Debug, thiserror::Error)]
#[error("spdy connection closed")]
pub struct Closed;

/// A stream the peer opened.
#[derive(Debug)]
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// The peer's data, closed at its FIN, a reset, or the end of the connection.
    pub data: mpsc::Receiver<Bytes>,
}

enum Command {
    Frame(Frame),
    /// Send GOAWAY, flush and shut the write half down.
    Close(oneshot::Sender<()>),
}

/// Writes frames on the connection; cheap to clone.
#[derive(Clone, Debug)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
}

impl Writer {
    async fn frame(&self, frame: Frame) -> Result<(), Closed> {
        self.tx
            .send(Command::Frame(frame))
            .await
            .map_err(|_| Closed)
    }

    /// Sends `data` on a stream, in frames of at most the largest payload.
    pub async fn send(&self, stream_id: u32, mut data: Bytes) -> Result<(), Closed> {
        while !data.is_empty() {
            let chunk = data.split_to(data.len().min(MAX_PAYLOAD));
            self.frame(Frame::Data {
                stream_id,
                fin: false,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes a stream from our side (an empty DATA frame with FIN).
    pub async fn finish(&self, stream_id: u32) -> Result<(), Closed> {
        self.frame(Frame::Data {
            stream_id,
            fin: true,
            data: Bytes::new(),
        })
        .await
    }

    pub async fn reset(&self, stream_id: u32, status: u32) -> Result<(), Closed> {
        self.frame(Frame::RstStream { stream_id, status }).await
    }
}

/// One upgraded connection.
pub struct Connection {
    incoming: mpsc::Receiver<Stream>,
    writer: Writer,
    reader: JoinHandle<()>,
    write_task: JoinHandle<()>,
    /// Cancelled when the reader ends: the peer closed or broke the connection.
    peer_gone: CancellationToken,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Starts the reader and writer tasks on an upgraded socket.
    pub fn start<IO>(io: IO) -> Result<Self, super::Error>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer { tx };
        let write_task = tokio::spawn(write_loop(FramedWrite::new(write, Encoder::new()?), rx));
        let (incoming_tx, incoming) = mpsc::channel(16);
        let peer_gone = CancellationToken::new();
        let reader = tokio::spawn(read_loop(
            FramedRead::new(read, Decoder::new()),
            writer.clone(),
            incoming_tx,
            peer_gone.clone().drop_guard(),
        ));
        Ok(Self {
            incoming,
            writer,
            reader,
            write_task,
            peer_gone,
        })
    }

    /// Cancelled once nothing more can come from the peer: it closed the connection,
    /// the socket broke, or we closed it.
    pub fn peer_gone(&self) -> CancellationToken {
        self.peer_gone.clone()
    }

    /// The next stream the peer opens; `None` once the connection is gone.
    pub async fn accept(&mut self) -> Option<Stream> {
        self.incoming.recv().await
    }

    /// Refuses streams from now on (they are reset as they arrive).
    pub fn stop_accepting(&mut self) {
        self.incoming.close();
    }

    pub fn writer(&self) -> Writer {
        self.writer.clone()
    }

    /// Sends GOAWAY, shuts our side down after everything queued was written, and gives
    /// the peer a moment to close its side before the socket is dropped (closing with
    /// unread input would reset the connection and could lose what we sent).
    pub async fn close(mut self) {
        self.incoming.close();
        let (ack, done) = oneshot::channel();
        if self.writer.tx.send(Command::Close(ack)).await.is_ok() {
            let _ = tokio::time::timeout(LINGER, done).await;
        }
        if tokio::time::timeout(LINGER, &mut self.reader)
            .await
            .is_err()
        {
            self.reader.abort();
        }
        self.write_task.abort();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
        self.write_task.abort();
    }
}

async fn write_loop<W>(mut sink: FramedWrite<W, Encoder>, mut rx: mpsc::Receiver<Command>)
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let mut last_stream = 0u32;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            Command::Frame(frame) => {
                if let Frame::SynReply { stream_id, .. } = &frame {
                    last_stream = last_stream.max(*stream_id);
                }
                // Batch what is queued into one write.
                if let Err(e) = sink.feed(frame).await {
                    tracing::debug!(err = %e, "spdy write failed");
                    return;
                }
                if rx.is_empty() && sink.flush().await.is_err() {
                    return;
                }
            }
            Command::Close(ack) => {
                let _ = sink
                    .send(Frame::GoAway {
                        last_good_stream_id: last_stream,
                        status: 0,
                    })
                    .await;
                let _ = futures::SinkExt::<Frame>::close(&mut sink).await;
                let _ = ack.send(());
                return;
            }
        }
    }
}

async fn read_loop<R>(
    mut frames: FramedRead<R, Decoder>,
    writer: Writer,
    incoming: mpsc::Sender<Stream>,
    _peer_gone: DropGuard,
) where
    R: AsyncRead + Send + Unpin + 'static,
{
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_id = 0u32;
    loop {
        let frame = match frames.next().await {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                tracing::debug!(err = %e, "spdy read failed");
                break;
            }
            None => break,
        };
        match frame {
            Frame::SynStream {
                stream_id,
                fin,
                headers,
                ..
            } => {
                // Client streams are odd and increasing.
                if stream_id % 2 == 0 || stream_id <= last_id {
                    let _ = writer.reset(stream_id, rst::PROTOCOL_ERROR).await;
                    continue;
                }
                last_id = stream_id;
                if incoming.is_closed() {
                    let _ = writer.reset(stream_id, rst::REFUSED_STREAM).await;
                    continue;
                }
                // The reply is queued before the stream is handed out, so it precedes
                // any data written on it.
                if writer
                    .frame(Frame::SynReply {
                        stream_id,
                        fin: false,
                        headers: Headers::new(),
                    })
                    .await
                    .is_err()
                {
                    break;
                }
                let (tx, rx) = mpsc::channel(STREAM_QUEUE);
                if !fin {
                    streams.insert(stream_id, tx);
                }
                let stream = Stream {
                    id: stream_id,
                    headers,
                    data: rx,
                };
                if incoming.send(stream).await.is_err() {
                    streams.remove(&stream_id);
                    let _ = writer.reset(stream_id, rst::REFUSED_STREAM).await;
                }
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if let Some(tx) = streams.get(&stream_id)
                    && !data.is_empty()
                    && tx.send(data).await.is_err()
                {
                    // The consumer is gone; later data is dropped as well.
                    streams.remove(&stream_id);
                }
                if fin {
                    streams.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                streams.remove(&stream_id);
            }
            // Odd ids are the client's pings: echo them. Even ones would answer ours.
            Frame::Ping { id } if id % 2 == 1 => {
                if writer.frame(Frame::Ping { id }).await.is_err() {
                    break;
                }
            }
            // GOAWAY: the peer opens no more streams; existing ones carry on.
            Frame::GoAway { .. }
            | Frame::Ping { .. }
            | Frame::SynReply { .. }
            | Frame::Headers { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }
    // Dropping the senders ends every stream's data.
    drop(streams);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A client end: raw frames over a duplex pipe.
    struct Client {
        io: tokio::io::DuplexStream,
        enc: Encoder,
        dec: Decoder,
        buf: BytesMut,
    }

    impl Client {
        async fn send(&mut self, f: Frame) {
            let mut out = BytesMut::new();
            self.enc.encode(&f, &mut out).expect("test fixture");
            self.io.write_all(&out).await.expect("test fixture");
        }
        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.dec.decode(&mut self.buf).expect("test fixture") {
                    return Some(f);
                }
                let mut chunk = [0u8; 4096];
                let n = self.io.read(&mut chunk).await.expect("test fixture");
                if n == 0 {
                    return None;
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
        }
    }

    fn pair() -> (Connection, Client) {
        let (a, b) = tokio::io::duplex(1 << 16);
        (
            Connection::start(a).expect("test fixture"),
            Client {
                io: b,
                enc: Encoder::new().expect("test fixture"),
                dec: Decoder::new(),
                buf: BytesMut::new(),
            },
        )
    }

    fn syn(id: u32, kind: &str) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: Headers::new().with("streamtype", kind),
        }
    }

    #[tokio::test]
    async fn streams_are_replied_routed_pinged_and_closed() {
        let (mut conn, mut client) = pair();
        client.send(syn(1, "stdin")).await;
        client.send(syn(3, "stdout")).await;
        assert!(matches!(
            client.recv().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        assert!(matches!(
            client.recv().await,
            Some(Frame::SynReply { stream_id: 3, .. })
        ));
        let mut stdin = conn.accept().await.expect("test fixture");
        assert_eq!(stdin.headers.get("streamtype"), Some("stdin"));
        let stdout = conn.accept().await.expect("test fixture");
        assert_eq!(stdout.id, 3);

        client
            .send(Frame::Data {
                stream_id: 1,
                fin: true,
                data: Bytes::from_static(b"in"),
            })
            .await;
        assert_eq!(stdin.data.recv().await.as_deref(), Some(&b"in"[..]));
        assert_eq!(stdin.data.recv().await, None, "FIN ends the stream");

        client.send(Frame::Ping { id: 7 }).await;
        assert_eq!(client.recv().await, Some(Frame::Ping { id: 7 }));

        let w = conn.writer();
        w.send(3, Bytes::from_static(b"out"))
            .await
            .expect("test fixture");
        w.finish(3).await.expect("test fixture");
        assert_eq!(
            client.recv().await,
            Some(Frame::Data {
                stream_id: 3,
                fin: false,
                data: Bytes::from_static(b"out")
            })
        );
        assert!(matches!(
            client.recv().await,
            Some(Frame::Data {
                stream_id: 3,
                fin: true,
                ..
            })
        ));

        // Streams after stop_accepting are refused.
        conn.stop_accepting();
        client.send(syn(5, "resize")).await;
        assert_eq!(
            client.recv().await,
            Some(Frame::RstStream {
                stream_id: 5,
                status: rst::REFUSED_STREAM
            })
        );
        // An even (server-side) id is a protocol error.
        client.send(syn(6, "x")).await;
        assert!(matches!(
            client.recv().await,
            Some(Frame::RstStream { stream_id: 6, .. })
        ));

        let closing = tokio::spawn(conn.close());
        assert!(matches!(
            client.recv().await,
            Some(Frame::GoAway {
                last_good_stream_id: 3,
                ..
            })
        ));
        assert_eq!(client.recv().await, None, "write side shut down");
        drop(client);
        closing.await.expect("test fixture");
    }

    #[tokio::test]
    async fn peer_going_away_ends_all_streams() {
        let (mut conn, mut client) = pair();
        client.send(syn(1, "data")).await;
        let mut s = conn.accept().await.expect("test fixture");
        drop(client);
        assert_eq!(s.data.recv().await, None);
        assert!(conn.accept().await.is_none());
    }
}
