//! Termination messages: the file a container may write its last words to
//! (`terminationMessagePath`), and, with `FallbackToLogsOnError`, the tail of its log
//! when it failed without writing one. As upstream: at most 4 KiB from the file; from
//! the log the last 80 lines, at most 2 KiB.
//!
//! The kubelet creates one empty file per container instance under
//! `<root>/pods/<uid>/containers/<name>/` and bind mounts it at the path; the
//! container's annotations say where it is, so a status read after an agent restart
//! (or from another runtime) finds it again.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use proto::v1;

use crate::{ANNOTATION_TERMINATION_MESSAGE_PATH, ANNOTATION_TERMINATION_MESSAGE_POLICY};

/// Most of the message file that is used.
pub const MAX_FILE_MESSAGE: u64 = 4096;
/// Most of the log tail that is used, in lines and bytes.
pub const LOG_TAIL_LINES: usize = 80;
pub const LOG_TAIL_BYTES: usize = 2048;

/// Creates the empty, world-writable message file of a new container instance (any
/// user in the container may write it) and returns its host path.
pub fn create_file(pod_dir: &Path, container: &str) -> io::Result<PathBuf> {
    let dir = pod_dir.join("containers").join(container);
    fs::create_dir_all(&dir)?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let path = dir.join(format!("{nanos:x}"));
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
    Ok(path)
}

/// The host file mounted at the container's termination message path, if any.
pub fn host_file(s: &v1::ContainerStatus) -> Option<&str> {
    let path = s.annotations.get(ANNOTATION_TERMINATION_MESSAGE_PATH)?;
    if path.is_empty() {
        return None;
    }
    s.mounts
        .iter()
        .find(|m| &m.container_path == path)
        .map(|m| m.host_path.as_str())
}

/// An exited container's status with its termination message appended to the runtime's
/// own message (upstream: "<runtime message>: <termination message>").
pub fn with_message(mut s: v1::ContainerStatus) -> v1::ContainerStatus {
    if s.state() != v1::ContainerState::ContainerExited {
        return s;
    }
    let mut msg = host_file(&s).map(read_file).unwrap_or_default();
    let fallback = s
        .annotations
        .get(ANNOTATION_TERMINATION_MESSAGE_POLICY)
        .is_some_and(|p| p == "FallbackToLogsOnError");
    // A container that could not even start has no logs to fall back to.
    if msg.is_empty() && fallback && s.exit_code != 0 && s.reason != "ContainerCannotRun" {
        msg = log_tail(Path::new(&s.log_path));
    }
    if !msg.is_empty() {
        if !s.message.is_empty() {
            s.message.push_str(": ");
        }
        s.message.push_str(&msg);
    }
    s
}

fn read_file(path: &str) -> String {
    let mut buf = Vec::new();
    match fs::File::open(path).and_then(|f| f.take(MAX_FILE_MESSAGE).read_to_end(&mut buf)) {
        Ok(_) => String::from_utf8_lossy(&buf).into_owned(),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(%path, err = %e, "reading a termination message");
            }
            String::new()
        }
    }
}

/// The last lines of a CRI log file (`<time> <stream> <P|F> <text>` lines), as text.
fn log_tail(path: &Path) -> String {
    if path.as_os_str().is_empty() {
        return String::new();
    }
    // Enough raw bytes for 80 lines of up to 2 KiB of text, plus their prefixes.
    const RAW: u64 = 64 * 1024;
    let read = || -> io::Result<Vec<u8>> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        let start = len.saturating_sub(RAW);
        f.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        f.take(RAW).read_to_end(&mut buf)?;
        if start > 0 {
            // The first line is cut: drop it.
            let cut = buf
                .iter()
                .position(|b| *b == b'\n')
                .map_or(buf.len(), |i| i + 1);
            buf.drain(..cut);
        }
        Ok(buf)
    };
    match read() {
        Ok(raw) => tail_of_cri_log(&String::from_utf8_lossy(&raw)),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), err = %e, "reading a container log");
            }
            String::new()
        }
    }
}

