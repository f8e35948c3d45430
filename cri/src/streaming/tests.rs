//! The server over real sockets with a fake backend: routing, tokens, both transports,
//! status reporting and port-forward, without containers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

use super::spdy::{Decoder, Encoder, Frame, Headers};
use super::*;

/// What the fake was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Call {
    Exec {
        id: String,
        cmd: Vec<String>,
        tty: bool,
    },
    PortForward {
        sandbox: String,
        port: u16,
    },
    Attach {
        id: String,
        stdin: bool,
        tty: bool,
    },
}

/// Exec: `echo ARGS` writes them to stdout, `cat` copies stdin to stdout, `fail` writes
/// to stderr and exits 7, `size` reports resizes; unknown containers are not found.
/// Port-forward: port 80 answers `pong:` + what it read until EOF; others are refused.
/// Attach: container `c1` has stdin and no TTY; with stdin its output is its input,
/// without it says `attached` and runs until dropped (counted in `detached`).
#[derive(Default)]
struct Fake {
    calls: Mutex<Vec<Call>>,
    detached: Arc<AtomicUsize>,
}

/// Counts a drop: an attach the server gave up.
struct CountDrop(Arc<AtomicUsize>);

impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Fake {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("test fixture").clone()
    }
}

#[async_trait::async_trait]
impl Backend for Fake {
    fn check_container(&self, id: &str) -> runtime::Result<()> {
        if id == "c1" {
            Ok(())
        } else {
            Err(runtime::Error::NotFound {
                kind: "container",
                id: id.into(),
            })
        }
    }

    fn check_sandbox(&self, id: &str) -> runtime::Result<()> {
        if id == "p1" {
            Ok(())
        } else {
            Err(runtime::Error::FailedPrecondition(format!(
                "sandbox {id} is not ready"
            )))
        }
    }

    fn check_attach(&self, id: &str, _stdin: bool, tty: bool) -> runtime::Result<()> {
        self.check_container(id)?;
        if tty {
            return Err(runtime::Error::InvalidArgument(format!(
                "container {id} has no tty"
            )));
        }
        Ok(())
    }

    async fn exec(&self, id: &str, cmd: &[String], mut io: StreamIo) -> runtime::Result<i32> {
        self.calls.lock().expect("test fixture").push(Call::Exec {
            id: id.into(),
            cmd: cmd.to_vec(),
            tty: io.tty,
        });
        match cmd.first().map(String::as_str) {
            Some("echo") => {
                if let Some(out) = &io.stdout {
                    let _ = out
                        .send(Bytes::from(format!("{}\n", cmd[1..].join(" "))))
                        .await;
                }
                Ok(0)
            }
            Some("cat") => {
                let (Some(stdin), Some(out)) = (io.stdin.as_mut(), &io.stdout) else {
                    return Ok(2);
                };
                while let Some(b) = stdin.recv().await {
                    let _ = out.send(b).await;
                }
                Ok(0)
            }
            Some("size") => {
                let (Some(resize), Some(out)) = (io.resize.as_mut(), &io.stdout) else {
                    return Ok(2);
                };
                if let Some(s) = resize.recv().await {
                    let _ = out
                        .send(Bytes::from(format!("{} {}\n", s.height, s.width)))
                        .await;
                }
                Ok(0)
            }
            Some("fail") => {
                if let Some(err) = &io.stderr {
                    let _ = err.send(Bytes::from_static(b"failing\n")).await;
                }
                Ok(7)
            }
            _ => Err(runtime::Error::FailedPrecondition(
                "exec failed: no such file".into(),
            )),
        }
    }

    async fn attach(&self, id: &str, mut io: StreamIo) -> runtime::Result<()> {
        self.calls.lock().expect("test fixture").push(Call::Attach {
            id: id.into(),
            stdin: io.stdin.is_some(),
            tty: io.tty,
        });
        let Some(out) = io.stdout.take() else {
            return Ok(());
        };
        if let Some(stdin) = io.stdin.as_mut() {
            while let Some(b) = stdin.recv().await {
                let _ = out.send(b).await;
            }
            return Ok(());
        }
        let _count = CountDrop(self.detached.clone());
        let _ = out.send(Bytes::from_static(b"attached\n")).await;
        std::future::pending().await
    }

