//! `/containerLogs/{namespace}/{pod}/{container}`: the CRI log files of a container
//! (`<podLogsDir>/<ns>_<pod>_<uid>/<container>/<restart>.log`) read as upstream's
//! `kubectl logs` options say (tailLines, limitBytes, timestamps, sinceSeconds,
//! previous, follow).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::mpsc;

/// How often a followed log whose file is quiet is checked for its container having
/// stopped (new records wake the reader at once, through inotify).
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid query parameter {name}={value:?}")]
    InvalidParam { name: &'static str, value: String },
}

/// A DNS-1123 label: what namespaces and container names are.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: what pod names are (dots only between labels).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The validated segments of a containerLogs path: none can name a path outside the
/// pod's log directory (no `/`, no `..`, nothing but DNS names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl Target {
    pub fn parse(namespace: &str, pod: &str, container: &str) -> Result<Self, Error> {
        let bad = |what, value: &str, reason| Error::InvalidName {
            what,
            value: value.to_string(),
            reason,
        };
        if !is_dns_label(namespace) {
            return Err(bad("namespace", namespace, "not a DNS-1123 label"));
        }
        if !is_dns_subdomain(pod) {
            return Err(bad("pod name", pod, "not a DNS-1123 subdomain"));
        }
        if !is_dns_label(container) {
            return Err(bad("container name", container, "not a DNS-1123 label"));
        }
        Ok(Self {
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
        })
    }
}

/// The options of a log request (upstream's PodLogOptions query parameters).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub timestamps: bool,
    pub since_seconds: Option<u64>,
    pub previous: bool,
    pub follow: bool,
}

impl Options {
    pub fn from_query(query: &[(String, String)]) -> Result<Self, Error> {
        let mut o = Self::default();
        for (k, v) in query {
            let num = |name: &'static str| {
                v.parse::<i64>()
                    .ok()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| Error::InvalidParam {
                        name,
                        value: v.clone(),
                    })
            };
            let flag = |name: &'static str| match v.as_str() {
                "" | "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(Error::InvalidParam {
                    name,
                    value: v.clone(),
                }),
            };
            match k.as_str() {
                "tailLines" => o.tail_lines = Some(num("tailLines")?),
                "limitBytes" => {
                    let n = num("limitBytes")?;
                    if n == 0 {
                        return Err(Error::InvalidParam {
                            name: "limitBytes",
                            value: v.clone(),
                        });
                    }
                    o.limit_bytes = Some(n);
                }
                "sinceSeconds" => {
                    let n = num("sinceSeconds")?;
                    if n == 0 {
                        return Err(Error::InvalidParam {
                            name: "sinceSeconds",
                            value: v.clone(),
                        });
                    }
                    o.since_seconds = Some(n);
                }
                "timestamps" => o.timestamps = flag("timestamps")?,
                "previous" => o.previous = flag("previous")?,
                "follow" => o.follow = flag("follow")?,
                _ => {}
            }
        }
        Ok(o)
    }
}

/// The log files of one container instance: `<restart>.log`, newest last.
pub fn instances(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_suffix(".log")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    found.sort();
    found
}

/// One parsed record: timestamp, whether it closes a line, content.
fn parse_record(line: &[u8]) -> Option<(&[u8], bool, &[u8])> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let ts = parts.next()?;
    let stream = parts.next()?;
    if stream != b"stdout" && stream != b"stderr" {
        return None;
    }
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some((ts, full, parts.next().unwrap_or_default()))
}

/// `secs` since the epoch as the log's timestamp format (UTC, nine digits).
pub fn format_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000000000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Turns CRI records into the text a client reads; partial records are joined.
#[derive(Debug, Default)]
pub struct Formatter {
    timestamps: bool,
    since: Option<String>,
    pending: Vec<u8>,
    pending_ts: Option<Vec<u8>>,
}

impl Formatter {
    pub fn new(opts: &Options, now: SystemTime) -> Self {
        let since = opts.since_seconds.map(|s| {
            let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            format_timestamp(now.saturating_sub(s))
        });
        Self {
            timestamps: opts.timestamps,
            since,
            ..Self::default()
        }
    }

