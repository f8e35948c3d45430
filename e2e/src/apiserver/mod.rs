//! A test Kubernetes API server: plain HTTP on a loopback port, faithful to the real
//! kube-apiserver for what a kubelet and kubectl use, standing in for a control plane
//! in end-to-end tests.
//!
//! [`ApiServer::start`] serves on its own thread and tokio runtime, so sync and async
//! tests use it alike. The handle reads and writes the store directly (`get`, `list`,
//! `create`, `delete`, `update`, `wait_for`), writes kubeconfigs for kubectl and agents,
//! simulates an outage ([`ApiServer::pause`]), approves and signs CSRs, decides reviews
//! through replaceable callbacks, and keeps a log of every request and who made it.
//!
//! Rooms:
//! - [`resources`]: the table of served resources ([`Gvr`] names them).
//! - [`store`]: objects, the global resourceVersion, the watch history.
//! - [`registry`]: per-kind semantics (defaults, status, preconditions, graceful deletion).
//! - [`routes`]: HTTP routing and verbs; [`watch`]: watch streams; [`discovery`]:
//!   discovery and OpenAPI documents; [`table`]: `kubectl get` tables.
//! - [`patch`]: merge, strategic merge and JSON patches; [`selectors`]: label and field
//!   selectors; [`auth`]: identities, tokens, reviews; [`status`]: errors as `Status`.
//! - [`protobuf`]: protobuf request bodies (client-go's typed clients) decoded to JSON.
//! - [`client`]: a small blocking HTTP client for tests, with watch streams.

pub mod auth;
pub mod client;
pub mod discovery;
pub mod patch;
pub mod protobuf;
pub mod registry;
pub mod resources;
pub mod routes;
pub mod selectors;
pub mod status;
pub mod store;
pub mod table;
pub mod watch;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinSet;

pub use auth::{AccessRequest, Decision, UserInfo};
pub use client::{Client, Reply, WatchStream};
pub use registry::{DeleteOptions, Deleted};
pub use resources::Gvr;

use registry::Registry;
use resources::Resource;
use selectors::{FieldSelector, LabelSelector, Selector};

/// How a server is started.
#[derive(Debug, Clone)]
pub struct ApiServerOptions {
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// How many changes the watch history keeps; older resourceVersions are `Expired`.
    pub history: usize,
}

impl Default for ApiServerOptions {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(3),
            history: 1000,
        }
    }
}

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    /// The path with its query, as sent.
    pub path: String,
    /// Who the bearer token authenticated as; none for no token or an unknown one.
    pub user: Option<UserInfo>,
    pub token: Option<String>,
    pub user_agent: String,
    pub status: u16,
}

impl RequestRecord {
    /// The user name, `system:anonymous` without a token, `unknown` for an unknown token.
    pub fn username(&self) -> &str {
        match (&self.user, &self.token) {
            (Some(u), _) => &u.username,
            (None, None) => "system:anonymous",
            (None, Some(_)) => "unknown",
        }
    }
}

/// What the server's tasks share.
pub struct Shared {
    pub registry: Arc<Registry>,
    pub auth: auth::Auth,
    pub options: ApiServerOptions,
    pub addr: SocketAddr,
    log: Mutex<Vec<RequestRecord>>,
}

impl Shared {
    fn record(&self, r: RequestRecord) {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(r);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Serving,
    Paused,
    Stopped,
}

/// Signs an approved CSR: the other side of [`ApiServer::sign_csr`].
pub trait CsrSigner {
    /// The PEM certificate (chain) for `csr`.
    fn sign(&self, csr: &CsrToSign) -> Result<Vec<u8>>;
}

impl<F: Fn(&CsrToSign) -> Result<Vec<u8>>> CsrSigner for F {
    fn sign(&self, csr: &CsrToSign) -> Result<Vec<u8>> {
        self(csr)
    }
}

/// What a signer is asked to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrToSign {
    pub name: String,
    /// The PEM `CERTIFICATE REQUEST` (decoded from `spec.request`).
    pub request_pem: Vec<u8>,
    pub signer_name: String,
    pub usages: Vec<String>,
    pub expiration_seconds: Option<i64>,
    /// The requester, as the server recorded it.
    pub username: String,
    pub groups: Vec<String>,
}

/// A running test API server. Stopped on drop.
pub struct ApiServer {
    shared: Arc<Shared>,
    mode: tokio_watch::Sender<Mode>,
    acks: Mutex<mpsc::Receiver<Mode>>,
    thread: Option<JoinHandle<()>>,
}

fn find(gvr: Gvr) -> Result<&'static Resource> {
    resources::find(gvr).ok_or_else(|| anyhow!("{gvr} is not served"))
}

/// How long a transition (pause, resume, stop) may take.
const TRANSITION_TIMEOUT: Duration = Duration::from_secs(10);

