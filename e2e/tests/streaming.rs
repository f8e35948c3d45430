//! Exec, attach and port-forward through the streaming server, end to end as root: the
//! `cri` binary, real runc and CNI, and clients that speak what kubectl and crictl speak
//! (WebSocket `v5`/`v4.channel.k8s.io` and SPDY/3.1), written here against the wire
//! protocol. All traffic goes to 127.0.0.1 (the streaming server) only.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::{Bytes, BytesMut};
use cri::streaming::spdy::{Decoder, Encoder, Frame, Headers};
use e2e::pods::{PodNode, pod_config, run_pod, shell, start, wait_exited};
use futures::{SinkExt as _, StreamExt as _};
use proto::v1;
use proto::v1::runtime_service_client::RuntimeServiceClient;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{WebSocketStream, client_async};
use tonic::Code;
use tonic::transport::Channel;

type R<T = ()> = anyhow::Result<T>;

/// Bound on any one session; a hang fails the test instead of blocking CI.
const SESSION: Duration = Duration::from_secs(60);

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// `http://127.0.0.1:P/path` → (`127.0.0.1:P`, `/path`); anything but loopback is
/// refused (the test network is this machine only).
fn split_url(url: &str) -> R<(String, String)> {
    let rest = url.strip_prefix("http://").context("an http URL")?;
    let (host, path) = rest.split_once('/').context("a URL with a path")?;
    ensure!(
        host.starts_with("127.0.0.1:"),
        "streaming URL not on loopback: {url}"
    );
    Ok((host.to_string(), format!("/{path}")))
}

// ---------------------------------------------------------------- WebSocket client

type Ws = WebSocketStream<TcpStream>;

/// Connects and upgrades, offering `protocols`; returns the one the server chose.
async fn ws_connect(url: &str, protocols: &[&str]) -> R<(Ws, Option<String>)> {
    let (host, path) = split_url(url)?;
    let tcp = TcpStream::connect(&host).await?;
    let mut req = format!("ws://{host}{path}").into_client_request()?;
    if !protocols.is_empty() {
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.join(", ").parse()?);
    }
    let (ws, resp) = client_async(req, tcp).await?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((ws, chosen))
}

async fn ws_send(ws: &mut Ws, channel: u8, data: &[u8]) -> R {
    let mut msg = vec![channel];
    msg.extend_from_slice(data);
    ws.send(Message::Binary(msg.into())).await?;
    Ok(())
}

