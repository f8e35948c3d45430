//! `CheckpointContainer`: the OCI runtime has CRIU dump a running container (which
//! keeps running) and the result is archived at the requested location, as the
//! kubelet's checkpoint API asks (KEP-2008). The archive is a tar of the CRIU images
//! (`checkpoint/`), the container's OCI spec (`spec.dump`), its record (`config.dump`)
//! and its writable layer (`rootfs-diff.tar`). It is written beside its destination and
//! renamed into place, so a failed checkpoint leaves nothing at the location. Without
//! CRIU on the node the request fails at once with FailedPrecondition naming it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Error, Result, Runtime, io_err};

/// Longest checkpoint when the request sets no timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl Runtime {
    #[tracing::instrument(skip_all, fields(container.id = %id))]
    pub async fn checkpoint_container(
        &self,
        id: &str,
        location: &str,
        timeout_s: i64,
    ) -> Result<()> {
        let location = PathBuf::from(location);
        if !location.is_absolute() || location.file_name().is_none() {
            return Err(Error::InvalidArgument(format!(
                "checkpoint location {:?} must be an absolute file path",
                location.display().to_string()
            )));
        }
        let c = self.containers.get(id)?;
        let _guard = self.lock(&c.id).await;
        let c = self.containers.get(&c.id)?;
        if !c.running() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running; only a running container can be checkpointed",
                c.id
            )));
        }
        let criu = &self.cfg.criu;
        if !criu.is_file() {
            return Err(Error::FailedPrecondition(format!(
                "checkpointing needs CRIU, which is not installed on this node ({} not found): install the criu package or set [runtime] criu",
                criu.display()
            )));
        }
        let timeout = u64::try_from(timeout_s)
            .ok()
            .filter(|s| *s > 0)
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
        let dir = self.containers.dir_of(&c.id);
        let scratch = tempfile::Builder::new()
            .prefix("checkpoint-")
            .tempdir_in(&dir)
            .map_err(io_err("creating checkpoint directory", &dir))?;
        let images = scratch.path().join("checkpoint");
        let work = scratch.path().join("work");
        for d in [&images, &work] {
            std::fs::create_dir_all(d).map_err(io_err("creating checkpoint directory", d))?;
        }
        let handler = self.handler(&c.handler)?.clone();
        handler
            .checkpoint(&c.id, criu, &images, &work, timeout)
            .await
            .map_err(|err| {
                let log = std::fs::read_to_string(work.join("dump.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                Error::FailedPrecondition(format!(
                    "{err}{}",
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; criu dump.log ends: {}",
                            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                        )
                    }
                ))
            })?;
        let record = serde_json::to_vec_pretty(&c).map_err(|e| {
            Error::FailedPrecondition(format!("encoding the record of {}: {e}", c.id))
        })?;
        write_archive(
            &location,
            &images,
            &dir.join("config.json"),
            &record,
            &dir.join("upper"),
        )?;
        tracing::info!(location = %location.display(), "container checkpointed");
        Ok(())
    }
}

/// The archive, written to a temporary file beside `location` and renamed over it.
fn write_archive(
    location: &Path,
    images: &Path,
    spec: &Path,
    record: &[u8],
    upper: &Path,
) -> Result<()> {
    let parent = location.parent().unwrap_or(Path::new("/"));
    let tmp = tempfile::NamedTempFile::new_in(parent)
        .map_err(io_err("creating checkpoint archive in", parent))?;
    let werr = io_err("writing checkpoint archive", location);
    let mut tar = tar::Builder::new(tmp.as_file());
    tar.follow_symlinks(false);
    let append = |tar: &mut tar::Builder<&std::fs::File>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_cksum();
        tar.append_data(&mut h, name, data)
    };
    let spec_bytes = std::fs::read(spec).map_err(io_err("reading spec", spec))?;
    let mut diff = tar::Builder::new(Vec::new());
    diff.follow_symlinks(false);
    let built = (|| {
        tar.append_dir_all("checkpoint", images)?;
        append(&mut tar, "spec.dump", &spec_bytes)?;
        append(&mut tar, "config.dump", record)?;
        if upper.is_dir() {
            diff.append_dir_all(".", upper)?;
        }
        let diff = diff.into_inner()?;
        append(&mut tar, "rootfs-diff.tar", &diff)?;
        tar.finish()?;
        tmp.as_file().sync_all()
    })();
    built.map_err(werr)?;
    drop(tar);
    tmp.persist(location)
        .map_err(|e| io_err("writing checkpoint archive", location)(e.error))?;
    Ok(())
}