impl ApiServer {
    /// Starts a server with default options on a free loopback port.
    pub fn start() -> Result<Self> {
        Self::start_with(ApiServerOptions::default())
    }

    pub fn start_with(options: ApiServerOptions) -> Result<Self> {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("bind a loopback port")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let registry = Arc::new(Registry::new(options.history));
        let shared = Arc::new(Shared {
            registry,
            auth: auth::Auth::new(),
            options,
            addr,
            log: Mutex::new(Vec::new()),
        });
        seed(&shared).context("seed the store")?;
        let (mode, mode_rx) = tokio_watch::channel(Mode::Serving);
        let (ack_tx, ack_rx) = mpsc::channel();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-apiserver")
            .enable_all()
            .build()
            .context("build the API server's runtime")?;
        let task_shared = shared.clone();
        let thread = thread::Builder::new()
            .name("e2e-apiserver".into())
            .spawn(move || runtime.block_on(serve(task_shared, listener, mode_rx, ack_tx)))
            .context("spawn the API server thread")?;
        let server = Self {
            shared,
            mode,
            acks: Mutex::new(ack_rx),
            thread: Some(thread),
        };
        server.await_mode(Mode::Serving)?;
        Ok(server)
    }

    fn await_mode(&self, want: Mode) -> Result<()> {
        let acks = self.acks.lock().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + TRANSITION_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match acks.recv_timeout(left) {
                Ok(m) if m == want => return Ok(()),
                Ok(_) => continue,
                Err(e) => bail!("API server did not reach {want:?}: {e}"),
            }
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The admin bearer token (`system:admin` in `system:masters`) of [`Self::write_kubeconfig`].
    pub fn token(&self) -> &str {
        self.shared.auth.admin_token()
    }

    /// A client with the admin token.
    pub fn client(&self) -> Client {
        Client::new(self.addr(), Some(self.token().to_string()))
    }

    /// Writes a kubeconfig for the admin: `server: http://127.0.0.1:<port>`, a bearer
    /// token, namespace `default`. `kubectl --kubeconfig <path>` works with it.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        self.write_kubeconfig_with(path, "admin", self.token())
    }

    /// Writes a kubeconfig whose token authenticates as `user` (e.g.
    /// [`UserInfo::node`]); returns the token.
    pub fn write_kubeconfig_for(&self, path: &Path, user: &UserInfo) -> Result<String> {
        let token = self.shared.auth.mint(user);
        self.write_kubeconfig_with(path, &user.username, &token)?;
        Ok(token)
    }