    /// The complete lines among `records` (whole `\n`-terminated records).
    pub fn lines(&mut self, records: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for rec in records.split(|b| *b == b'\n') {
            let Some((ts, full, text)) = parse_record(rec) else {
                continue;
            };
            if self.pending_ts.is_none() {
                self.pending_ts = Some(ts.to_vec());
            }
            self.pending.extend_from_slice(text);
            if !full {
                continue;
            }
            let ts = self.pending_ts.take().unwrap_or_default();
            let text = std::mem::take(&mut self.pending);
            if self
                .since
                .as_ref()
                .is_some_and(|s| ts.as_slice() < s.as_bytes())
            {
                continue;
            }
            let mut line = Vec::with_capacity(ts.len() + text.len() + 2);
            if self.timestamps {
                line.extend_from_slice(&ts);
                line.push(b' ');
            }
            line.extend_from_slice(&text);
            line.push(b'\n');
            out.push(line);
        }
        out
    }
}

/// Keeps the last `tail` lines and at most `limit` bytes in all.
pub fn select(lines: Vec<Vec<u8>>, opts: &Options) -> Vec<u8> {
    let skip = match opts.tail_lines {
        Some(t) => lines
            .len()
            .saturating_sub(usize::try_from(t).unwrap_or(usize::MAX)),
        None => 0,
    };
    let mut out: Vec<u8> = lines.into_iter().skip(skip).flatten().collect();
    if let Some(limit) = opts.limit_bytes {
        out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    }
    out
}

/// Reads the whole records of `path` from `offset`; returns them and the new offset
/// (a trailing partial write is left for the next read).
async fn read_records(path: &Path, offset: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    // Truncated (or replaced) under us: start again.
    let offset = if len < offset { 0 } else { offset };
    f.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).await?;
    let whole = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    buf.truncate(whole);
    Ok((buf, offset + whole as u64))
}

/// What the caller of [`stream`] says about the container while following.
pub trait Liveness: Send + 'static {
    /// Whether the container instance may still write to its log.
    fn running(&self) -> bool;
}

