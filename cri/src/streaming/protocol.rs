//! The Kubernetes streaming protocols as data: subprotocol names and their negotiation,
//! the WebSocket channel framing, and the resize messages.
//!
//! - Exec and attach over WebSocket: `v5.channel.k8s.io`, `v4.channel.k8s.io` or (no
//!   subprotocol, or `channel.k8s.io`) the first version. Every binary message starts
//!   with a channel byte: 0 stdin, 1 stdout, 2 stderr, 3 error (status), 4 resize. v5
//!   adds message `[255, n]`: the client closed channel `n` (stdin's EOF).
//! - Exec and attach over SPDY: the client opens one stream per channel, named by its
//!   `streamType` header; `X-Stream-Protocol-Version` picks `v5`/`v4` (status as JSON),
//!   `v3` (resize) or `v2` (plain-text errors) `.channel.k8s.io`.
//! - Port-forward over SPDY (`portforward.k8s.io`): per connection a `data` and an
//!   `error` stream with `port` and `requestID` headers. Over WebSocket: per requested
//!   port channel `2i` (data) and `2i+1` (error), each starting with the port as two
//!   little-endian bytes.

use bytes::{BufMut as _, Bytes, BytesMut};
use serde::Deserialize;

use crate::runtime::container_stream::TermSize;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[CLOSE, channel]` closes a channel.
pub const CLOSE: u8 = 255;

/// SPDY stream types (`streamType` header).
pub mod stream_type {
    pub const ERROR: &str = "error";
    pub const STDIN: &str = "stdin";
    pub const STDOUT: &str = "stdout";
    pub const STDERR: &str = "stderr";
    pub const RESIZE: &str = "resize";
    pub const DATA: &str = "data";
}

/// SPDY headers of streams.
pub mod header {
    pub const STREAM_TYPE: &str = "streamtype";
    pub const PORT: &str = "port";
    pub const REQUEST_ID: &str = "requestid";
}

/// The SPDY port-forward protocol.
pub const PORT_FORWARD_SPDY: &str = "portforward.k8s.io";

/// A version of the remote command (exec/attach) protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io` (WebSocket only here): errors as text, no structured status.
    V1,
    /// `v2.channel.k8s.io` (SPDY): errors as text, no resize.
    V2,
    /// `v3.channel.k8s.io` (SPDY): adds resize.
    V3,
    /// `v4.channel.k8s.io`: the status as a `metav1.Status` JSON with the exit code.
    V4,
    /// `v5.channel.k8s.io`: adds closing a channel (WebSocket); as v4 over SPDY.
    V5,
}

impl Version {
    pub fn name(self) -> &'static str {
        match self {
            Version::V1 => "channel.k8s.io",
            Version::V2 => "v2.channel.k8s.io",
            Version::V3 => "v3.channel.k8s.io",
            Version::V4 => "v4.channel.k8s.io",
            Version::V5 => "v5.channel.k8s.io",
        }
    }

    /// Whether the error channel carries a JSON status (else plain text, only on
    /// failure).
    pub fn json_status(self) -> bool {
        self >= Version::V4
    }

    pub fn resize(self) -> bool {
        self >= Version::V3
    }
}

/// What we offer for exec and attach, best first.
pub const WEBSOCKET_EXEC: &[Version] = &[Version::V5, Version::V4, Version::V1];
pub const SPDY_EXEC: &[Version] = &[Version::V5, Version::V4, Version::V3, Version::V2];
/// WebSocket subprotocols of port-forward (all the same binary framing).
pub const WEBSOCKET_PORT_FORWARD: &[&str] =
    &["v4.channel.k8s.io", "portforward.k8s.io", "channel.k8s.io"];

/// The values of a header that lists tokens, over all its occurrences.
pub fn tokens<'a>(values: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    values
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// The first protocol the client lists that we support (the client orders by
/// preference, as client-go does).
pub fn negotiate<'a, T: Copy>(
    offered: &[&str],
    supported: &'a [T],
    name: impl Fn(T) -> &'a str,
) -> Option<T> {
    offered
        .iter()
        .find_map(|o| supported.iter().copied().find(|s| name(*s) == *o))
}

/// A message on channel `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(1 + data.len());
    out.put_u8(channel);
    out.put_slice(data);
    out.freeze()
}

/// What a client's binary message means.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    Data {
        channel: u8,
        data: &'a [u8],
    },
    /// v5: the client will send nothing more on `channel`.
    Close {
        channel: u8,
    },
    /// Empty messages carry nothing.
    Empty,
}