    fn write_kubeconfig_with(&self, path: &Path, user: &str, token: &str) -> Result<()> {
        // JSON quoting is valid YAML quoting.
        let q = |s: &str| Value::String(s.to_string()).to_string();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {user}\n    namespace: default\ncurrent-context: e2e\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    token: {token}\n",
            server = q(&self.url()),
            user = q(user),
            token = q(token),
        );
        std::fs::write(path, text).with_context(|| format!("write kubeconfig {}", path.display()))
    }

    /// A new bearer token that authenticates as `user`.
    pub fn mint_token(&self, user: &UserInfo) -> String {
        self.shared.auth.mint(user)
    }

    /// Makes `token` authenticate as `user` (requests and TokenReviews).
    pub fn add_token(&self, token: &str, user: UserInfo) {
        self.shared.auth.add_token(token, user);
    }

    /// Replaces the authenticator (token, audiences → user) for requests and TokenReviews.
    pub fn set_authenticator(
        &self,
        f: impl Fn(&str, &[String]) -> Option<UserInfo> + Send + Sync + 'static,
    ) {
        self.shared.auth.set_authenticator(Arc::new(f));
    }

    /// Replaces the decision SubjectAccessReviews get (default: allowed).
    pub fn set_authorizer(&self, f: impl Fn(&AccessRequest) -> Decision + Send + Sync + 'static) {
        self.shared.auth.set_authorizer(Arc::new(f));
    }

    /// Simulates an outage: the listener is closed (connections are refused) and every
    /// open connection, watches included, is closed. Returns once that is done.
    pub fn pause(&self) -> Result<()> {
        self.mode.send_replace(Mode::Paused);
        self.await_mode(Mode::Paused)
    }

    /// Ends an outage: the same port accepts connections again.
    pub fn resume(&self) -> Result<()> {
        self.mode.send_replace(Mode::Serving);
        self.await_mode(Mode::Serving)
    }

    /// Stops serving and joins the server's thread (also done on drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.mode.send_replace(Mode::Stopped);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// The resourceVersion of the last write.
    pub fn resource_version(&self) -> u64 {
        self.shared.registry.store.resource_version()
    }

    /// Every request answered so far, oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock_log().clone()
    }

    /// Forgets the requests answered so far.
    pub fn clear_requests(&self) {
        self.lock_log().clear();
    }

    fn lock_log(&self) -> MutexGuard<'_, Vec<RequestRecord>> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One object, as a GET would return it.
    pub fn get(&self, gvr: Gvr, namespace: Option<&str>, name: &str) -> Option<Value> {
        let res = find(gvr).ok()?;
        self.shared.registry.get(res, namespace, name).ok()
    }

    /// The objects of `gvr` in `namespace` (or all namespaces), sorted by namespace and name.
    pub fn list(&self, gvr: Gvr, namespace: Option<&str>) -> Vec<Value> {
        self.list_selected(gvr, namespace, "", "")
            .unwrap_or_default()
    }

    /// The objects matching a label and a field selector (`""` for none).
    pub fn list_selected(
        &self,
        gvr: Gvr,
        namespace: Option<&str>,
        labels: &str,
        fields: &str,
    ) -> Result<Vec<Value>> {
        let res = find(gvr)?;
        let sel = Selector {
            labels: LabelSelector::parse(labels)?,
            fields: FieldSelector::parse(fields, res)?,
        };
        Ok(self.shared.registry.list(res, namespace, &sel).0)
    }

    /// Creates an object as a POST by the admin would (defaults, uid, timestamps,
    /// resourceVersion; errors as the server's).
    pub fn create(&self, gvr: Gvr, namespace: Option<&str>, obj: Value) -> Result<Value> {
        let res = find(gvr)?;
        Ok(self
            .shared
            .registry
            .create(res, namespace, obj, &UserInfo::admin())?)
    }

    /// Deletes an object as a DELETE with default options would (a bound pod is only
    /// marked, with its grace period).
    pub fn delete(&self, gvr: Gvr, namespace: Option<&str>, name: &str) -> Result<Deleted> {
        self.delete_with(gvr, namespace, name, &DeleteOptions::default())
    }

    pub fn delete_with(
        &self,
        gvr: Gvr,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Deleted> {
        let res = find(gvr)?;
        Ok(self.shared.registry.delete(res, namespace, name, opts)?)
    }

    /// Removes an object at once, whatever its finalizers or grace period; returns it.
    pub fn remove(&self, gvr: Gvr, namespace: Option<&str>, name: &str) -> Option<Value> {
        let res = find(gvr).ok()?;
        self.shared.registry.remove(res, namespace, name)
    }

    /// Edits an object in place as a test wants it (status included, no strategies);
    /// only the resourceVersion is the server's. Watches see a MODIFIED event.
    pub fn update(
        &self,
        gvr: Gvr,
        namespace: Option<&str>,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> Result<Value> {
        let res = find(gvr)?;
        Ok(self.shared.registry.force(res, namespace, name, f)?)
    }

    /// Waits up to `timeout` for `pred` to hold on the object (none while it does not
    /// exist); returns the object it held on.
    pub fn wait_for(
        &self,
        gvr: Gvr,
        namespace: Option<&str>,
        name: &str,
        timeout: Duration,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> Result<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let obj = self.get(gvr, namespace, name);
            if pred(obj.as_ref()) {
                return Ok(obj);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting on {gvr} {}{name}; last seen: {}",
                    namespace.map(|n| format!("{n}/")).unwrap_or_default(),
                    obj.map(|o| o.to_string()).unwrap_or_else(|| "none".into())
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// [`Self::wait_for`] for async tests: waits on the store's changes without blocking
    /// the caller's runtime.
    pub async fn wait_for_async(
        &self,
        gvr: Gvr,
        namespace: Option<&str>,
        name: &str,
        timeout: Duration,
        pred: impl Fn(Option<&Value>) -> bool,
    ) -> Result<Option<Value>> {
        let mut changes = self.shared.registry.store.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                changes.borrow_and_update();
                let obj = self.get(gvr, namespace, name);
                if pred(obj.as_ref()) {
                    return Ok(obj);
                }
                if changes.changed().await.is_err() {
                    bail!("the API server stopped");
                }
            }
        })
        .await;
        match waited {
            Ok(r) => r,
            Err(_) => bail!(
                "timed out after {timeout:?} waiting on {gvr} {}{name}; last seen: {}",
                namespace.map(|n| format!("{n}/")).unwrap_or_default(),
                self.get(gvr, namespace, name)
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "none".into())
            ),
        }
    }

    /// Approves a CSR as `kubectl certificate approve` does (condition `Approved`).
    pub fn approve_csr(&self, name: &str) -> Result<Value> {
        let res = find(Gvr::CSRS)?;
        let (csr, _) = self.shared.registry.update(
            res,
            None,
            name,
            Some("approval"),
            &UserInfo::admin(),
            |current| {
                let mut csr = current
                    .cloned()
                    .ok_or_else(|| status::ApiError::not_found(res.group, res.plural, name))?;
                let mut conditions = csr
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                conditions.retain(|c| c["type"] != "Approved");
                conditions.push(json!({
                    "type": "Approved",
                    "status": "True",
                    "reason": "E2EApprove",
                    "message": "approved by the e2e test API server",
                }));
                if !csr.get("status").is_some_and(Value::is_object) {
                    csr["status"] = json!({});
                }
                csr["status"]["conditions"] = json!(conditions);
                Ok(csr)
            },
        )?;
        Ok(csr)
    }

    /// Signs an approved CSR with `ca` and stores the certificate in `status.certificate`
    /// (through `/status`, as a signer controller does).
    pub fn sign_csr(&self, name: &str, ca: &dyn CsrSigner) -> Result<Value> {
        let res = find(Gvr::CSRS)?;
        let csr = self
            .shared
            .registry
            .get(res, None, name)
            .map_err(|e| anyhow!("{e}"))?;
        let approved = csr
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Approved" && c["status"] == "True")
            });
        if !approved {
            bail!("csr {name} is not approved");
        }
        let field = |p: &str| {
            csr.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let strings = |p: &str| -> Vec<String> {
            csr.pointer(p)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let request_pem = base64::engine::general_purpose::STANDARD
            .decode(field("/spec/request"))
            .with_context(|| format!("csr {name}: spec.request is not base64"))?;
        let to_sign = CsrToSign {
            name: name.to_string(),
            request_pem,
            signer_name: field("/spec/signerName"),
            usages: strings("/spec/usages"),
            expiration_seconds: csr
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_i64),
            username: field("/spec/username"),
            groups: strings("/spec/groups"),
        };
        let pem = ca
            .sign(&to_sign)
            .with_context(|| format!("sign csr {name}"))?;
        let cert = base64::engine::general_purpose::STANDARD.encode(pem);
        let (signed, _) = self.shared.registry.update(
            res,
            None,
            name,
            Some("status"),
            &UserInfo::admin(),
            |current| {
                let mut csr = current
                    .cloned()
                    .ok_or_else(|| status::ApiError::not_found(res.group, res.plural, name))?;
                csr["status"]["certificate"] = json!(cert);
                Ok(csr)
            },
        )?;
        Ok(signed)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What exists in a fresh cluster: the system namespaces (each with its `default`
/// ServiceAccount) and the `default/kubernetes` Service.
fn seed(shared: &Shared) -> Result<()> {
    let admin = UserInfo::admin();
    let reg = &shared.registry;
    for ns in registry::SYSTEM_NAMESPACES {
        reg.create(
            find(Gvr::NAMESPACES)?,
            None,
            json!({"metadata": {"name": ns}}),
            &admin,
        )?;
    }
    let svc = json!({
        "metadata": {
            "name": "kubernetes",
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.1",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": shared.addr.port()}],
            "sessionAffinity": "None",
        },
    });
    reg.create(find(Gvr::SERVICES)?, Some("default"), svc, &admin)?;
    Ok(())
}

