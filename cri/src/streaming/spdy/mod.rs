//! SPDY/3.1 framing: the multiplexing that kubectl, client-go and the kubelet put on an
//! upgraded HTTP/1.1 connection (`Upgrade: SPDY/3.1`) for exec, attach and port-forward.
//!
//! Only what those peers use is modelled. Like their implementation (spdystream), we
//! neither send nor enforce flow-control windows: WINDOW_UPDATE and SETTINGS frames are
//! parsed and ignored. Header blocks of SYN_STREAM, SYN_REPLY and HEADERS are compressed
//! with one zlib stream per direction for the whole connection, primed with the SPDY/3
//! dictionary and flushed (Z_SYNC_FLUSH) after each block; so every block must be
//! decoded in order, also those of frames we ignore.
//!
//! [`Encoder`] and [`Decoder`] are `tokio_util` codecs; [`conn`] runs a connection.

pub mod conn;
mod dictionary;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

pub use dictionary::DICTIONARY;

/// The SPDY version in every control frame.
pub const VERSION: u16 = 3;
/// Largest payload a frame's 24-bit length can carry.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// A decompressed header block larger than this is refused (a zlib bomb).
const MAX_HEADER_BLOCK: usize = 256 << 10;
/// More header pairs than this in one block is refused.
const MAX_HEADERS: usize = 1024;

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
}

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;
const FLAG_CLEAR_SETTINGS: u8 = 0x01;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spdy control frame of version {0}, want 3")]
    UnsupportedVersion(u16),
    #[error("spdy {kind} frame with {len} byte payload is malformed")]
    BadLength { kind: &'static str, len: usize },
    #[error("spdy {kind} frame on stream 0")]
    ZeroStream { kind: &'static str },
    #[error("spdy header block: {0}")]
    BadHeaders(&'static str),
    #[error("spdy header block does not decompress: {0}")]
    Inflate(String),
    #[error("spdy header block does not compress: {0}")]
    Deflate(String),
    #[error("spdy frame payload of {0} bytes exceeds the 24-bit length")]
    TooLarge(usize),
    #[error("spdy connection: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A header block: lowercase names, in order. Several values of one name travel as one
/// value joined by NUL bytes; [`Headers::get`] returns the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair; the name is lowercased as SPDY requires.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.0.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.split('\0').next())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            4 + self
                .0
                .iter()
                .map(|(n, v)| 8 + n.len() + v.len())
                .sum::<usize>(),
        );
        out.put_u32(self.0.len() as u32);
        for (name, value) in &self.0 {
            out.put_u32(name.len() as u32);
            out.put_slice(name.as_bytes());
            out.put_u32(value.len() as u32);
            out.put_slice(value.as_bytes());
        }
        out
    }

    fn decode(mut block: &[u8]) -> Result<Self> {
        let bad = Error::BadHeaders;
        if block.remaining() < 4 {
            return Err(bad("truncated count"));
        }
        let count = block.get_u32() as usize;
        if count > MAX_HEADERS {
            return Err(bad("too many headers"));
        }
        let mut pairs = Vec::with_capacity(count);
        let take = |block: &mut &[u8]| -> Result<String> {
            if block.remaining() < 4 {
                return Err(bad("truncated length"));
            }
            let len = block.get_u32() as usize;
            if block.remaining() < len {
                return Err(bad("truncated string"));
            }
            let s = String::from_utf8_lossy(&block[..len]).into_owned();
            block.advance(len);
            Ok(s)
        };
        for _ in 0..count {
            let name = take(&mut block)?.to_ascii_lowercase();
            let value = take(&mut block)?;
            pairs.push((name, value));
        }
        if block.has_remaining() {
            return Err(bad("trailing bytes"));
        }
        Ok(Self(pairs))
    }
}

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    /// 24 bits.
    pub id: u32,
    pub value: u32,
}

/// A SPDY/3 frame. Stream ids are 31 bits; the reserved top bit is dropped on decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        /// 0 (highest) to 7.
        priority: u8,
        slot: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        clear: bool,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        fin: bool,
        data: Bytes,
    },
    /// A control frame type SPDY/3 does not define; peers must ignore it.
    Unknown {
        frame_type: u16,
    },
}