    async fn port_forward(&self, sandbox: &str, port: u16) -> runtime::Result<Box<dyn Duplex>> {
        self.calls
            .lock()
            .expect("test fixture")
            .push(Call::PortForward {
                sandbox: sandbox.into(),
                port,
            });
        if port != 80 {
            return Err(runtime::Error::FailedPrecondition(
                "connection refused".into(),
            ));
        }
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = theirs.read_to_end(&mut got).await;
            let mut reply = b"pong:".to_vec();
            reply.extend(got);
            let _ = theirs.write_all(&reply).await;
        });
        Ok(Box::new(ours))
    }
}

async fn server() -> (StreamingServer, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let addr = crate::config::DEFAULT_STREAMING_ADDR;
    let s = StreamingServer::start(addr, fake.clone())
        .await
        .expect("test fixture");
    (s, fake)
}

fn exec_req(cmd: &[&str], stdin: bool, tty: bool) -> v1::ExecRequest {
    v1::ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
        ..Default::default()
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn ws(url: &str, protocol: &str) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let rest = url.strip_prefix("http://").expect("test fixture");
    let host = rest.split('/').next().expect("test fixture");
    let tcp = TcpStream::connect(host).await.expect("test fixture");
    let mut req = format!("ws://{rest}")
        .into_client_request()
        .expect("test fixture");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        protocol.parse().expect("test fixture"),
    );
    tokio_tungstenite::client_async(req, tcp)
        .await
        .map(|(ws, _)| ws)
}

async fn send(ws: &mut Ws, channel: u8, data: &[u8]) {
    let mut m = vec![channel];
    m.extend_from_slice(data);
    ws.send(Message::Binary(m.into()))
        .await
        .expect("test fixture");
}

/// Everything per channel until the server closes.
async fn drain(ws: &mut Ws) -> HashMap<u8, Vec<u8>> {
    let mut out: HashMap<u8, Vec<u8>> = HashMap::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("session ended in time");
        match next {
            Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                out.entry(b[0]).or_default().extend_from_slice(&b[1..])
            }
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return out,
            Some(Ok(_)) => {}
        }
    }
}

fn json(raw: &[u8]) -> serde_json::Value {
    serde_json::from_slice(raw).expect("test fixture")
}

#[tokio::test]
async fn requests_are_validated_like_containerd() {
    let (s, _) = server().await;
    let bad = [
        v1::ExecRequest {
            container_id: String::new(),
            ..exec_req(&["echo"], false, false)
        },
        exec_req(&[], false, false),
        v1::ExecRequest {
            stderr: true,
            ..exec_req(&["sh"], true, true)
        },
        v1::ExecRequest {
            stdout: false,
            stderr: false,
            ..exec_req(&["sh"], false, false)
        },
    ];
    for req in bad {
        assert!(
            matches!(s.exec_url(req.clone()), Err(Error::InvalidArgument(_))),
            "{req:?}"
        );
    }
    let missing = v1::ExecRequest {
        container_id: "nope".into(),
        ..exec_req(&["echo"], false, false)
    };
    assert!(matches!(
        s.exec_url(missing),
        Err(Error::Backend(runtime::Error::NotFound { .. }))
    ));
    let attach = |container_id: &str, tty: bool| {
        s.attach_url(v1::AttachRequest {
            container_id: container_id.into(),
            stdout: true,
            tty,
            ..Default::default()
        })
    };
    assert!(
        attach("c1", false)
            .expect("test fixture")
            .starts_with(&format!("http://{}/attach/", s.addr()))
    );
    assert!(matches!(
        attach("c1", true),
        Err(Error::Backend(runtime::Error::InvalidArgument(_)))
    ));
    assert!(matches!(
        attach("nope", false),
        Err(Error::Backend(runtime::Error::NotFound { .. }))
    ));
    assert!(matches!(attach("", false), Err(Error::InvalidArgument(_))));
    let pf = |id: &str, port| {
        s.port_forward_url(v1::PortForwardRequest {
            pod_sandbox_id: id.into(),
            port: vec![port],
        })
    };
    assert!(matches!(pf("p1", 0), Err(Error::InvalidArgument(_))));
    assert!(matches!(pf("p2", 80), Err(Error::Backend(_))));
    let url = pf("p1", 80).expect("test fixture");
    assert!(
        url.starts_with(&format!("http://{}/portforward/", s.addr())),
        "{url}"
    );
}