/// The accept loop: serves until paused or stopped; a pause closes the listener and
/// every connection, a resume binds the same address again.
async fn serve(
    shared: Arc<Shared>,
    first: std::net::TcpListener,
    mut mode: tokio_watch::Receiver<Mode>,
    acks: mpsc::Sender<Mode>,
) {
    let mut listener = TcpListener::from_std(first).ok();
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Stopped => {
                conns.shutdown().await;
                return;
            }
            Mode::Paused => {
                listener = None;
                conns.shutdown().await;
                let _ = acks.send(Mode::Paused);
                if mode.changed().await.is_err() {
                    return;
                }
            }
            Mode::Serving => {
                let l = match listener.take() {
                    Some(l) => l,
                    None => match rebind(shared.addr).await {
                        Some(l) => l,
                        None => {
                            // Could not get the port back: stay down until told otherwise.
                            if mode.changed().await.is_err() {
                                return;
                            }
                            continue;
                        }
                    },
                };
                let _ = acks.send(Mode::Serving);
                loop {
                    tokio::select! {
                        accepted = l.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let shared = shared.clone();
                            conns.spawn(async move {
                                let svc = service_fn(move |req| routes::handle(shared.clone(), req));
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), svc)
                                    .await;
                            });
                        }
                        Some(_) = conns.join_next(), if !conns.is_empty() => {}
                        changed = mode.changed() => {
                            if changed.is_err() {
                                conns.shutdown().await;
                                return;
                            }
                            break;
                        }
                    }
                }
                listener = Some(l);
                if *mode.borrow() != Mode::Serving {
                    listener = None;
                }
            }
        }
    }
}

/// Binds `addr` again after a pause (retrying while the old socket lingers).
async fn rebind(addr: SocketAddr) -> Option<TcpListener> {
    let deadline = tokio::time::Instant::now() + TRANSITION_TIMEOUT;
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(_) => return None,
        }
    }
}