/// Sends the selected log of `path` into `tx`; with `follow`, then new lines until the
/// container stops, a newer instance starts, or the client goes away.
pub async fn stream(
    path: PathBuf,
    opts: Options,
    live: impl Liveness,
    tx: mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let mut fmt = Formatter::new(&opts, SystemTime::now());
    let (records, mut offset) = read_records(&path, 0).await?;
    let first = select(fmt.lines(&records), &opts);
    let mut budget = opts
        .limit_bytes
        .map(|l| l.saturating_sub(first.len() as u64));
    if !first.is_empty() && tx.send(Bytes::from(first)).await.is_err() {
        return Ok(());
    }
    if !opts.follow {
        return Ok(());
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    // A write to the log (or a newer instance's log appearing) wakes the reader; a
    // burst of writes is one wake-up.
    let (wake_tx, mut wake_rx) = mpsc::channel::<()>(1);
    let _watcher = {
        use notify::Watcher as _;
        notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if ev.is_ok() {
                let _ = wake_tx.try_send(());
            }
        })
        .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::NonRecursive).map(|()| w))
        .map_err(|e| tracing::warn!(dir = %dir.display(), err = %e, "watching a followed log; checking it every second"))
        .ok()
    };
    loop {
        if budget == Some(0) {
            return Ok(());
        }
        let running = live.running();
        let (records, next) = read_records(&path, offset).await?;
        offset = next;
        let mut out: Vec<u8> = fmt.lines(&records).into_iter().flatten().collect();
        if let Some(b) = budget.as_mut() {
            out.truncate(usize::try_from(*b).unwrap_or(usize::MAX));
            *b -= out.len() as u64;
        }
        if !out.is_empty() && tx.send(Bytes::from(out)).await.is_err() {
            return Ok(());
        }
        let newer = instances(&dir).last().is_some_and(|(_, p)| *p != path);
        if (!running || newer) && records.is_empty() {
            return Ok(());
        }
        tokio::select! {
            _ = wake_rx.recv() => {}
            _ = tokio::time::sleep(LIVENESS_CHECK) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_that_escape_are_rejected() {
        for (ns, pod, c) in [
            ("default", "p", "../../etc"),
            ("default", "p", ".."),
            ("default", "p", "."),
            ("default", "p", "a/b"),
            ("default", "p", "..%2F..%2Fetc"),
            ("default", "p", "%2e%2e"),
            ("default", "p", ""),
            ("default", "..", "app"),
            ("default", "a..b", "app"),
            ("default", ".p", "app"),
            ("default", "p/../../x", "app"),
            ("..", "p", "app"),
            ("", "p", "app"),
            ("a/b", "p", "app"),
            ("Default", "p", "app"),
            ("default", "p", "App"),
            ("default", "p", "-app"),
            ("default", "p", "app\0"),
            ("default", "p", &"a".repeat(64)),
        ] {
            assert!(Target::parse(ns, pod, c).is_err(), "{ns:?}/{pod:?}/{c:?}");
        }
        for (ns, pod, c) in [
            ("default", "p", "app"),
            ("kube-system", "etcd-node.example", "etcd"),
            ("a1", "web-0", "c-1"),
        ] {
            assert!(Target::parse(ns, pod, c).is_ok(), "{ns:?}/{pod:?}/{c:?}");
        }
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn options_from_query() {
        let o = Options::from_query(&q(&[
            ("tailLines", "2"),
            ("limitBytes", "10"),
            ("timestamps", "true"),
            ("sinceSeconds", "5"),
            ("previous", "false"),
            ("follow", "1"),
        ]))
        .expect("valid options");
        assert_eq!(
            o,
            Options {
                tail_lines: Some(2),
                limit_bytes: Some(10),
                timestamps: true,
                since_seconds: Some(5),
                previous: false,
                follow: true,
            }
        );
        for bad in [
            ("tailLines", "-1"),
            ("tailLines", "x"),
            ("limitBytes", "0"),
            ("sinceSeconds", "0"),
            ("follow", "yes"),
        ] {
            assert!(Options::from_query(&q(&[bad])).is_err(), "{bad:?}");
        }
    }

    const LOG: &[u8] = b"2024-01-01T00:00:01.000000000Z stdout F one\n\
2024-01-01T00:00:02.000000000Z stderr F two\n\
2024-01-01T00:00:03.000000000Z stdout P thr\n\
2024-01-01T00:00:03.500000000Z stdout F ee\n\
garbage\n\
2024-01-01T00:00:04.000000000Z stdout F four\n";

    fn read(opts: Options, now_secs: u64) -> String {
        let now = UNIX_EPOCH + Duration::from_secs(now_secs);
        let mut f = Formatter::new(&opts, now);
        String::from_utf8(select(f.lines(LOG), &opts)).expect("utf-8")
    }

    #[test]
    fn log_reading_options() {
        // 2024-01-01T00:00:00Z
        let t0 = 1_704_067_200;
        assert_eq!(format_timestamp(t0), "2024-01-01T00:00:00.000000000Z");
        assert_eq!(read(Options::default(), t0), "one\ntwo\nthree\nfour\n");
        let tail = Options {
            tail_lines: Some(2),
            ..Options::default()
        };
        assert_eq!(read(tail, t0), "three\nfour\n");
        let zero = Options {
            tail_lines: Some(0),
            ..Options::default()
        };
        assert_eq!(read(zero, t0), "");
        let limit = Options {
            limit_bytes: Some(6),
            ..Options::default()
        };
        assert_eq!(read(limit, t0), "one\ntw");
        let ts = Options {
            timestamps: true,
            tail_lines: Some(1),
            ..Options::default()
        };
        assert_eq!(read(ts, t0), "2024-01-01T00:00:04.000000000Z four\n");
        // Joined partial lines carry the first record's timestamp.
        let since = Options {
            since_seconds: Some(7),
            ..Options::default()
        };
        assert_eq!(read(since, t0 + 10), "three\nfour\n");
    }

    #[tokio::test]
    async fn stream_stops_at_limit_and_without_follow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        std::fs::write(&path, LOG).expect("write log");
        struct Stopped;
        impl Liveness for Stopped {
            fn running(&self) -> bool {
                false
            }
        }
        let (tx, mut rx) = mpsc::channel(8);
        let opts = Options {
            follow: true,
            ..Options::default()
        };
        stream(path, opts, Stopped, tx).await.expect("stream");
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            got.extend_from_slice(&b);
        }
        assert_eq!(got, b"one\ntwo\nthree\nfour\n");
    }

    #[test]
    fn instances_sorted_numerically() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in ["0.log", "10.log", "2.log", "2.log.20240101-000000", "x.log"] {
            std::fs::write(dir.path().join(n), "").expect("write");
        }
        let got: Vec<u32> = instances(dir.path()).into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, vec![0, 2, 10]);
    }
}
