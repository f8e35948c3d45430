//! The CRI container log format, as the monitor writes it and the kubelet reads it.
//!
//! One record per line: `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <content>\n`.
//! `F` closes a line (its `\n` is not part of the content); `P` is a chunk of a longer
//! line, continued by the next record of the same stream. A reader joins `P` chunks
//! until an `F`. The timestamp is UTC with nine fractional digits, e.g.
//! `2016-10-06T00:17:09.669794202Z`, so records sort as strings.
//!
//! Everything here is synchronous std code: the monitor binary uses it and keeps no
//! runtime of its own.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Longest chunk kept in memory per stream before it is written as a `P` record.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output stream of the container a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The tag used in the log format.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "stdout" => Some(Stream::Stdout),
            "stderr" => Some(Stream::Stderr),
            _ => None,
        }
    }
}

/// Splits a byte stream into log records, keeping an unfinished line across reads.
///
/// A line is emitted as full (`F`) when its `\n` arrives, or as partial (`P`) when
/// `max` bytes have gathered without one, or by [`LineSplitter::finish`] at EOF.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter that emits partial records of at most `max` bytes (at least 1).
    pub fn new(max: usize) -> Self {
        Self {
            pending: Vec::new(),
            max: max.max(1),
        }
    }

    /// Feeds `data`, calling `emit(content, full)` for every complete record.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while !data.is_empty() {
            let room = self.max - self.pending.len();
            let window = &data[..data.len().min(room)];
            if let Some(nl) = window.iter().position(|&b| b == b'\n') {
                if self.pending.is_empty() {
                    emit(&window[..nl], true);
                } else {
                    self.pending.extend_from_slice(&window[..nl]);
                    emit(&self.pending, true);
                    self.pending.clear();
                }
                data = &data[nl + 1..];
            } else if window.len() == room {
                // The buffer limit is reached without a newline: a partial record.
                if self.pending.is_empty() {
                    emit(window, false);
                } else {
                    self.pending.extend_from_slice(window);
                    emit(&self.pending, false);
                    self.pending.clear();
                }
                data = &data[room..];
            } else {
                self.pending.extend_from_slice(window);
                data = &[];
            }
        }
    }

    /// At EOF: emits what is left of an unfinished line as a partial record.
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        if !self.pending.is_empty() {
            emit(&self.pending, false);
            self.pending.clear();
        }
    }

    /// Bytes held back waiting for a newline.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Writes CRI log records for both streams of one container to one file.
///
/// Write errors do not stop the caller: a record that cannot be written is dropped
/// (and counted) so the container's pipes keep draining when the disk fails.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    stdout: LineSplitter,
    stderr: LineSplitter,
    record: Vec<u8>,
    dropped: u64,
}