#[tokio::test]
async fn websocket_exec_v5_stdout_stdin_close_and_status() {
    let (s, fake) = server().await;
    let url = s
        .exec_url(exec_req(&["echo", "hi"], false, false))
        .expect("test fixture");
    let mut w = ws(&url, "v5.channel.k8s.io").await.expect("test fixture");
    let got = drain(&mut w).await;
    assert_eq!(got[&1], b"hi\n");
    assert_eq!(
        json(&got[&3]),
        serde_json::json!({"metadata":{},"status":"Success"})
    );
    // Single use.
    assert!(ws(&url, "v5.channel.k8s.io").await.is_err());

    let url = s
        .exec_url(exec_req(&["cat"], true, false))
        .expect("test fixture");
    let mut w = ws(&url, "v5.channel.k8s.io").await.expect("test fixture");
    send(&mut w, 0, b"abc").await;
    w.send(Message::Binary(vec![255, 0].into()))
        .await
        .expect("test fixture");
    let got = drain(&mut w).await;
    assert_eq!(got[&1], b"abc");

    let url = s
        .exec_url(exec_req(&["fail"], false, false))
        .expect("test fixture");
    let mut w = ws(&url, "v4.channel.k8s.io").await.expect("test fixture");
    let got = drain(&mut w).await;
    assert_eq!(got[&2], b"failing\n");
    let st = json(&got[&3]);
    assert_eq!(st["reason"], "NonZeroExitCode");
    assert_eq!(st["details"]["causes"][0]["message"], "7");

    let url = s
        .exec_url(exec_req(&["size"], true, true))
        .expect("test fixture");
    let mut w = ws(&url, "v5.channel.k8s.io").await.expect("test fixture");
    send(&mut w, 4, br#"{"Width":80,"Height":24}"#).await;
    let got = drain(&mut w).await;
    assert_eq!(got[&1], b"24 80\n");

    assert_eq!(
        fake.calls()[0],
        Call::Exec {
            id: "c1".into(),
            cmd: vec!["echo".into(), "hi".into()],
            tty: false
        }
    );
}

#[tokio::test]
async fn websocket_v1_reports_errors_as_text_and_unknown_protocols_are_refused() {
    let (s, _) = server().await;
    let url = s
        .exec_url(exec_req(&["fail"], false, false))
        .expect("test fixture");
    let mut w = ws(&url, "channel.k8s.io").await.expect("test fixture");
    let got = drain(&mut w).await;
    let text = String::from_utf8_lossy(&got[&3]).into_owned();
    assert!(
        text.starts_with("command terminated with non-zero exit code"),
        "{text}"
    );

    let url = s
        .exec_url(exec_req(&["echo"], false, false))
        .expect("test fixture");
    assert!(ws(&url, "base64.channel.k8s.io").await.is_err());
}

/// A SPDY client over the upgraded connection, reading frames into per-stream buffers.
struct Spdy {
    tcp: TcpStream,
    enc: Encoder,
    dec: Decoder,
    buf: BytesMut,
    data: HashMap<u32, Vec<u8>>,
    fin: Vec<u32>,
    replied: Vec<u32>,
}

impl Spdy {
    async fn connect(url: &str, protocol: &str) -> (Self, String) {
        let rest = url.strip_prefix("http://").expect("test fixture");
        let (host, path) = rest.split_once('/').expect("test fixture");
        let mut tcp = TcpStream::connect(host).await.expect("test fixture");
        let req = format!(
            "POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.expect("test fixture");
        let mut buf = BytesMut::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 512];
            let n = tcp.read(&mut chunk).await.expect("test fixture");
            assert!(n > 0, "closed during upgrade: {buf:?}");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf.split_to(end)).into_owned();
        let client = Self {
            tcp,
            enc: Encoder::new().expect("test fixture"),
            dec: Decoder::new(),
            buf,
            data: HashMap::new(),
            fin: Vec::new(),
            replied: Vec::new(),
        };
        (client, head)
    }

    async fn write(&mut self, f: Frame) {
        let mut out = BytesMut::new();
        self.enc.encode(&f, &mut out).expect("test fixture");
        self.tcp.write_all(&out).await.expect("test fixture");
    }

    async fn open(&mut self, id: u32, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .fold(Headers::new(), |h, (k, v)| h.with(k, *v));
        self.write(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers,
        })
        .await;
    }

    async fn until(&mut self, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            if let Some(f) = self.dec.decode(&mut self.buf).expect("test fixture") {
                match f {
                    Frame::SynReply { stream_id, .. } => self.replied.push(stream_id),
                    Frame::Data {
                        stream_id,
                        fin,
                        data,
                    } => {
                        self.data
                            .entry(stream_id)
                            .or_default()
                            .extend_from_slice(&data);
                        if fin {
                            self.fin.push(stream_id);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(20), self.tcp.read(&mut chunk))
                .await
                .expect("frames in time")
                .expect("test fixture");
            assert!(n > 0, "server closed early; have {:?}", self.data);
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[tokio::test]
async fn spdy_exec_negotiates_and_reports_status_per_version() {
    let (s, _) = server().await;
    let url = s
        .exec_url(exec_req(&["cat"], true, false))
        .expect("test fixture");
    let (mut c, head) = Spdy::connect(&url, "v4.channel.k8s.io").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{head}"
    );
    c.open(1, &[("streamType", "error")]).await;
    c.open(3, &[("streamType", "stdin")]).await;
    c.open(5, &[("streamType", "stdout")]).await;
    c.open(7, &[("streamType", "stderr")]).await;
    c.until(|c| c.replied.len() == 4).await;
    c.write(Frame::Data {
        stream_id: 3,
        fin: true,
        data: Bytes::from_static(b"spdy-in"),
    })
    .await;
    c.until(|c| c.fin.contains(&1) && c.fin.contains(&5) && c.fin.contains(&7))
        .await;
    assert_eq!(c.data[&5], b"spdy-in");
    assert_eq!(json(&c.data[&1])["status"], "Success");

    // v2: a failure is plain text, success is silence.
    let url = s
        .exec_url(exec_req(&["fail"], false, false))
        .expect("test fixture");
    let (mut c, _) = Spdy::connect(&url, "v2.channel.k8s.io").await;
    c.open(1, &[("streamType", "error")]).await;
    c.open(3, &[("streamType", "stdout")]).await;
    c.open(5, &[("streamType", "stderr")]).await;
    c.until(|c| c.fin.contains(&1) && c.fin.contains(&5)).await;
    assert_eq!(c.data[&5], b"failing\n");
    let text = String::from_utf8_lossy(&c.data[&1]).into_owned();
    assert!(text.contains("exit code 7"), "{text}");

    // An unknown protocol is refused before the upgrade.
    let url = s
        .exec_url(exec_req(&["echo"], false, false))
        .expect("test fixture");
    let (_, head) = Spdy::connect(&url, "v9.channel.k8s.io").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[tokio::test]
async fn spdy_port_forward_pairs_streams_by_request_id() {
    let (s, fake) = server().await;
    let url = s
        .port_forward_url(v1::PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![],
        })
        .expect("test fixture");
    let (mut c, head) = Spdy::connect(&url, "portforward.k8s.io").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Two connections interleaved.
    c.open(
        1,
        &[("streamType", "error"), ("port", "80"), ("requestID", "a")],
    )
    .await;
    c.open(
        3,
        &[("streamType", "error"), ("port", "81"), ("requestID", "b")],
    )
    .await;
    c.open(
        5,
        &[("streamType", "data"), ("port", "80"), ("requestID", "a")],
    )
    .await;
    c.open(
        7,
        &[("streamType", "data"), ("port", "81"), ("requestID", "b")],
    )
    .await;
    c.until(|c| c.replied.len() == 4).await;
    c.write(Frame::Data {
        stream_id: 5,
        fin: true,
        data: Bytes::from_static(b"ping"),
    })
    .await;
    c.until(|c| [1, 3, 5, 7].iter().all(|id| c.fin.contains(id)))
        .await;
    assert_eq!(c.data[&5], b"pong:ping");
    assert!(
        c.data.get(&1).is_none_or(Vec::is_empty),
        "no error for port 80"
    );
    let err = String::from_utf8_lossy(&c.data[&3]).into_owned();
    assert!(err.contains("error forwarding port 81 to pod p1"), "{err}");
    let mut calls = fake.calls();
    calls.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        calls,
        vec![
            Call::PortForward {
                sandbox: "p1".into(),
                port: 80
            },
            Call::PortForward {
                sandbox: "p1".into(),
                port: 81
            },
        ]
    );
}

#[tokio::test]
async fn websocket_port_forward_announces_ports_and_relays() {
    let (s, _) = server().await;
    let url = s
        .port_forward_url(v1::PortForwardRequest {
            pod_sandbox_id: "p1".into(),
            port: vec![80, 81],
        })
        .expect("test fixture");
    let mut w = ws(&url, "v4.channel.k8s.io").await.expect("test fixture");
    send(&mut w, 0, b"hello").await;
    // v5-style close of channel 0 half-closes the connection to the pod.
    w.send(Message::Binary(vec![255, 0].into()))
        .await
        .expect("test fixture");
    let got = drain(&mut w).await;
    // Every channel starts with its port; port 81 fails on its error channel.
    assert_eq!(&got[&0][..2], &80u16.to_le_bytes());
    assert_eq!(&got[&1][..], &80u16.to_le_bytes());
    assert_eq!(&got[&2][..], &81u16.to_le_bytes());
    assert_eq!(&got[&3][..2], &81u16.to_le_bytes());
    assert!(String::from_utf8_lossy(&got[&3]).contains("error forwarding port 81"));
    assert_eq!(&got[&0][2..], b"pong:hello");
}

fn attach_req(stdin: bool) -> v1::AttachRequest {
    v1::AttachRequest {
        container_id: "c1".into(),
        stdin,
        stdout: true,
        stderr: true,
        tty: false,
        ..Default::default()
    }
}

/// Waits (bounded) until the fake counted `n` attaches the server gave up.
async fn until_detached(fake: &Fake, n: usize) {
    for _ in 0..200 {
        if fake.detached.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the attach was not dropped after the client left");
}

#[tokio::test]
async fn websocket_attach_relays_stdin_and_ends_with_the_client() {
    let (s, fake) = server().await;
    let url = s.attach_url(attach_req(true)).expect("test fixture");
    assert!(url.contains("/attach/"), "{url}");
    let mut w = ws(&url, "v5.channel.k8s.io").await.expect("test fixture");
    send(&mut w, 0, b"typed").await;
    w.send(Message::Binary(vec![255, 0].into()))
        .await
        .expect("test fixture");
    let got = drain(&mut w).await;
    assert_eq!(got[&1], b"typed");
    assert_eq!(json(&got[&3])["status"], "Success");
    assert_eq!(
        fake.calls(),
        vec![Call::Attach {
            id: "c1".into(),
            stdin: true,
            tty: false
        }]
    );

    // Without stdin the attach runs until the client leaves.
    let url = s.attach_url(attach_req(false)).expect("test fixture");
    let mut w = ws(&url, "v5.channel.k8s.io").await.expect("test fixture");
    let first = tokio::time::timeout(Duration::from_secs(20), w.next())
        .await
        .expect("output in time");
    assert!(
        matches!(&first, Some(Ok(Message::Binary(b))) if b[..] == b"\x01attached\n"[..]),
        "{first:?}"
    );
    drop(w);
    until_detached(&fake, 1).await;
}

#[tokio::test]
async fn spdy_attach_ends_at_stdin_fin_or_with_the_client() {
    let (s, fake) = server().await;
    let url = s.attach_url(attach_req(true)).expect("test fixture");
    let (mut c, head) = Spdy::connect(&url, "v4.channel.k8s.io").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.open(1, &[("streamType", "error")]).await;
    c.open(3, &[("streamType", "stdin")]).await;
    c.open(5, &[("streamType", "stdout")]).await;
    c.open(7, &[("streamType", "stderr")]).await;
    c.until(|c| c.replied.len() == 4).await;
    c.write(Frame::Data {
        stream_id: 3,
        fin: true,
        data: Bytes::from_static(b"over spdy"),
    })
    .await;
    c.until(|c| c.fin.contains(&1) && c.fin.contains(&5)).await;
    assert_eq!(c.data[&5], b"over spdy");
    assert_eq!(json(&c.data[&1])["status"], "Success");

    let url = s.attach_url(attach_req(false)).expect("test fixture");
    let (mut c, _) = Spdy::connect(&url, "v4.channel.k8s.io").await;
    c.open(1, &[("streamType", "error")]).await;
    c.open(3, &[("streamType", "stdout")]).await;
    c.open(5, &[("streamType", "stderr")]).await;
    c.until(|c| c.data.get(&3).is_some_and(|d| d == b"attached\n"))
        .await;
    drop(c);
    until_detached(&fake, 1).await;
}

#[tokio::test]
async fn unknown_paths_and_tokens_are_not_found() {
    let (s, _) = server().await;
    let url = s
        .exec_url(exec_req(&["echo"], false, false))
        .expect("test fixture");
    let base = url
        .split("/exec/")
        .next()
        .expect("test fixture")
        .to_string();
    let host = base.strip_prefix("http://").expect("test fixture");
    for path in ["/exec/nope", "/", "/other/x", "/exec/a/b"] {
        let mut tcp = TcpStream::connect(host).await.expect("test fixture");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.expect("test fixture");
        let mut resp = String::new();
        tcp.read_to_string(&mut resp).await.expect("test fixture");
        assert!(resp.starts_with("HTTP/1.1 404"), "{path}: {resp}");
    }
    // A real token without an upgrade is a bad request, and it is spent.
    let path = url.strip_prefix(&base).expect("test fixture");
    let mut tcp = TcpStream::connect(host).await.expect("test fixture");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("test fixture");
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.expect("test fixture");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}