/// Writes frames; owns the compressing half of the header zlib stream.
pub struct Encoder {
    z: Compress,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    pub fn new() -> Result<Self> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(&DICTIONARY)
            .map_err(|e| Error::Deflate(e.to_string()))?;
        Ok(Self { z })
    }

    /// Compresses one header block and flushes it, so the peer can decode it whole.
    fn deflate(&mut self, headers: &Headers) -> Result<Vec<u8>> {
        let input = headers.encode();
        let mut out = Vec::with_capacity(input.len() + 64);
        let mut consumed = 0usize;
        loop {
            let before = self.z.total_in();
            self.z
                .compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Deflate(e.to_string()))?;
            consumed += (self.z.total_in() - before) as usize;
            // Done once all input is in and the flush fit in the space we gave.
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }

    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<()> {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > MAX_PAYLOAD {
                    return Err(Error::TooLarge(data.len()));
                }
                out.reserve(8 + data.len());
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(length_word(flag(*fin, FLAG_FIN), data.len()));
                out.put_slice(data);
                Ok(())
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                let block = self.deflate(headers)?;
                let mut p = Vec::with_capacity(10 + block.len());
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(associated_to & 0x7fff_ffff);
                p.put_u8((priority & 0x07) << 5);
                p.put_u8(*slot);
                p.put_slice(&block);
                let flags = flag(*fin, FLAG_FIN) | flag(*unidirectional, FLAG_UNIDIRECTIONAL);
                control(out, TYPE_SYN_STREAM, flags, &p)
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            } => {
                let block = self.deflate(headers)?;
                let mut p = Vec::with_capacity(4 + block.len());
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_slice(&block);
                control(out, TYPE_SYN_REPLY, flag(*fin, FLAG_FIN), &p)
            }
            Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let block = self.deflate(headers)?;
                let mut p = Vec::with_capacity(4 + block.len());
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_slice(&block);
                control(out, TYPE_HEADERS, flag(*fin, FLAG_FIN), &p)
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = Vec::with_capacity(8);
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(*status);
                control(out, TYPE_RST_STREAM, 0, &p)
            }
            Frame::Settings { clear, entries } => {
                let mut p = Vec::with_capacity(4 + 8 * entries.len());
                p.put_u32(entries.len() as u32);
                for e in entries {
                    p.put_u32((u32::from(e.flags) << 24) | (e.id & 0x00ff_ffff));
                    p.put_u32(e.value);
                }
                control(out, TYPE_SETTINGS, flag(*clear, FLAG_CLEAR_SETTINGS), &p)
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut p = Vec::with_capacity(8);
                p.put_u32(last_good_stream_id & 0x7fff_ffff);
                p.put_u32(*status);
                control(out, TYPE_GOAWAY, 0, &p)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = Vec::with_capacity(8);
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(delta & 0x7fff_ffff);
                control(out, TYPE_WINDOW_UPDATE, 0, &p)
            }
            Frame::Unknown { frame_type } => control(out, *frame_type, 0, &[]),
        }
    }
}

fn flag(set: bool, bit: u8) -> u8 {
    if set { bit } else { 0 }
}

fn length_word(flags: u8, len: usize) -> u32 {
    (u32::from(flags) << 24) | (len as u32 & 0x00ff_ffff)
}

fn control(out: &mut BytesMut, frame_type: u16, flags: u8, payload: &[u8]) -> Result<()> {
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::TooLarge(payload.len()));
    }
    out.reserve(8 + payload.len());
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32(length_word(flags, payload.len()));
    out.put_slice(payload);
    Ok(())
}