/// The text of the last [`LOG_TAIL_LINES`] lines of CRI log content (partial `P`
/// records joined to the next), at most [`LOG_TAIL_BYTES`] bytes from the end.
fn tail_of_cri_log(raw: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut partial = String::new();
    for record in raw.lines() {
        let mut fields = record.splitn(4, ' ');
        let (_time, _stream, tag) = (fields.next(), fields.next(), fields.next());
        let text = fields.next().unwrap_or_default();
        partial.push_str(text);
        if tag != Some("P") {
            lines.push(std::mem::take(&mut partial));
        }
    }
    if !partial.is_empty() {
        lines.push(partial);
    }
    let from = lines.len().saturating_sub(LOG_TAIL_LINES);
    let mut out = lines[from..].join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    if out.len() > LOG_TAIL_BYTES {
        let mut cut = out.len() - LOG_TAIL_BYTES;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out.drain(..cut);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32, policy: &str, file: &Path, log: &Path) -> v1::ContainerStatus {
        v1::ContainerStatus {
            state: v1::ContainerState::ContainerExited as i32,
            exit_code: code,
            annotations: [
                (
                    ANNOTATION_TERMINATION_MESSAGE_PATH.to_string(),
                    "/dev/termination-log".to_string(),
                ),
                (
                    ANNOTATION_TERMINATION_MESSAGE_POLICY.to_string(),
                    policy.to_string(),
                ),
            ]
            .into(),
            mounts: vec![v1::Mount {
                container_path: "/dev/termination-log".into(),
                host_path: file.display().to_string(),
                ..Default::default()
            }],
            log_path: log.display().to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn messages_from_the_file_or_the_log() -> io::Result<()> {
        let tmp = tempfile::tempdir()?;
        let file = create_file(tmp.path(), "app")?;
        assert_eq!(fs::metadata(&file)?.permissions().mode() & 0o777, 0o666);
        let log = tmp.path().join("0.log");
        fs::write(
            &log,
            "2026-01-01T00:00:00Z stdout F starting\n\
             2026-01-01T00:00:01Z stderr P half \n\
             2026-01-01T00:00:01Z stderr F a line\n\
             2026-01-01T00:00:02Z stderr F boom\n",
        )?;
        // Nothing written: only a failure under FallbackToLogsOnError reads the log.
        let tail = "starting\nhalf a line\nboom\n";
        assert_eq!(
            with_message(exited(1, "FallbackToLogsOnError", &file, &log)).message,
            tail
        );
        assert_eq!(
            with_message(exited(0, "FallbackToLogsOnError", &file, &log)).message,
            ""
        );
        assert_eq!(with_message(exited(1, "File", &file, &log)).message, "");
        let mut cannot_run = exited(1, "FallbackToLogsOnError", &file, &log);
        cannot_run.reason = "ContainerCannotRun".into();
        assert_eq!(with_message(cannot_run).message, "");
        // Written: the file wins, capped at 4 KiB, after the runtime's own message.
        fs::write(&file, "x".repeat(5000))?;
        let mut oom = exited(137, "FallbackToLogsOnError", &file, &log);
        oom.message = "OOMKilled".into();
        let got = with_message(oom).message;
        assert_eq!(got, format!("OOMKilled: {}", "x".repeat(4096)));
        // A running container is not looked at.
        let mut running = exited(0, "File", &file, &log);
        running.state = v1::ContainerState::ContainerRunning as i32;
        assert_eq!(with_message(running).message, "");
        // No mount at the path (another runtime, or an empty path): nothing.
        let mut bare = exited(1, "File", &file, &log);
        bare.mounts.clear();
        assert_eq!(with_message(bare).message, "");
        Ok(())
    }

    #[test]
    fn log_tail_is_80_lines_and_2_kib() {
        let raw: String = (0..200)
            .map(|i| format!("2026-01-01T00:00:00Z stdout F line {i}\n"))
            .collect();
        let tail = tail_of_cri_log(&raw);
        assert!(tail.starts_with("line 120\n"), "{tail}");
        assert!(tail.ends_with("line 199\n"));
        let long: String = (0..3)
            .map(|i| {
                format!(
                    "2026-01-01T00:00:00Z stdout F {}\n",
                    i.to_string().repeat(1000)
                )
            })
            .collect();
        let tail = tail_of_cri_log(&long);
        assert_eq!(tail.len(), LOG_TAIL_BYTES);
        assert!(tail.ends_with(&format!("{}\n", "2".repeat(1000))));
    }
}