/// The next binary message as (channel, payload); `None` once the server closed.
async fn ws_next(ws: &mut Ws) -> R<Option<(u8, Vec<u8>)>> {
    loop {
        let msg = tokio::time::timeout(SESSION, ws.next())
            .await
            .context("websocket session timed out")?;
        match msg {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                return Ok(Some((b[0], b[1..].to_vec())));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Everything per channel until the server closes.
async fn ws_drain(ws: &mut Ws) -> R<HashMap<u8, Vec<u8>>> {
    let mut out: HashMap<u8, Vec<u8>> = HashMap::new();
    while let Some((ch, data)) = ws_next(ws).await? {
        out.entry(ch).or_default().extend(data);
    }
    Ok(out)
}

fn text(map: &HashMap<u8, Vec<u8>>, ch: u8) -> String {
    String::from_utf8_lossy(map.get(&ch).map(Vec::as_slice).unwrap_or_default()).into_owned()
}

fn status(map: &HashMap<u8, Vec<u8>>) -> R<serde_json::Value> {
    let raw = map.get(&ERROR).context("no status on the error channel")?;
    Ok(serde_json::from_slice(raw)?)
}

// ---------------------------------------------------------------- SPDY client

/// A SPDY/3.1 client over an upgraded HTTP/1.1 connection, driven one call at a time.
struct Spdy {
    tcp: TcpStream,
    enc: Encoder,
    dec: Decoder,
    buf: BytesMut,
    next_id: u32,
    replied: HashSet<u32>,
    data: HashMap<u32, Vec<u8>>,
    fin: HashSet<u32>,
    reset: HashSet<u32>,
    gone: bool,
}

impl Spdy {
    /// Upgrades with `X-Stream-Protocol-Version` set to `protocols`; returns the client
    /// and the version the server chose.
    async fn connect(url: &str, protocols: &[&str]) -> R<(Self, String)> {
        let (host, path) = split_url(url)?;
        let mut tcp = TcpStream::connect(&host).await?;
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        );
        for p in protocols {
            req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        req.push_str("Content-Length: 0\r\n\r\n");
        tcp.write_all(req.as_bytes()).await?;
        let mut buf = BytesMut::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await?;
            ensure!(n > 0, "connection closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let _ = buf.split_to(head_end);
        ensure!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        let chosen = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-stream-protocol-version")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        Ok((
            Self {
                tcp,
                enc: Encoder::new()?,
                dec: Decoder::new(),
                buf,
                next_id: 1,
                replied: HashSet::new(),
                data: HashMap::new(),
                fin: HashSet::new(),
                reset: HashSet::new(),
                gone: false,
            },
            chosen,
        ))
    }

    async fn write(&mut self, frame: Frame) -> R {
        let mut out = BytesMut::new();
        self.enc.encode(&frame, &mut out)?;
        self.tcp.write_all(&out).await?;
        Ok(())
    }

    /// Opens a stream with these headers; returns its id.
    async fn open(&mut self, headers: &[(&str, &str)]) -> R<u32> {
        let id = self.next_id;
        self.next_id += 2;
        let h = headers
            .iter()
            .fold(Headers::new(), |h, (k, v)| h.with(k, *v));
        self.write(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers: h,
        })
        .await?;
        Ok(id)
    }

    async fn send(&mut self, id: u32, data: &[u8], fin: bool) -> R {
        self.write(Frame::Data {
            stream_id: id,
            fin,
            data: Bytes::copy_from_slice(data),
        })
        .await
    }

    /// Reads and records frames until `done` holds or the server is gone.
    async fn until(&mut self, done: impl Fn(&Self) -> bool) -> R {
        let deadline = tokio::time::Instant::now() + SESSION;
        while !done(self) {
            if self.gone {
                bail!("the server closed the connection first");
            }
            if let Some(frame) = self.dec.decode(&mut self.buf)? {
                match frame {
                    Frame::SynReply { stream_id, .. } => {
                        self.replied.insert(stream_id);
                    }
                    Frame::Data {
                        stream_id,
                        fin,
                        data,
                    } => {
                        self.data.entry(stream_id).or_default().extend(&data);
                        if fin {
                            self.fin.insert(stream_id);
                        }
                    }
                    Frame::RstStream { stream_id, .. } => {
                        self.reset.insert(stream_id);
                    }
                    Frame::Ping { id } => self.write(Frame::Ping { id }).await?,
                    _ => {}
                }
                continue;
            }
            let mut chunk = [0u8; 16 << 10];
            let n = tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk))
                .await
                .context("spdy session timed out")??;
            if n == 0 {
                self.gone = true;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }

    fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(Vec::as_slice).unwrap_or_default())
            .into_owned()
    }
}

// ---------------------------------------------------------------- helpers

async fn exec_url(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
    (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
) -> R<String> {
    Ok(c.exec(v1::ExecRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout,
        stderr,
        ..Default::default()
    })
    .await
    .with_context(|| format!("Exec {cmd:?}"))?
    .into_inner()
    .url)
}

async fn attach_url(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    (stdin, stdout, stderr, tty): (bool, bool, bool, bool),
) -> R<String> {
    Ok(c.attach(v1::AttachRequest {
        container_id: id.into(),
        stdin,
        tty,
        stdout,
        stderr,
        ..Default::default()
    })
    .await
    .context("Attach")?
    .into_inner()
    .url)
}

/// Stdout and stderr, no stdin, no tty.
const OUT_ERR: (bool, bool, bool, bool) = (false, true, true, false);
/// Stdin, stdout and stderr, no tty.
const IN_OUT_ERR: (bool, bool, bool, bool) = (true, true, true, false);