/// Reads frames; owns the decompressing half of the header zlib stream.
pub struct Decoder {
    z: Decompress,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }

    /// Inflates one header block (all of it was flushed by the sender).
    fn inflate(&mut self, input: &[u8]) -> Result<Headers> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut consumed = 0usize;
        loop {
            let before = self.z.total_in();
            let status =
                match self
                    .z
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync)
                {
                    Ok(s) => s,
                    Err(e) if e.needs_dictionary().is_some() => {
                        consumed += (self.z.total_in() - before) as usize;
                        self.z
                            .set_dictionary(&DICTIONARY)
                            .map_err(|e| Error::Inflate(e.to_string()))?;
                        continue;
                    }
                    Err(e) => return Err(Error::Inflate(e.to_string())),
                };
            let progressed = self.z.total_in() != before;
            consumed += (self.z.total_in() - before) as usize;
            if consumed == input.len() && out.len() < out.capacity() {
                break;
            }
            if status == Status::StreamEnd {
                return Err(Error::Inflate("stream ended".into()));
            }
            if out.len() >= MAX_HEADER_BLOCK {
                return Err(Error::BadHeaders("block too large"));
            }
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            } else if !progressed {
                return Err(Error::Inflate("truncated block".into()));
            }
        }
        Headers::decode(&out)
    }

    /// Decodes one frame from the front of `buf`, or `None` until it holds a whole one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>> {
        if buf.len() < 8 {
            buf.reserve(8);
            return Ok(None);
        }
        let word = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = usize::from(buf[5]) << 16 | usize::from(buf[6]) << 8 | usize::from(buf[7]);
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        buf.advance(8);
        let mut p = buf.split_to(len).freeze();
        let fin = flags & FLAG_FIN != 0;
        if word & 0x8000_0000 == 0 {
            let stream_id = word & 0x7fff_ffff;
            if stream_id == 0 {
                return Err(Error::ZeroStream { kind: "DATA" });
            }
            return Ok(Some(Frame::Data {
                stream_id,
                fin,
                data: p,
            }));
        }
        let version = ((word >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let frame_type = (word & 0xffff) as u16;
        let need = |kind: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Error::BadLength { kind, len })
            }
        };
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                need("SYN_STREAM", len >= 10)?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let associated_to = p.get_u32() & 0x7fff_ffff;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                let headers = self.inflate(&p)?;
                if stream_id == 0 {
                    return Err(Error::ZeroStream { kind: "SYN_STREAM" });
                }
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let kind = if frame_type == TYPE_HEADERS {
                    "HEADERS"
                } else {
                    "SYN_REPLY"
                };
                need(kind, len >= 4)?;
                let stream_id = p.get_u32() & 0x7fff_ffff;
                let headers = self.inflate(&p)?;
                if frame_type == TYPE_HEADERS {
                    Frame::Headers {
                        stream_id,
                        fin,
                        headers,
                    }
                } else {
                    Frame::SynReply {
                        stream_id,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need("RST_STREAM", len == 8)?;
                Frame::RstStream {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    status: p.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                need("SETTINGS", len >= 4)?;
                let n = p.get_u32() as usize;
                need("SETTINGS", n.checked_mul(8) == Some(len - 4))?;
                let entries = (0..n)
                    .map(|_| {
                        let id = p.get_u32();
                        Setting {
                            flags: (id >> 24) as u8,
                            id: id & 0x00ff_ffff,
                            value: p.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            TYPE_PING => {
                need("PING", len == 4)?;
                Frame::Ping { id: p.get_u32() }
            }
            TYPE_GOAWAY => {
                // SPDY/2 had no status; accept its 4-byte form too.
                need("GOAWAY", len == 8 || len == 4)?;
                let last_good_stream_id = p.get_u32() & 0x7fff_ffff;
                let status = if p.remaining() >= 4 { p.get_u32() } else { 0 };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                need("WINDOW_UPDATE", len == 8)?;
                Frame::WindowUpdate {
                    stream_id: p.get_u32() & 0x7fff_ffff,
                    delta: p.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(Some(frame))
    }
}

impl tokio_util::codec::Decoder for Decoder {
    type Item = Frame;
    type Error = Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>> {
        Decoder::decode(self, src)
    }
}

impl tokio_util::codec::Encoder<Frame> for Encoder {
    type Error = Error;
    fn encode(&mut self, item: Frame, dst: &mut BytesMut) -> Result<()> {
        Encoder::encode(self, &item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> Headers {
        Headers::new()
            .with("streamType", "stdout")
            .with("port", "8080")
            .with("requestid", "0")
    }

    fn all_frames() -> Vec<Frame> {
        vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: headers(),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 1,
                priority: 0,
                slot: 0,
                fin: true,
                unidirectional: true,
                headers: Headers::new(),
            },
            Frame::SynReply {
                stream_id: 3,
                fin: false,
                headers: Headers::new(),
            },
            Frame::Headers {
                stream_id: 5,
                fin: true,
                headers: Headers::new().with("x", "a\0b"),
            },
            Frame::Data {
                stream_id: 1,
                fin: false,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 7,
                fin: true,
                data: Bytes::new(),
            },
            Frame::RstStream {
                stream_id: 9,
                status: rst::CANCEL,
            },
            Frame::Settings {
                clear: true,
                entries: vec![Setting {
                    flags: 1,
                    id: 7,
                    value: 65536,
                }],
            },
            Frame::Ping { id: 1 },
            Frame::GoAway {
                last_good_stream_id: 11,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 1 << 20,
            },
            Frame::Unknown { frame_type: 10 },
        ]
    }

    #[test]
    fn every_frame_round_trips_through_one_connection() {
        let mut enc = Encoder::new().expect("test fixture");
        let mut dec = Decoder::new();
        let mut wire = BytesMut::new();
        let frames = all_frames();
        for f in &frames {
            enc.encode(f, &mut wire).expect("test fixture");
        }
        // Delivered a byte at a time, frames come out whole and in order.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(f) = dec.decode(&mut buf).expect("test fixture") {
                got.push(f);
            }
        }
        assert_eq!(got, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn wire_layout_of_fixed_frames() {
        let mut enc = Encoder::new().expect("test fixture");
        let cases: Vec<(Frame, Vec<u8>)> = vec![
            (
                Frame::Data {
                    stream_id: 5,
                    fin: true,
                    data: Bytes::from_static(b"hi"),
                },
                vec![0, 0, 0, 5, 1, 0, 0, 2, b'h', b'i'],
            ),
            (
                Frame::RstStream {
                    stream_id: 3,
                    status: 5,
                },
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 5],
            ),
            (
                Frame::Ping { id: 2 },
                vec![0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 2],
            ),
            (
                Frame::GoAway {
                    last_good_stream_id: 7,
                    status: 0,
                },
                vec![0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0, 0, 0],
            ),
            (
                Frame::WindowUpdate {
                    stream_id: 1,
                    delta: 0x100,
                },
                vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 1, 0],
            ),
            (
                Frame::Settings {
                    clear: false,
                    entries: vec![Setting {
                        flags: 0,
                        id: 4,
                        value: 100,
                    }],
                },
                vec![
                    0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 4, 0, 0, 0, 100,
                ],
            ),
        ];
        for (frame, want) in cases {
            let mut out = BytesMut::new();
            enc.encode(&frame, &mut out).expect("test fixture");
            assert_eq!(&out[..], &want[..], "{frame:?}");
        }
    }

    #[test]
    fn header_blocks_use_the_spdy_dictionary() {
        let mut enc = Encoder::new().expect("test fixture");
        let mut out = BytesMut::new();
        enc.encode(
            &Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            },
            &mut out,
        )
        .expect("test fixture");
        // zlib header with FDICT set, then the dictionary's Adler-32: what Go's
        // zlib.NewReaderDict checks.
        let z = &out[12..];
        assert_eq!(z[0] & 0x0f, 8, "deflate");
        assert_ne!(z[1] & 0x20, 0, "FDICT");
        assert_eq!(u16::from_be_bytes([z[0], z[1]]) % 31, 0, "FCHECK");
        assert_eq!(&z[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
        // Sync flush: the block ends with an empty stored block.
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    }

    #[test]
    fn header_block_written_by_plain_zlib_with_the_dictionary_decodes() {
        // An independent writer: flate2's own stream, as a Go peer's would be.
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&DICTIONARY).expect("test fixture");
        let block = headers().encode();
        let mut compressed = Vec::with_capacity(1024);
        z.compress_vec(&block, &mut compressed, FlushCompress::Sync)
            .expect("test fixture");
        let mut frame = BytesMut::new();
        frame.put_u16(0x8003);
        frame.put_u16(TYPE_SYN_STREAM);
        frame.put_u32(10 + compressed.len() as u32);
        frame.put_u32(1);
        frame.put_u32(0);
        frame.put_u16(0);
        frame.put_slice(&compressed);
        let got = Decoder::new()
            .decode(&mut frame)
            .expect("test fixture")
            .expect("test fixture");
        let Frame::SynStream { headers: h, .. } = got else {
            panic!("{got:?}")
        };
        assert_eq!(h.get("streamtype"), Some("stdout"));
        assert_eq!(h.get("StreamType"), Some("stdout"));
        assert_eq!(h.get("port"), Some("8080"));
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let cases: Vec<Vec<u8>> = vec![
            // DATA on stream 0
            vec![0, 0, 0, 0, 0, 0, 0, 0],
            // version 2
            vec![0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1],
            // PING with 3 bytes
            vec![0x80, 3, 0, 6, 0, 0, 0, 3, 0, 0, 1],
            // RST with 4 bytes
            vec![0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1],
            // SYN_STREAM shorter than its fixed part
            vec![0x80, 3, 0, 1, 0, 0, 0, 2, 0, 1],
            // SYN_REPLY whose header block is not zlib
            vec![0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4],
            // SETTINGS claiming more entries than it holds
            vec![0x80, 3, 0, 4, 0, 0, 0, 4, 0, 0, 0, 9],
        ];
        for bytes in cases {
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(Decoder::new().decode(&mut buf).is_err(), "{bytes:?}");
        }
    }

    #[test]
    fn header_block_parser_rejects_truncation() {
        let good = headers().encode();
        assert_eq!(Headers::decode(&good).expect("test fixture"), headers());
        for cut in 0..good.len() {
            assert!(Headers::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(Headers::decode(&trailing).is_err());
    }
}
