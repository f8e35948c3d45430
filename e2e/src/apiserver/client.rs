//! A small blocking HTTP/1.1 client for tests against the API server: JSON requests with
//! a bearer token, chunked responses, and watch streams read event by event.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "parse response body as json (status {}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A client for one server, with an optional bearer token.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    token: Option<String>,
}

/// The body of a response: sized, chunked, or up to the end of the connection.
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    framing: Framing,
}

fn read_head(r: &mut impl BufRead) -> Result<Head> {
    let mut line = String::new();
    r.read_line(&mut line).context("read status line")?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("malformed status line {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).context("read header")?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let framing = if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        Framing::Chunked
    } else if let Some(len) = get("content-length").and_then(|v| v.parse().ok()) {
        Framing::Length(len)
    } else {
        Framing::Close
    };
    Ok(Head {
        status,
        headers,
        framing,
    })
}

/// Reads one chunk's data (none at the last chunk).
fn read_chunk(r: &mut impl BufRead) -> Result<Option<Vec<u8>>> {
    let mut size = String::new();
    if r.read_line(&mut size).context("read chunk size")? == 0 {
        return Ok(None);
    }
    let hex = size.trim().split(';').next().unwrap_or_default();
    let len =
        usize::from_str_radix(hex, 16).with_context(|| format!("malformed chunk size {size:?}"))?;
    if len == 0 {
        // Trailers, up to the empty line.
        let mut trailer = String::new();
        while r.read_line(&mut trailer)? > 0 && !trailer.trim().is_empty() {
            trailer.clear();
        }
        return Ok(None);
    }
    let mut data = vec![0; len];
    r.read_exact(&mut data).context("read chunk")?;
    let mut crlf = [0u8; 2];
    r.read_exact(&mut crlf).context("read chunk end")?;
    Ok(Some(data))
}

impl Client {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        Self { addr, token }
    }

    /// The same server with another token (none: anonymous).
    pub fn with_token(&self, token: Option<&str>) -> Self {
        Self {
            addr: self.addr,
            token: token.map(str::to_string),
        }
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<BufReader<TcpStream>> {
        let mut stream = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT)
            .with_context(|| format!("connect to {}", self.addr))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: e2e-apiserver-client\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes())?;
        stream.write_all(body)?;
        Ok(BufReader::new(stream))
    }

    /// Any request; `content_type` is sent when there is a body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        accept: Option<&str>,
    ) -> Result<Reply> {
        let mut headers = Vec::new();
        if let Some(ct) = content_type {
            headers.push(("Content-Type", ct));
        }
        headers.push(("Accept", accept.unwrap_or("application/json")));
        let mut r = self
            .send(method, path, &headers, body)
            .with_context(|| format!("{method} {path}"))?;
        let head = read_head(&mut r).with_context(|| format!("{method} {path}"))?;
        let mut body = Vec::new();
        match head.framing {
            Framing::Length(n) => {
                body.resize(n, 0);
                r.read_exact(&mut body)?;
            }
            Framing::Chunked => {
                while let Some(chunk) = read_chunk(&mut r)? {
                    body.extend(chunk);
                }
            }
            Framing::Close => {
                r.read_to_end(&mut body)?;
            }
        }
        Ok(Reply {
            status: head.status,
            headers: head.headers,
            body,
        })
    }

    pub fn get(&self, path: &str) -> Result<Reply> {
        self.request("GET", path, None, b"", None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.request(
            "POST",
            path,
            Some("application/json"),
            body.to_string().as_bytes(),
            None,
        )
    }

    pub fn put(&self, path: &str, body: &Value) -> Result<Reply> {
        self.request(
            "PUT",
            path,
            Some("application/json"),
            body.to_string().as_bytes(),
            None,
        )
    }

    /// PATCH with a patch media type (`application/strategic-merge-patch+json`, ...).
    pub fn patch(&self, path: &str, content_type: &str, body: &Value) -> Result<Reply> {
        self.request(
            "PATCH",
            path,
            Some(content_type),
            body.to_string().as_bytes(),
            None,
        )
    }

    /// DELETE, with a `DeleteOptions` body if given.
    pub fn delete(&self, path: &str, options: Option<&Value>) -> Result<Reply> {
        match options {
            Some(o) => self.request(
                "DELETE",
                path,
                Some("application/json"),
                o.to_string().as_bytes(),
                None,
            ),
            None => self.request("DELETE", path, None, b"", None),
        }
    }

    /// Starts a watch (`path` should carry `?watch=true`); fails unless it answers 200.
    pub fn watch(&self, path: &str) -> Result<WatchStream> {
        let mut r = self.send("GET", path, &[("Accept", "application/json")], b"")?;
        let head = read_head(&mut r).with_context(|| format!("watch {path}"))?;
        if head.status != 200 {
            let mut body = Vec::new();
            let _ = r.read_to_end(&mut body);
            bail!(
                "watch {path}: status {}: {}",
                head.status,
                String::from_utf8_lossy(&body)
            );
        }
        Ok(WatchStream {
            reader: r,
            chunked: matches!(head.framing, Framing::Chunked),
            buffer: Vec::new(),
            ended: false,
        })
    }
}

/// An open watch: events one by one.
pub struct WatchStream {
    reader: BufReader<TcpStream>,
    chunked: bool,
    buffer: Vec<u8>,
    ended: bool,
}

impl WatchStream {
    /// The next event (`{"type": ..., "object": ...}`), none when the server ended the
    /// stream; an error when none came within `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Value>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line).map(Some).with_context(|| {
                    format!("parse watch event {:?}", String::from_utf8_lossy(&line))
                });
            }
            if self.ended {
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bail!("no watch event within {timeout:?}");
            }
            self.reader.get_ref().set_read_timeout(Some(left))?;
            let data = if self.chunked {
                read_chunk(&mut self.reader)
            } else {
                let mut buf = vec![0; 8192];
                match self.reader.read(&mut buf) {
                    Ok(0) => Ok(None),
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(Some(buf))
                    }
                    Err(e) => Err(e.into()),
                }
            };
            match data {
                Ok(Some(d)) => self.buffer.extend(d),
                Ok(None) => self.ended = true,
                Err(e) => {
                    let timed_out = e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                        matches!(
                            io.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        )
                    });
                    if timed_out {
                        bail!("no watch event within {timeout:?}");
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Events until `pred` holds on one (returned), failing after `timeout`.
    pub fn until(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next_event(left)? {
                Some(e) if pred(&e) => return Ok(e),
                Some(_) => {}
                None => bail!("the watch ended first"),
            }
        }
    }
}
