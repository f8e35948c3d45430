//! A real distribution registry (Debian's `docker-registry`) on a loopback port, and
//! `skopeo` to push image layouts into it. The registry checks clients with htpasswd
//! (basic auth) or with bearer tokens from a [`TokenServer`] run here (the token flow of
//! the distribution spec: a `WWW-Authenticate: Bearer realm=…` challenge, a token from
//! the realm, then requests carrying it). It speaks plain HTTP, or HTTPS with a server
//! certificate for 127.0.0.1 from a CA made for it with `openssl`.

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use serde_json::json;
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
    /// Require these credentials for every request: checked by the registry itself
    /// (htpasswd, bcrypt), or by the token server when `token_auth` is set.
    pub auth: Option<Credentials>,
    /// Accept only bearer tokens from a [`TokenServer`] started with the registry.
    pub token_auth: bool,
    /// Serve HTTPS only, with a certificate from a CA of its own ([`Registry::ca_file`]).
    pub tls: bool,
}

impl RegistryOptions {
    /// Options for a registry that requires `username`/`password` (basic auth).
    pub fn with_auth(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            auth: Some(Credentials::new(username, password)),
            ..Self::default()
        }
    }

    /// Options for a registry that takes bearer tokens only; the token server gives them
    /// to clients presenting `username`/`password`.
    pub fn with_token_auth(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            auth: Some(Credentials::new(username, password)),
            token_auth: true,
            ..Self::default()
        }
    }

    /// The same, over HTTPS only.
    pub fn tls(self) -> Self {
        Self { tls: true, ..self }
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
    token: Option<TokenServer>,
    tls: Option<TlsFiles>,
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
        let token = if opts.token_auth {
            Some(TokenServer::start(dir.path(), opts.auth.clone())?)
        } else {
            None
        };
        let auth = match (&token, &opts.auth) {
            (Some(t), _) => Some(AuthConfig::Token(t)),
            (None, Some(creds)) => Some(AuthConfig::Htpasswd(write_htpasswd(dir.path(), creds)?)),
            (None, None) => None,
        };
        let tls = if opts.tls {
            Some(TlsFiles::make(dir.path())?)
        } else {
            None
        };
        let config = dir.path().join("config.yml");
        let log = dir.path().join("registry.log");

        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let addr = format!("127.0.0.1:{port}");
            let yaml = config_yaml(&addr, &storage, auth.as_ref(), tls.as_ref());
            fs::write(&config, yaml).with_context(|| format!("write {}", config.display()))?;
            let mut child = spawn(&config, &log)?;
            match wait_ready(&mut child, &addr, &log, tls.is_some()) {
                Ok(()) => {
                    return Ok(Registry {
                        child,
                        addr,
                        auth: opts.auth,
                        storage,
                        log,
                        token,
                        tls,
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

    /// The PEM certificate of the CA that signed the registry's certificate, when it
    /// serves HTTPS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca.as_path())
    }

    /// The token server, when the registry takes bearer tokens.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
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

    /// `GET path` with this registry's credentials (if any, as basic auth: a registry
    /// with token auth answers 401) and extra headers. Plain HTTP: a registry serving
    /// HTTPS answers 400.
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

/// How the registry is told to check clients.
enum AuthConfig<'a> {
    Htpasswd(PathBuf),
    Token(&'a TokenServer),
}

/// A CA and a server certificate for `127.0.0.1` signed by it, all PEM.
#[derive(Debug)]
struct TlsFiles {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    /// Makes the CA (its name unique to `dir`, so two registries never share an issuer
    /// name) and the server certificate in `dir`.
    fn make(dir: &Path) -> Result<Self> {
        let files = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        };
        let ca_key = dir.join("ca-key.pem");
        let csr = dir.join("server.csr");
        let ext = dir.join("server.ext");
        fs::write(
            &ext,
            "subjectAltName = IP:127.0.0.1\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n",
        )
        .with_context(|| format!("write {}", ext.display()))?;
        let unique = dir.file_name().unwrap_or_default().to_string_lossy();
        let p256 = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            Command::new("openssl")
                .args(["req", "-x509", "-days", "1"])
                .args(p256)
                .args(["-subj", &format!("/CN=nodelet-e2e-ca-{unique}")])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&files.ca),
        )?;
        openssl(
            Command::new("openssl")
                .args(["req", "-new"])
                .args(p256)
                .args(["-subj", "/CN=127.0.0.1"])
                .arg("-keyout")
                .arg(&files.key)
                .arg("-out")
                .arg(&csr),
        )?;
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "1", "-set_serial", "1"])
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&files.ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&files.cert),
        )?;
        Ok(files)
    }
}

