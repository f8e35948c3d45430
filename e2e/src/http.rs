//! A tiny blocking HTTP/1.0 client, enough to read manifests and blobs back from the test
//! registry. HTTP/1.0 keeps it simple: the server closes the connection after one
//! response and never answers with chunked encoding.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// One HTTP response, fully read.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names as sent by the server; look them up with [`Response::header`].
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name`, compared case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "parse response body as json (status {}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// `GET http://{addr}{path}` with extra request headers.
pub fn get(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request("GET", addr, path, headers)
}

/// `HEAD http://{addr}{path}` with extra request headers; the body is always empty.
pub fn head(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    request("HEAD", addr, path, headers)
}

/// The value of an `Authorization` header for HTTP basic auth.
pub fn basic_auth(username: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    format!("Basic {token}")
}

fn request(method: &str, addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("resolve {addr}"))?
        .next()
        .with_context(|| format!("resolve {addr}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT)
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;

    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .with_context(|| format!("send {method} {path} to {addr}"))?;

    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("read response to {method} {path} from {addr}"))?;
    parse_response(&raw, method == "HEAD").with_context(|| format!("{method} http://{addr}{path}"))
}

fn parse_response(raw: &[u8], is_head: bool) -> Result<Response> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("response has no header terminator ({} bytes)", raw.len());
    };
    let head = std::str::from_utf8(&raw[..split]).context("response head is not utf-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("malformed status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect::<Vec<_>>();

    let mut body = raw[split + 4..].to_vec();
    if is_head {
        body.clear();
    } else if let Some(len) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
    {
        if body.len() < len {
            bail!("body truncated: {} of {len} bytes", body.len());
        }
        body.truncate(len);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let raw =
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nDocker-Content-Digest: sha256:ab\r\n\r\n{}";
        let r = parse_response(raw, false).expect("parse");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("docker-content-digest"), Some("sha256:ab"));
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn rejects_truncated_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}";
        assert!(parse_response(raw, false).is_err());
    }

    #[test]
    fn basic_auth_is_base64_of_user_colon_pass() {
        assert_eq!(basic_auth("user", "pass"), "Basic dXNlcjpwYXNz");
    }
}
