//! A real distribution registry (Debian's `docker-registry`) on a loopback port, and
//! `skopeo` to push image layouts into it.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use crate::http;
use crate::image::media_type;

/// The registry binary shipped by Debian's `docker-registry` package.
pub const REGISTRY_BIN: &str = "docker-registry";
/// How long a freshly started registry gets to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Starts retried when the port picked turned out to be taken by the time the child bound it.
const START_ATTEMPTS: usize = 3;

/// A user name and password for basic auth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }
}

/// How to start a [`Registry`].
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Require these credentials (htpasswd, bcrypt) for every request.
    pub auth: Option<Credentials>,
}

impl RegistryOptions {
    /// Options for a registry that requires `username`/`password`.
    pub fn with_auth(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            auth: Some(Credentials::new(username, password)),
        }
    }
}

/// A running registry. The child is killed and its storage removed on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    addr: String,
    auth: Option<Credentials>,
    storage: PathBuf,
    log: PathBuf,
    // Last, so the directory outlives the child that writes into it.
    _dir: TempDir,
}

impl Registry {
    /// Starts a registry on a free `127.0.0.1` port with a fresh filesystem storage and
    /// returns once it answers `GET /v2/`.
    pub fn start(opts: RegistryOptions) -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("nodelet-registry-")
            .tempdir()
            .context("create registry temp dir")?;
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).with_context(|| format!("create {}", storage.display()))?;
        let htpasswd = match &opts.auth {
            Some(creds) => Some(write_htpasswd(dir.path(), creds)?),
            None => None,
        };
        let config = dir.path().join("config.yml");
        let log = dir.path().join("registry.log");

        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let addr = format!("127.0.0.1:{port}");
            fs::write(&config, config_yaml(&addr, &storage, htpasswd.as_deref()))
                .with_context(|| format!("write {}", config.display()))?;
            let mut child = spawn(&config, &log)?;
            match wait_ready(&mut child, &addr, &log) {
                Ok(()) => {
                    return Ok(Registry {
                        child,
                        addr,
                        auth: opts.auth,
                        storage,
                        log,
                        _dir: dir,
                    });
                }
                Err(StartError::PortTaken(err)) => {
                    last_err = Some(err);
                }
                Err(StartError::Failed(err)) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(err);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `ADDR/reference`, the image name a CRI client pulls, e.g. `127.0.0.1:5000/e2e/busybox:1`.
    pub fn image(&self, reference: &str) -> String {
        format!("{}/{reference}", self.addr)
    }

    /// The credentials the registry requires, if any, in the shape [`push`] takes.
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.auth
            .as_ref()
            .map(|c| (c.username.as_str(), c.password.as_str()))
    }

    /// Root of the filesystem storage driver.
    pub fn storage_dir(&self) -> &Path {
        &self.storage
    }

    /// Where the filesystem driver keeps the bytes of blob `digest` (`sha256:<hex>` or
    /// bare hex). Overwrite it to serve a tampered blob.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        let prefix = hex.get(..2).unwrap_or(hex);
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(prefix)
            .join(hex)
            .join("data")
    }

    /// The registry's own log (stdout and stderr, access log included).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Pushes the image (or index) in `layout_dir` as `reference` (`repo/name:tag`) with
    /// this registry's credentials; returns the manifest digest.
    pub fn push(&self, layout_dir: &Path, reference: &str) -> Result<String> {
        push(layout_dir, &self.addr, reference, self.credentials())
    }

    /// `GET path` with this registry's credentials (if any) and extra headers.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<http::Response> {
        let auth = self.credentials().map(|(u, p)| http::basic_auth(u, p));
        let mut all = headers.to_vec();
        if let Some(auth) = &auth {
            all.push(("Authorization", auth.as_str()));
        }
        http::get(&self.addr, path, &all)
    }

    /// `GET /v2/<repo>/manifests/<reference>` accepting every manifest and index type.
    pub fn manifest(&self, repo: &str, reference: &str) -> Result<http::Response> {
        let accept = [
            media_type::OCI_MANIFEST,
            media_type::OCI_INDEX,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_MANIFEST_LIST,
        ]
        .join(", ");
        self.get(
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Accept", &accept)],
        )
    }

    /// `GET /v2/<repo>/blobs/<digest>`.
    pub fn blob(&self, repo: &str, digest: &str) -> Result<http::Response> {
        self.get(&format!("/v2/{repo}/blobs/{digest}"), &[])
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum StartError {
    PortTaken(anyhow::Error),
    Failed(anyhow::Error),
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn write_htpasswd(dir: &Path, creds: &Credentials) -> Result<PathBuf> {
    let out = Command::new("htpasswd")
        .args(["-Bbn", &creds.username, &creds.password])
        .output()
        .context("run htpasswd (apache2-utils)")?;
    if !out.status.success() {
        bail!(
            "htpasswd -Bbn {} failed: {}",
            creds.username,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = dir.join("htpasswd");
    fs::write(&path, &out.stdout).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn config_yaml(addr: &str, storage: &Path, htpasswd: Option<&Path>) -> String {
    // JSON strings are valid YAML scalars, which quotes paths safely.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let root = quote(&storage.to_string_lossy());
    let addr = quote(addr);
    let mut yaml = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  formatter: text",
        "storage:",
        "  filesystem:",
        &format!("    rootdirectory: {root}"),
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        &format!("  addr: {addr}"),
        "  headers:",
        "    X-Content-Type-Options: [nosniff]",
        "",
    ]
    .join("\n");
    if let Some(path) = htpasswd {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: nodelet-e2e\n    path: {}\n",
            quote(&path.to_string_lossy())
        ));
    }
    yaml
}

fn spawn(config: &Path, log: &Path) -> Result<Child> {
    let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(REGISTRY_BIN);
    cmd.arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // REGISTRY_* variables override the config file; the test config must win.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(key);
        }
    }
    cmd.spawn()
        .with_context(|| format!("spawn {REGISTRY_BIN} serve {}", config.display()))
}