/// Runs an `openssl` command, failing with its stderr.
fn openssl(cmd: &mut Command) -> Result<()> {
    let out = cmd.stdin(Stdio::null()).output().context("run openssl")?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn config_yaml(
    addr: &str,
    storage: &Path,
    auth: Option<&AuthConfig<'_>>,
    tls: Option<&TlsFiles>,
) -> String {
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
    if let Some(tls) = tls {
        yaml.push_str(&format!(
            "  tls:\n    certificate: {}\n    key: {}\n",
            quote(&tls.cert.to_string_lossy()),
            quote(&tls.key.to_string_lossy())
        ));
    }
    match auth {
        Some(AuthConfig::Htpasswd(path)) => yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: nodelet-e2e\n    path: {}\n",
            quote(&path.to_string_lossy())
        )),
        Some(AuthConfig::Token(t)) => yaml.push_str(&format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            quote(&t.realm()),
            quote(TOKEN_SERVICE),
            quote(TOKEN_ISSUER),
            quote(&t.cert.to_string_lossy())
        )),
        None => {}
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

/// Waits until the registry answers on `addr`. Plain HTTP to an HTTPS registry gets 400
/// (Go's answer to a request that is not a TLS handshake), which says it is up.
fn wait_ready(child: &mut Child, addr: &str, log: &Path, tls: bool) -> Result<(), StartError> {
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
            Ok(r) if !tls && (r.status == 200 || r.status == 401) => return Ok(()),
            Ok(r) if tls && r.status == 400 => return Ok(()),
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

/// `service` the registry names in its challenge and expects as token audience.
pub const TOKEN_SERVICE: &str = "nodelet-e2e-registry";
/// `iss` of every token the [`TokenServer`] signs.
pub const TOKEN_ISSUER: &str = "nodelet-e2e-token-server";
/// Lifetime of an issued token.
const TOKEN_TTL_SECS: u64 = 300;
/// Largest request head the token server reads.
const MAX_REQUEST_HEAD: usize = 16 << 10;

/// One request the token server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The user of the basic credentials presented, if any.
    pub user: Option<String>,
    /// `scope` parameters as asked, e.g. `repository:private/img:pull`.
    pub scopes: Vec<String>,
    /// Whether a token was issued.
    pub granted: bool,
}