pub fn parse(message: &[u8], version: Version) -> Incoming<'_> {
    match message {
        [] => Incoming::Empty,
        [CLOSE, channel, ..] if version >= Version::V5 => Incoming::Close { channel: *channel },
        [channel, data @ ..] => Incoming::Data {
            channel: *channel,
            data,
        },
    }
}

#[derive(Deserialize)]
struct WireSize {
    #[serde(rename = "Width", alias = "width")]
    width: u16,
    #[serde(rename = "Height", alias = "height")]
    height: u16,
}

/// Resize messages are a stream of JSON objects (`{"Width":80,"Height":24}`), one per
/// message over WebSocket and back to back (newline-separated) over SPDY.
#[derive(Debug, Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

/// A client that sends this much without one whole object is not sending sizes.
const MAX_RESIZE_BUFFER: usize = 4096;

impl ResizeDecoder {
    /// Feeds bytes; returns the sizes completed by them. Garbage is dropped.
    pub fn push(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<WireSize>();
        let mut keep_from = self.buf.len();
        loop {
            let at = stream.byte_offset();
            match stream.next() {
                None => break,
                Some(Ok(s)) => sizes.push(TermSize {
                    width: s.width,
                    height: s.height,
                }),
                Some(Err(e)) if e.is_eof() => {
                    keep_from = at;
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(err = %e, "dropping a malformed resize message");
                    break;
                }
            }
        }
        self.buf.drain(..keep_from);
        if self.buf.len() > MAX_RESIZE_BUFFER {
            self.buf.clear();
        }
        sizes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages() {
        assert_eq!(&frame(STDOUT, b"hi")[..], b"\x01hi");
        let cases: &[(&[u8], Version, Incoming<'_>)] = &[
            (b"", Version::V5, Incoming::Empty),
            (
                b"\x00abc",
                Version::V4,
                Incoming::Data {
                    channel: 0,
                    data: b"abc",
                },
            ),
            (b"\xff\x00", Version::V5, Incoming::Close { channel: 0 }),
            // Before v5, 255 is just a channel number nobody uses.
            (
                b"\xff\x00",
                Version::V4,
                Incoming::Data {
                    channel: 255,
                    data: b"\x00",
                },
            ),
            (
                b"\x04{}",
                Version::V1,
                Incoming::Data {
                    channel: 4,
                    data: b"{}",
                },
            ),
        ];
        for (msg, version, want) in cases {
            assert_eq!(&parse(msg, *version), want, "{msg:?} {version:?}");
        }
    }

    #[test]
    fn negotiation_follows_the_client_order() {
        let offered =
            tokens(["v4.channel.k8s.io, v5.channel.k8s.io", "channel.k8s.io"].into_iter());
        assert_eq!(
            negotiate(&offered, WEBSOCKET_EXEC, Version::name),
            Some(Version::V4)
        );
        let spdy = tokens(["v5.channel.k8s.io", "v4.channel.k8s.io"].into_iter());
        assert_eq!(
            negotiate(&spdy, SPDY_EXEC, Version::name),
            Some(Version::V5)
        );
        let old = tokens(["v2.channel.k8s.io"].into_iter());
        assert_eq!(negotiate(&old, SPDY_EXEC, Version::name), Some(Version::V2));
        assert_eq!(
            negotiate(&["base64.channel.k8s.io"], WEBSOCKET_EXEC, Version::name),
            None
        );
        assert_eq!(
            negotiate(&["portforward.k8s.io"], WEBSOCKET_PORT_FORWARD, |s| s),
            Some("portforward.k8s.io")
        );
    }

    #[test]
    fn resize_messages_split_and_joined() {
        let mut d = ResizeDecoder::default();
        let size = |width, height| TermSize { width, height };
        assert_eq!(d.push(br#"{"Width":80,"Height":24}"#), vec![size(80, 24)]);
        assert_eq!(d.push(br#"{"Width":100,"#), vec![]);
        assert_eq!(
            d.push(b"\"Height\":50}\n{\"width\":1,\"height\":2}\n"),
            vec![size(100, 50), size(1, 2)]
        );
        // Garbage is dropped, and the decoder carries on.
        assert_eq!(d.push(b"not json"), vec![]);
        assert_eq!(d.push(br#"{"Width":3,"Height":4}"#), vec![size(3, 4)]);
        assert_eq!(d.push(br#"{"Width":-1,"Height":4}"#), vec![]);
        assert_eq!(d.push(br#"{"Width":5,"Height":6}"#), vec![size(5, 6)]);
    }
}