/// A node with one running pod and nothing in it; returns the pod and its config.
async fn node_with_empty_pod(
    name: &str,
) -> R<(
    PodNode,
    RuntimeServiceClient<Channel>,
    String,
    v1::PodSandboxConfig,
)> {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, name);
    let pod = run_pod(&mut c, &pc).await?;
    Ok((node, c, pod, pc))
}

/// `cat` with a stdin that the first attached client's end of stdin closes, as
/// `kubectl run -i` creates it.
fn cat_once() -> v1::ContainerConfig {
    v1::ContainerConfig {
        stdin: true,
        stdin_once: true,
        ..shell("cat", "exec cat")
    }
}

fn code_of(err: &anyhow::Error) -> Option<Code> {
    err.downcast_ref::<tonic::Status>().map(tonic::Status::code)
}

/// Reads stdout until it is `want` (a chunk may be split across messages).
async fn ws_read_stdout(ws: &mut Ws, want: &str) -> R {
    let mut seen = String::new();
    while seen != want {
        ensure!(want.starts_with(&seen), "stdout {seen:?} is not {want:?}");
        let Some((ch, data)) = ws_next(ws).await? else {
            bail!("session ended before {want:?}; got {seen:?}");
        };
        if ch == STDOUT {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    Ok(())
}

/// A node with one running pod holding a `sleep` container and a busybox httpd that
/// serves `/tmp/index.html` on port 8080.
async fn node_with_pod(name: &str) -> R<(PodNode, RuntimeServiceClient<Channel>, String, String)> {
    let node = PodNode::start("")?;
    let mut c = node.client().await?;
    let pc = pod_config(&node, name);
    let pod = run_pod(&mut c, &pc).await?;
    let id = start(&mut c, &pod, &pc, shell("sleeper", "exec sleep 100000")).await?;
    start(
        &mut c,
        &pod,
        &pc,
        shell(
            "web",
            "echo served-through-port-forward > /tmp/index.html; exec busybox httpd -f -p 8080 -h /tmp",
        ),
    )
    .await?;
    Ok((node, c, pod, id))
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn exec_over_websocket() -> R {
    let (_node, mut c, _pod, id) = node_with_pod("ws-exec").await?;

    // v5: stdout and a Success status.
    let url = exec_url(&mut c, &id, &["echo", "hi"], OUT_ERR).await?;
    let (mut ws, chosen) = ws_connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"]).await?;
    assert_eq!(chosen.as_deref(), Some("v5.channel.k8s.io"));
    let got = ws_drain(&mut ws).await?;
    assert_eq!(text(&got, STDOUT), "hi\n");
    assert_eq!(
        status(&got)?,
        serde_json::json!({"metadata":{},"status":"Success"})
    );

    // The token was good for one connection only.
    let reuse = ws_connect(&url, &["v5.channel.k8s.io"]).await;
    assert!(
        matches!(&reuse, Err(e) if e.to_string().contains("404")),
        "{:?}",
        reuse.map(|r| r.1)
    );

    // A non-zero exit: Failure with the exit code where client-go reads it; stderr.
    let url = exec_url(&mut c, &id, &["sh", "-c", "echo oops >&2; exit 3"], OUT_ERR).await?;
    let (mut ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await?;
    let got = ws_drain(&mut ws).await?;
    assert_eq!(text(&got, STDERR), "oops\n");
    let st = status(&got)?;
    assert_eq!(st["status"], "Failure");
    assert_eq!(st["reason"], "NonZeroExitCode");
    assert_eq!(
        st["details"]["causes"][0],
        serde_json::json!({"reason":"ExitCode","message":"3"})
    );

    // stdin piped to cat; v5 closes stdin so cat ends.
    let url = exec_url(&mut c, &id, &["cat"], (true, true, true, false)).await?;
    let (mut ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await?;
    ws_send(&mut ws, STDIN, b"line one\n").await?;
    ws_send(&mut ws, STDIN, b"line two\n").await?;
    ws.send(Message::Binary(vec![255, STDIN].into())).await?;
    let got = ws_drain(&mut ws).await?;
    assert_eq!(text(&got, STDOUT), "line one\nline two\n");
    assert_eq!(status(&got)?["status"], "Success");

    // v4 still works for older clients.
    let url = exec_url(&mut c, &id, &["echo", "v4"], OUT_ERR).await?;
    let (mut ws, chosen) = ws_connect(&url, &["v4.channel.k8s.io"]).await?;
    assert_eq!(chosen.as_deref(), Some("v4.channel.k8s.io"));
    let got = ws_drain(&mut ws).await?;
    assert_eq!(text(&got, STDOUT), "v4\n");
    assert_eq!(status(&got)?["status"], "Success");

    // A command that cannot start is an error status, not an exit code.
    let url = exec_url(&mut c, &id, &["/no/such/binary"], OUT_ERR).await?;
    let (mut ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await?;
    let got = ws_drain(&mut ws).await?;
    let st = status(&got)?;
    assert_eq!(
        (st["status"].as_str(), st["reason"].as_str()),
        (Some("Failure"), Some("InternalError")),
        "{st}"
    );
    Ok(())
}

#[tokio::test]
async fn exec_with_a_tty_and_resize() -> R {
    let (_node, mut c, _pod, id) = node_with_pod("tty").await?;

    // The process has a terminal of its own in the container.
    let url = exec_url(&mut c, &id, &["busybox", "tty"], (false, true, false, true)).await?;
    let (mut ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await?;
    let got = ws_drain(&mut ws).await?;
    assert!(text(&got, STDOUT).contains("/dev/pts/"), "{got:?}");
    assert_eq!(status(&got)?["status"], "Success");

    // An interactive shell: resize, then ask the terminal its size.
    let url = exec_url(&mut c, &id, &["sh"], (true, true, false, true)).await?;
    let (mut ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await?;
    ws_send(&mut ws, RESIZE, br#"{"Width":123,"Height":45}"#).await?;
    ws_send(&mut ws, STDIN, b"busybox stty size\n").await?;
    let mut seen = String::new();
    while !seen.contains("45 123") {
        let Some((ch, data)) = ws_next(&mut ws).await? else {
            bail!("session ended before the size showed: {seen:?}");
        };
        if ch == STDOUT {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    ws_send(&mut ws, RESIZE, br#"{"Width":90,"Height":30}"#).await?;
    ws_send(&mut ws, STDIN, b"busybox stty size; exit 5\n").await?;
    let got = ws_drain(&mut ws).await?;
    assert!(text(&got, STDOUT).contains("30 90"), "{got:?}");
    assert_eq!(
        status(&got)?["details"]["causes"][0]["message"],
        "5",
        "the shell's exit code"
    );
    Ok(())
}

#[tokio::test]
async fn exec_over_spdy() -> R {
    let (_node, mut c, _pod, id) = node_with_pod("spdy-exec").await?;

    async fn run(url: &str, stdin: Option<&[u8]>, stderr: bool) -> R<(Spdy, u32, u32, u32)> {
        let (mut s, chosen) = Spdy::connect(
            url,
            &[
                "v4.channel.k8s.io",
                "v3.channel.k8s.io",
                "v2.channel.k8s.io",
            ],
        )
        .await?;
        assert_eq!(chosen, "v4.channel.k8s.io");
        let error = s.open(&[("streamType", "error")]).await?;
        let input = match stdin {
            Some(_) => Some(s.open(&[("streamType", "stdin")]).await?),
            None => None,
        };
        let out = s.open(&[("streamType", "stdout")]).await?;
        let err = if stderr {
            s.open(&[("streamType", "stderr")]).await?
        } else {
            0
        };
        s.until(|s| s.replied.contains(&error) && s.replied.contains(&out))
            .await?;
        if let (Some(id), Some(data)) = (input, stdin) {
            s.send(id, data, true).await?;
        }
        s.until(|s| s.fin.contains(&error) && s.fin.contains(&out))
            .await?;
        Ok((s, error, out, err))
    }

    let url = exec_url(&mut c, &id, &["echo", "hi"], OUT_ERR).await?;
    let (s, error, out, _) = run(&url, None, true).await?;
    assert_eq!(s.text(out), "hi\n");
    let st: serde_json::Value = serde_json::from_str(&s.text(error))?;
    assert_eq!(st["status"], "Success");

    let url = exec_url(&mut c, &id, &["sh", "-c", "echo bad >&2; exit 3"], OUT_ERR).await?;
    let (mut s, error, _, err) = run(&url, None, true).await?;
    s.until(|s| s.fin.contains(&err)).await?;
    assert_eq!(s.text(err), "bad\n");
    let st: serde_json::Value = serde_json::from_str(&s.text(error))?;
    assert_eq!(st["reason"], "NonZeroExitCode");
    assert_eq!(st["details"]["causes"][0]["message"], "3");

    let url = exec_url(&mut c, &id, &["cat"], (true, true, false, false)).await?;
    let (s, error, out, _) = run(&url, Some(b"via spdy\n"), false).await?;
    assert_eq!(s.text(out), "via spdy\n");
    let st: serde_json::Value = serde_json::from_str(&s.text(error))?;
    assert_eq!(st["status"], "Success");
    Ok(())
}

#[tokio::test]
async fn port_forward_over_websocket_and_spdy() -> R {
    let (_node, c, pod, _) = node_with_pod("pf").await?;
    let request = b"GET /index.html HTTP/1.0\r\nHost: localhost\r\n\r\n";
    let url = || {
        let mut c = c.clone();
        let pod = pod.clone();
        async move {
            R::Ok(
                c.port_forward(v1::PortForwardRequest {
                    pod_sandbox_id: pod,
                    port: vec![8080],
                })
                .await?
                .into_inner()
                .url,
            )
        }
    };

    // httpd may still be starting: retry the whole exchange a bounded number of times.
    let mut body = String::new();
    for _ in 0..50 {
        let (mut ws, chosen) = ws_connect(&url().await?, &["v4.channel.k8s.io"]).await?;
        assert_eq!(chosen.as_deref(), Some("v4.channel.k8s.io"));
        // Each channel opens with its port, little-endian.
        let mut firsts = HashMap::new();
        for _ in 0..2 {
            let (ch, data) = ws_next(&mut ws).await?.context("port frames")?;
            firsts.insert(ch, data);
        }
        assert_eq!(firsts[&0], 8080u16.to_le_bytes());
        assert_eq!(firsts[&1], 8080u16.to_le_bytes());
        ws_send(&mut ws, 0, request).await?;
        let got = ws_drain(&mut ws).await?;
        body = text(&got, 0);
        if body.contains("served-through-port-forward") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
        "{body:?}"
    );
    assert!(body.contains("served-through-port-forward"), "{body:?}");

    // SPDY, as kubectl port-forward: an error and a data stream per connection, two
    // connections over one session.
    let (mut s, chosen) = Spdy::connect(&url().await?, &["portforward.k8s.io"]).await?;
    assert_eq!(chosen, "portforward.k8s.io");
    for request_id in ["0", "1"] {
        let error = s
            .open(&[
                ("streamType", "error"),
                ("port", "8080"),
                ("requestID", request_id),
            ])
            .await?;
        let data = s
            .open(&[
                ("streamType", "data"),
                ("port", "8080"),
                ("requestID", request_id),
            ])
            .await?;
        s.until(|s| s.replied.contains(&data)).await?;
        s.send(data, request, false).await?;
        s.until(|s| s.fin.contains(&data) && s.fin.contains(&error))
            .await?;
        let body = s.text(data);
        assert!(body.contains("served-through-port-forward"), "{body:?}");
        assert_eq!(s.text(error), "", "no error");
    }

    // A port nobody listens on: the error stream says so.
    let error = s
        .open(&[("streamType", "error"), ("port", "9"), ("requestID", "2")])
        .await?;
    let data = s
        .open(&[("streamType", "data"), ("port", "9"), ("requestID", "2")])
        .await?;
    s.until(|s| s.fin.contains(&error) && s.fin.contains(&data))
        .await?;
    assert!(
        s.text(error).contains("error forwarding port 9"),
        "{}",
        s.text(error)
    );
    Ok(())
}

#[tokio::test]
async fn streaming_requests_are_validated() -> R {
    let (_node, mut c, pod, id) = node_with_pod("validate").await?;
    let err = exec_url(&mut c, &id, &["sh"], (false, true, true, true))
        .await
        .expect_err("tty with stderr");
    assert_eq!(
        err.downcast_ref::<tonic::Status>().map(tonic::Status::code),
        Some(Code::InvalidArgument),
        "{err:#}"
    );
    let err = exec_url(&mut c, &id, &["sh"], (false, false, false, false))
        .await
        .expect_err("no stream");
    assert_eq!(
        err.downcast_ref::<tonic::Status>().map(tonic::Status::code),
        Some(Code::InvalidArgument)
    );
    let err = exec_url(&mut c, "no-such-container", &["sh"], OUT_ERR)
        .await
        .expect_err("missing container");
    assert_eq!(
        err.downcast_ref::<tonic::Status>().map(tonic::Status::code),
        Some(Code::NotFound)
    );
    // Attach must match how the container was created: `sleeper` has no stdin, no TTY.
    let err = attach_url(&mut c, &id, IN_OUT_ERR)
        .await
        .expect_err("stdin of a container created without it");
    assert_eq!(code_of(&err), Some(Code::InvalidArgument), "{err:#}");
    let err = attach_url(&mut c, &id, (false, true, false, true))
        .await
        .expect_err("a TTY the container does not have");
    assert_eq!(code_of(&err), Some(Code::InvalidArgument), "{err:#}");
    let err = attach_url(&mut c, "no-such-container", OUT_ERR)
        .await
        .expect_err("missing container");
    assert_eq!(code_of(&err), Some(Code::NotFound), "{err:#}");
    attach_url(&mut c, &id, OUT_ERR).await?;
    let pf = c
        .port_forward(v1::PortForwardRequest {
            pod_sandbox_id: "no-such-pod".into(),
            port: vec![80],
        })
        .await
        .expect_err("missing pod");
    assert_eq!(pf.code(), Code::NotFound);
    let _ = pod;
    Ok(())
}

#[tokio::test]
async fn attach_over_websocket_to_cat_until_stdin_closes() -> R {
    let (_node, mut c, pod, pc) = node_with_empty_pod("ws-attach").await?;
    let cat = start(&mut c, &pod, &pc, cat_once()).await?;

    let url = attach_url(&mut c, &cat, IN_OUT_ERR).await?;
    let (mut ws, chosen) = ws_connect(&url, &["v5.channel.k8s.io"]).await?;
    assert_eq!(chosen.as_deref(), Some("v5.channel.k8s.io"));
    ws_send(&mut ws, STDIN, b"hello\n").await?;
    ws_read_stdout(&mut ws, "hello\n").await?;
    // v5's close of stdin: with stdin_once the container's stdin closes, cat ends, and
    // so does the attach.
    ws.send(Message::Binary(vec![255, STDIN].into())).await?;
    let got = ws_drain(&mut ws).await?;
    assert_eq!(text(&got, STDOUT), "", "{got:?}");
    assert_eq!(status(&got)?["status"], "Success");
    let st = wait_exited(&mut c, &cat, SESSION).await?;
    assert_eq!(st.exit_code, 0, "{st:?}");

    // Nothing runs there any more.
    let err = attach_url(&mut c, &cat, OUT_ERR)
        .await
        .expect_err("attach to an exited container");
    assert_eq!(code_of(&err), Some(Code::FailedPrecondition), "{err:#}");
    Ok(())
}

#[tokio::test]
async fn attach_over_spdy_to_cat_until_stdin_ends() -> R {
    let (_node, mut c, pod, pc) = node_with_empty_pod("spdy-attach").await?;
    let cat = start(&mut c, &pod, &pc, cat_once()).await?;

    let url = attach_url(&mut c, &cat, IN_OUT_ERR).await?;
    let (mut s, chosen) = Spdy::connect(&url, &["v4.channel.k8s.io"]).await?;
    assert_eq!(chosen, "v4.channel.k8s.io");
    let error = s.open(&[("streamType", "error")]).await?;
    let stdin = s.open(&[("streamType", "stdin")]).await?;
    let out = s.open(&[("streamType", "stdout")]).await?;
    let err = s.open(&[("streamType", "stderr")]).await?;
    s.until(|s| {
        [error, stdin, out, err]
            .iter()
            .all(|id| s.replied.contains(id))
    })
    .await?;
    s.send(stdin, b"hello\n", false).await?;
    s.until(|s| s.text(out) == "hello\n").await?;
    // The end of the stdin stream closes the container's stdin.
    s.send(stdin, b"", true).await?;
    s.until(|s| s.fin.contains(&error) && s.fin.contains(&out))
        .await?;
    assert_eq!(s.text(out), "hello\n");
    let st: serde_json::Value = serde_json::from_str(&s.text(error))?;
    assert_eq!(st["status"], "Success");
    let st = wait_exited(&mut c, &cat, SESSION).await?;
    assert_eq!(st.exit_code, 0, "{st:?}");
    Ok(())
}

#[tokio::test]
async fn attach_to_a_tty_shell_with_resize() -> R {
    let (_node, mut c, pod, pc) = node_with_empty_pod("tty-attach").await?;
    let sh = start(
        &mut c,
        &pod,
        &pc,
        v1::ContainerConfig {
            command: vec!["sh".into()],
            stdin: true,
            stdin_once: true,
            tty: true,
            ..shell("sh", "")
        },
    )
    .await?;

    let url = attach_url(&mut c, &sh, (true, true, false, true)).await?;
    let (mut ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await?;
    ws_send(&mut ws, RESIZE, br#"{"Width":123,"Height":45}"#).await?;
    ws_send(&mut ws, STDIN, b"busybox stty size\n").await?;
    let mut seen = String::new();
    while !seen.contains("45 123") {
        let Some((ch, data)) = ws_next(&mut ws).await? else {
            bail!("session ended before the size showed: {seen:?}");
        };
        ensure!(ch != STDERR, "a TTY has no stderr: {data:?}");
        seen.push_str(&String::from_utf8_lossy(&data));
    }
    // The shell's exit ends the container, and with it the attach.
    ws_send(&mut ws, STDIN, b"exit 3\n").await?;
    let got = ws_drain(&mut ws).await?;
    assert_eq!(status(&got)?["status"], "Success", "{got:?}");
    let st = wait_exited(&mut c, &sh, SESSION).await?;
    assert_eq!(st.exit_code, 3, "{st:?}");
    Ok(())
}

#[tokio::test]
async fn attach_stdout_only_to_a_printer_until_it_stops() -> R {
    let (_node, mut c, pod, pc) = node_with_empty_pod("out-attach").await?;
    let printer = start(
        &mut c,
        &pod,
        &pc,
        shell(
            "printer",
            "trap 'exit 0' TERM; i=0; while true; do echo line $i; echo noise >&2; i=$((i+1)); sleep 0.1; done",
        ),
    )
    .await?;

    // A client that leaves detaches; the container runs on and takes another.
    let url = attach_url(&mut c, &printer, (false, true, false, false)).await?;
    let (mut ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await?;
    ensure!(ws_next(&mut ws).await?.is_some(), "no output");
    drop(ws);
    let url = attach_url(&mut c, &printer, (false, true, false, false)).await?;
    let (mut ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await?;
    let mut seen = String::new();
    while seen.matches("line ").count() < 3 {
        let Some((ch, data)) = ws_next(&mut ws).await? else {
            bail!("session ended early: {seen:?}");
        };
        ensure!(ch == STDOUT, "channel {ch} was not asked for: {data:?}");
        seen.push_str(&String::from_utf8_lossy(&data));
    }
    // Lines come whole and in order from where the attach started.
    let numbers: Vec<u64> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("line ")?.parse().ok())
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
    c.stop_container(v1::StopContainerRequest {
        container_id: printer.clone(),
        timeout: 10,
    })
    .await?;
    let got = ws_drain(&mut ws).await?;
    assert!(!got.contains_key(&STDERR), "{got:?}");
    assert_eq!(status(&got)?["status"], "Success");
    Ok(())
}