/// A token server on a loopback port for a registry in `auth: token` mode. Tokens are
/// RS256 JWTs carrying their certificate in `x5c`, signed by `openssl` with a key made
/// for this server; every scope asked for is granted, to clients presenting the
/// configured basic credentials (or to everyone when there are none). Stops on drop.
#[derive(Debug)]
pub struct TokenServer {
    addr: String,
    cert: PathBuf,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What the serving thread needs.
struct Issuer {
    key: PathBuf,
    /// Base64 DER of the certificate, the single `x5c` entry.
    cert_der_b64: String,
    creds: Option<Credentials>,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    serial: AtomicU64,
}

impl TokenServer {
    /// Makes a key and self-signed certificate in `dir` and starts serving `GET /token`.
    pub fn start(dir: &Path, creds: Option<Credentials>) -> Result<Self> {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", &format!("/CN={TOKEN_ISSUER}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .context("run openssl req (token signing key)")?;
        ensure!(
            out.status.success(),
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pem = fs::read_to_string(&cert).with_context(|| format!("read {}", cert.display()))?;
        let cert_der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let listener = TcpListener::bind("127.0.0.1:0").context("bind token server")?;
        let addr = listener.local_addr()?.to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let issuer = Issuer {
            key,
            cert_der_b64,
            creds,
            requests: requests.clone(),
            serial: AtomicU64::new(0),
        };
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    // A broken client only loses its own answer.
                    let _ = issuer.serve(stream);
                }
            }
        });
        Ok(Self {
            addr,
            cert,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// The URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Issuer {
    fn serve(&self, mut stream: TcpStream) -> Result<()> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let head = read_request_head(&mut stream)?;
        let request_line = head.lines().next().unwrap_or_default();
        let target = request_line.split_whitespace().nth(1).unwrap_or_default();
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        if path != "/token" {
            return respond(&mut stream, 404, &json!({ "error": "not found" }));
        }
        let params: Vec<(String, String)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (percent_decode(k), percent_decode(v)))
            .collect();
        let scopes: Vec<String> = params
            .iter()
            .filter(|(k, _)| k == "scope")
            .flat_map(|(_, v)| v.split(' ').map(str::to_string))
            .filter(|s| !s.is_empty())
            .collect();
        let presented = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.trim().strip_prefix("Basic ").map(str::to_string))
            .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|up| up.split_once(':').map(|(u, p)| Credentials::new(u, p)));
        let granted = match &self.creds {
            None => true,
            Some(want) => presented.as_ref() == Some(want),
        };
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(TokenRequest {
                user: presented.as_ref().map(|c| c.username.clone()),
                scopes: scopes.clone(),
                granted,
            });
        if !granted {
            return respond(&mut stream, 401, &json!({ "error": "bad credentials" }));
        }
        let account = presented.map(|c| c.username).unwrap_or_default();
        let token = self.sign(&account, &scopes)?;
        respond(
            &mut stream,
            200,
            &json!({ "token": token, "access_token": token, "expires_in": TOKEN_TTL_SECS }),
        )
    }

    /// A JWT granting `scopes` (`type:name:action,action`) to `account`.
    fn sign(&self, account: &str, scopes: &[String]) -> Result<String> {
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|scope| {
                let (kind_name, actions) = scope.rsplit_once(':')?;
                let (kind, name) = kind_name.split_once(':')?;
                Some(json!({
                    "type": kind,
                    "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect();
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let header = json!({ "alg": "RS256", "typ": "JWT", "x5c": [self.cert_der_b64] });
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": account,
            "aud": TOKEN_SERVICE,
            "iat": now,
            "nbf": now.saturating_sub(10),
            "exp": now + TOKEN_TTL_SECS,
            "jti": format!("nodelet-e2e-{}", self.serial.fetch_add(1, Ordering::SeqCst)),
            "access": access,
        });
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let signing_input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("run openssl dgst (token signature)")?;
        child
            .stdin
            .take()
            .context("openssl stdin")?
            .write_all(signing_input.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "openssl dgst -sign failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(format!("{signing_input}.{}", b64(&out.stdout)))
    }
}

/// Reads up to the blank line ending an HTTP request head.
fn read_request_head(stream: &mut TcpStream) -> Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        ensure!(head.len() < MAX_REQUEST_HEAD, "request head too long");
        let n = stream.read(&mut buf)?;
        ensure!(n > 0, "connection closed mid-request");
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn respond(stream: &mut TcpStream, status: u16, body: &serde_json::Value) -> Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let body = body.to_string();
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    Ok(stream.flush()?)
}

/// Decodes `%XX` escapes and `+` (query strings); a malformed escape stays as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_quotes_paths_and_adds_auth_only_when_asked() {
        let plain = config_yaml("127.0.0.1:1", Path::new("/tmp/s"), None, None);
        assert!(plain.contains("rootdirectory: \"/tmp/s\""));
        assert!(plain.contains("addr: \"127.0.0.1:1\""));
        assert!(!plain.contains("auth:"));
        assert!(!plain.contains("tls:"));
        let tls = TlsFiles {
            ca: PathBuf::from("/tmp/ca.pem"),
            cert: PathBuf::from("/tmp/c.pem"),
            key: PathBuf::from("/tmp/k.pem"),
        };
        let auth = config_yaml(
            "127.0.0.1:1",
            Path::new("/tmp/s"),
            Some(&AuthConfig::Htpasswd(PathBuf::from("/tmp/h"))),
            Some(&tls),
        );
        assert!(auth.contains("htpasswd:\n    realm: nodelet-e2e\n    path: \"/tmp/h\""));
        // Under `http:`, before the top-level `auth:`.
        assert!(auth.contains(
            "[nosniff]\n  tls:\n    certificate: \"/tmp/c.pem\"\n    key: \"/tmp/k.pem\"\nauth:"
        ));
    }

    #[test]
    fn query_strings_decode() {
        let cases = [
            (
                "repository%3Aprivate%2Fimg%3Apull",
                "repository:private/img:pull",
            ),
            ("a+b", "a b"),
            ("100%", "100%"),
            ("%zz", "%zz"),
        ];
        for (raw, want) in cases {
            assert_eq!(percent_decode(raw), want, "{raw}");
        }
    }
}