fn wait_ready(child: &mut Child, addr: &str, log: &Path) -> Result<(), StartError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| StartError::Failed(e.into()))? {
            let log = fs::read_to_string(log).unwrap_or_default();
            let err =
                anyhow::anyhow!("{REGISTRY_BIN} exited with {status} before serving {addr}: {log}");
            return Err(if log.contains("address already in use") {
                StartError::PortTaken(err)
            } else {
                StartError::Failed(err)
            });
        }
        match http::get(addr, "/v2/", &[]) {
            Ok(r) if r.status == 200 || r.status == 401 => return Ok(()),
            Ok(r) => {
                return Err(StartError::Failed(anyhow::anyhow!(
                    "GET http://{addr}/v2/ answered {} while starting",
                    r.status
                )));
            }
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Err(err) => {
                let log = fs::read_to_string(log).unwrap_or_default();
                return Err(StartError::Failed(err.context(format!(
                    "{REGISTRY_BIN} not ready on {addr} after {READY_TIMEOUT:?}: {log}"
                ))));
            }
        }
    }
}

/// Pushes the OCI image layout at `layout_dir` to `docker://{registry_addr}/{reference}`
/// with `skopeo copy`, keeping every manifest and blob byte for byte (no recompression,
/// no manifest conversion). A layout whose single entry is an image index is pushed with
/// all its platforms. Returns the digest of the pushed manifest or index.
pub fn push(
    layout_dir: &Path,
    registry_addr: &str,
    reference: &str,
    creds: Option<(&str, &str)>,
) -> Result<String> {
    let is_index = layout_root_is_index(layout_dir)?;
    let digest_dir = tempfile::tempdir().context("create temp dir for skopeo digest file")?;
    let digest_file = digest_dir.path().join("digest");

    let mut cmd = Command::new("skopeo");
    cmd.args([
        "copy",
        "--quiet",
        "--preserve-digests",
        "--dest-tls-verify=false",
    ])
    .arg("--digestfile")
    .arg(&digest_file);
    if is_index {
        cmd.args(["--multi-arch", "all"]);
    }
    match creds {
        Some((user, pass)) => {
            cmd.arg("--dest-creds").arg(format!("{user}:{pass}"));
        }
        None => {
            cmd.arg("--dest-no-creds");
        }
    }
    cmd.arg(format!("oci:{}", layout_dir.display()))
        .arg(format!("docker://{registry_addr}/{reference}"))
        .stdin(Stdio::null());
    let out = cmd.output().context("run skopeo")?;
    if !out.status.success() {
        bail!(
            "skopeo copy {} to {registry_addr}/{reference} failed ({}): {}",
            layout_dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    match fs::read_to_string(&digest_file) {
        Ok(d) => Ok(d.trim().to_string()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("skopeo wrote no digest for {registry_addr}/{reference}")
        }
        Err(e) => Err(e).with_context(|| format!("read {}", digest_file.display())),
    }
}

fn layout_root_is_index(layout_dir: &Path) -> Result<bool> {
    let path = layout_dir.join("index.json");
    let bytes = fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let index: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("parse {}", path.display()))?;
    let manifests = index["manifests"]
        .as_array()
        .with_context(|| format!("{} has no manifests", path.display()))?;
    let [root] = manifests.as_slice() else {
        bail!(
            "{} lists {} manifests, push wants exactly one",
            path.display(),
            manifests.len()
        );
    };
    Ok(matches!(
        root["mediaType"].as_str(),
        Some(media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_quotes_paths_and_adds_auth_only_when_asked() {
        let plain = config_yaml("127.0.0.1:1", Path::new("/tmp/s"), None);
        assert!(plain.contains("rootdirectory: \"/tmp/s\""));
        assert!(plain.contains("addr: \"127.0.0.1:1\""));
        assert!(!plain.contains("auth:"));
        let auth = config_yaml(
            "127.0.0.1:1",
            Path::new("/tmp/s"),
            Some(Path::new("/tmp/h")),
        );
        assert!(auth.contains("htpasswd:\n    realm: nodelet-e2e\n    path: \"/tmp/h\""));
    }
}