impl LogWriter {
    /// Opens (creates, appends to) the log file at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = open_log(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Some(file),
            stdout: LineSplitter::new(MAX_LINE),
            stderr: LineSplitter::new(MAX_LINE),
            record: Vec::with_capacity(128),
            dropped: 0,
        })
    }

    /// The path the writer (re)opens.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that could not be written since the writer was created.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Feeds bytes read from one stream; complete records are written at once.
    pub fn write(&mut self, stream: Stream, data: &[u8]) {
        let now = SystemTime::now();
        let Self {
            file,
            stdout,
            stderr,
            record,
            dropped,
            ..
        } = self;
        let splitter = match stream {
            Stream::Stdout => stdout,
            Stream::Stderr => stderr,
        };
        splitter.push(data, &mut |content, full| {
            emit_record(file, record, dropped, now, stream, full, content)
        });
    }

    /// At EOF of one stream: writes its unfinished line as a partial record.
    pub fn finish(&mut self, stream: Stream) {
        let now = SystemTime::now();
        let Self {
            file,
            stdout,
            stderr,
            record,
            dropped,
            ..
        } = self;
        let splitter = match stream {
            Stream::Stdout => stdout,
            Stream::Stderr => stderr,
        };
        splitter.finish(&mut |content, full| {
            emit_record(file, record, dropped, now, stream, full, content)
        });
    }

    /// Opens the path again (after the kubelet renamed the file for rotation). On
    /// failure the old file stays in use.
    pub fn reopen(&mut self) -> io::Result<()> {
        let file = open_log(&self.path)?;
        self.file = Some(file);
        Ok(())
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

fn emit_record(
    file: &mut Option<File>,
    record: &mut Vec<u8>,
    dropped: &mut u64,
    now: SystemTime,
    stream: Stream,
    full: bool,
    content: &[u8],
) {
    record.clear();
    record.extend_from_slice(rfc3339_nano(now).as_bytes());
    record.push(b' ');
    record.extend_from_slice(stream.as_str().as_bytes());
    record.extend_from_slice(if full { b" F " } else { b" P " });
    record.extend_from_slice(content);
    record.push(b'\n');
    let written = match file {
        Some(f) => f.write_all(record).is_ok(),
        None => false,
    };
    if !written {
        *dropped += 1;
    }
    // Do not keep a buffer grown by one huge record.
    if record.capacity() > 4 * MAX_LINE {
        *record = Vec::with_capacity(128);
    }
}

/// Formats a time as RFC 3339 in UTC with nanoseconds: `2016-10-06T00:17:09.669794202Z`.
/// Times before the Unix epoch are clamped to it.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Parses an RFC 3339 timestamp (`Z` or `±hh:mm`, 0–9 fractional digits).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let y = digits(&s[0..4])?;
    let mo = digits(&s[5..7])?;
    let d = digits(&s[8..10])?;
    let h = digits(&s[11..13])?;
    let mi = digits(&s[14..16])?;
    let sec = digits(&s[17..19])?;
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 {
        return None;
    }
    // 60 is a leap second; fold it into the next minute like most parsers.
    if sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 || n > 9 {
            return None;
        }
        nanos = u32::try_from(digits(&frac[..n])?).ok()? * 10u32.pow(9 - n as u32);
        rest = &frac[n..];
    }
    let offset: i64 = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh = digits(&rest[1..3])?;
            let om = digits(&rest[4..6])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' { -o } else { o }
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let unix = days * 86_400 + h * 3600 + mi * 60 + sec - offset;
    let unix = u64::try_from(unix).ok()?;
    Some(UNIX_EPOCH + Duration::new(unix, nanos))
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 → (year, month 1–12, day 1–31), proleptic Gregorian.
/// The usual era-based algorithm (eras of 400 years = 146097 days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468; // shift the epoch to 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month 1–12, day 1–31) → days since 1970-01-01; inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses one log record (without its trailing `\n`) into
/// `(timestamp, stream, full, content)`. `None` if the line is not a CRI log record.
///
/// Split a log on `\n` only: `str::lines` also drops a `\r` that belongs to the
/// content of a CRLF line.
pub fn parse_line(line: &str) -> Option<(SystemTime, Stream, bool, &str)> {
    let (ts, rest) = line.split_once(' ')?;
    let (stream, rest) = rest.split_once(' ')?;
    // The content may be empty: `... F ` or, from lax writers, `... F`.
    let (tag, content) = rest.split_once(' ').unwrap_or((rest, ""));
    let full = match tag {
        "F" => true,
        "P" => false,
        _ => return None,
    };
    Some((parse_rfc3339(ts)?, Stream::parse(stream)?, full, content))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the splitter over `reads` and renders records as `F:content` / `P:content`.
    fn split(max: usize, reads: &[&[u8]], eof: bool) -> Vec<String> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut emit = |c: &[u8], full: bool| {
            out.push(format!(
                "{}:{}",
                if full { 'F' } else { 'P' },
                String::from_utf8_lossy(c)
            ))
        };
        for r in reads {
            s.push(r, &mut emit);
        }
        if eof {
            s.finish(&mut emit);
        }
        out
    }

    /// (name, buffer limit, reads, then EOF?, records wanted)
    type SplitCase<'a> = (&'a str, usize, &'a [&'a [u8]], bool, &'a [&'a str]);

    #[test]
    fn splitter_table() {
        let cases: &[SplitCase] = &[
            ("one full line", 16, &[b"hello\n"], false, &["F:hello"]),
            (
                "two lines one read",
                16,
                &[b"a\nb\n"],
                false,
                &["F:a", "F:b"],
            ),
            (
                "line across reads",
                16,
                &[b"hel", b"lo\n"],
                false,
                &["F:hello"],
            ),
            ("held back until newline", 16, &[b"abc"], false, &[]),
            (
                "trailing data at eof",
                16,
                &[b"a\nbc"],
                true,
                &["F:a", "P:bc"],
            ),
            ("empty lines", 16, &[b"\n\n"], false, &["F:", "F:"]),
            ("crlf keeps the cr", 16, &[b"dos\r\n"], false, &["F:dos\r"]),
            ("lone cr is content", 16, &[b"a\rb\n"], false, &["F:a\rb"]),
            (
                "partial at limit",
                4,
                &[b"abcdefgh\n"],
                false,
                &["P:abcd", "P:efgh", "F:"],
            ),
            (
                "limit across reads",
                4,
                &[b"ab", b"cde\n"],
                false,
                &["P:abcd", "F:e"],
            ),
            ("exactly limit then nl", 4, &[b"abc\n"], false, &["F:abc"]),
            ("nothing at eof", 4, &[b"ab\n"], true, &["F:ab"]),
            ("empty read", 4, &[b"", b"x\n"], false, &["F:x"]),
        ];
        for (name, max, reads, eof, want) in cases {
            assert_eq!(split(*max, reads, *eof), *want, "case {name}");
        }
    }

    #[test]
    fn splitter_default_limit_is_16k() {
        let big = vec![b'x'; MAX_LINE + 10];
        let mut records = Vec::new();
        let mut s = LineSplitter::new(MAX_LINE);
        s.push(&big, &mut |c: &[u8], full| records.push((c.len(), full)));
        assert_eq!(records, vec![(MAX_LINE, false)]);
        assert_eq!(s.pending(), 10);
    }

    #[test]
    fn rfc3339_nano_table() {
        let cases: &[(u64, u32, &str)] = &[
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (1_475_713_029, 669_794_202, "2016-10-06T00:17:09.669794202Z"),
            (951_782_400, 1, "2000-02-29T00:00:00.000000001Z"), // leap year divisible by 400
            (951_868_799, 999_999_999, "2000-02-29T23:59:59.999999999Z"),
            (951_868_800, 0, "2000-03-01T00:00:00.000000000Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000000000Z"), // 2100 is not a leap year
            (1_709_164_800, 0, "2024-02-29T00:00:00.000000000Z"),
            (1_704_067_199, 0, "2023-12-31T23:59:59.000000000Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000000000Z"),
        ];
        for (secs, nanos, want) in cases {
            let t = UNIX_EPOCH + Duration::new(*secs, *nanos);
            assert_eq!(rfc3339_nano(t), *want);
            assert_eq!(parse_rfc3339(want), Some(t), "round trip {want}");
        }
    }

    #[test]
    fn civil_round_trip_over_centuries() {
        for days in (-800_000..800_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn parse_rfc3339_table() {
        let base = UNIX_EPOCH + Duration::from_secs(1_475_713_029);
        let cases: &[(&str, Option<SystemTime>)] = &[
            ("2016-10-06T00:17:09Z", Some(base)),
            (
                "2016-10-06T00:17:09.5Z",
                Some(base + Duration::from_millis(500)),
            ),
            ("2016-10-06T02:17:09+02:00", Some(base)),
            ("2016-10-05T23:17:09-01:00", Some(base)),
            ("2016-10-06T00:17:09", None),
            ("2016-10-06T00:17:09.Z", None),
            ("2016-10-06T00:17:09.1234567890Z", None),
            ("2016-13-06T00:17:09Z", None),
            ("2015-02-29T00:00:00Z", None),
            (
                "2016-02-29T00:00:00Z",
                Some(UNIX_EPOCH + Duration::from_secs(1_456_704_000)),
            ),
            ("garbage", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rfc3339(s), *want, "case {s:?}");
        }
    }

    #[test]
    fn parse_line_table() {
        let ts = "2016-10-06T00:17:09.669794202Z";
        let t = UNIX_EPOCH + Duration::new(1_475_713_029, 669_794_202);
        type Want<'a> = Option<(Stream, bool, &'a str)>;
        let cases: &[(String, Want)] = &[
            (
                format!("{ts} stdout F hello world"),
                Some((Stream::Stdout, true, "hello world")),
            ),
            (
                format!("{ts} stderr P part"),
                Some((Stream::Stderr, false, "part")),
            ),
            (format!("{ts} stdout F "), Some((Stream::Stdout, true, ""))),
            (format!("{ts} stdout F"), Some((Stream::Stdout, true, ""))),
            (
                format!("{ts} stdout F  two  spaces "),
                Some((Stream::Stdout, true, " two  spaces ")),
            ),
            (format!("{ts} stdin F x"), None),
            (format!("{ts} stdout X x"), None),
            ("not a timestamp stdout F x".to_string(), None),
            (String::new(), None),
        ];
        for (line, want) in cases {
            let got = parse_line(line);
            match want {
                Some((stream, full, content)) => {
                    assert_eq!(got, Some((t, *stream, *full, *content)), "case {line:?}")
                }
                None => assert_eq!(got, None, "case {line:?}"),
            }
        }
    }

    #[test]
    fn writer_writes_parsable_records_and_reopens() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.log");
        let mut w = LogWriter::open(&path)?;
        w.write(Stream::Stdout, b"out 1\nout");
        w.write(Stream::Stderr, b"err\r\n");
        w.write(Stream::Stdout, b" 2\n");
        w.write(Stream::Stdout, b"tail");
        w.finish(Stream::Stdout);

        let rotated = dir.path().join("c.log.1");
        std::fs::rename(&path, &rotated)?;
        w.reopen()?;
        w.write(Stream::Stderr, b"after\n");

        let records = |p: &Path| -> io::Result<Vec<(Stream, bool, String)>> {
            let text = std::fs::read_to_string(p)?;
            Ok(text
                .split_terminator('\n')
                .filter_map(parse_line)
                .map(|(_, s, f, c)| (s, f, c.to_string()))
                .collect())
        };
        assert_eq!(
            records(&rotated)?,
            vec![
                (Stream::Stdout, true, "out 1".to_string()),
                (Stream::Stderr, true, "err\r".to_string()),
                (Stream::Stdout, true, "out 2".to_string()),
                (Stream::Stdout, false, "tail".to_string()),
            ]
        );
        assert_eq!(
            records(&path)?,
            vec![(Stream::Stderr, true, "after".to_string())]
        );
        assert_eq!(w.dropped(), 0);
        Ok(())
    }
}
