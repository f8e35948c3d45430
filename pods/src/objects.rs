//! The seam through which the engine gets the API objects a pod references: config
//! maps, secrets, service accounts, service account tokens and services. The engine
//! knows no API server: the kubelet hands it an [`Objects`] when it joins a cluster
//! (`kubelet/src/objects.rs`), and a standalone agent has none.
//!
//! What lives here besides the trait:
//! - [`references`]: the objects a pod names (volumes, env, envFrom, pull secrets), for an
//!   implementation to watch; [`static_pod_reference`]: why a static pod may not run (it
//!   names an API object, which a static pod may not, as upstream).
//! - [`PodObjects`]: what was fetched for one sync, the input of the pure volume and
//!   environment code (`volumes::prepare_with`, `translate::container_env_with`).
//! - [`fetch_volume_objects`], [`fetch_env_objects`], [`pull_secrets`]: the fetches.
//! - [`TokenCache`]: projected service account tokens, requested again at 80 % of their
//!   life (or after a day), as upstream's token manager does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service, ServiceAccount};
use tokio::sync::broadcast;

use crate::envvars;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The kinds of object a pod may reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    ConfigMap,
    Secret,
    ServiceAccount,
}

impl Kind {
    /// The name upstream's kubelet errors use (`configmap "x" not found`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmap",
            Kind::Secret => "secret",
            Kind::ServiceAccount => "serviceaccount",
        }
    }

    /// The resource (`configmaps`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Secret => "secrets",
            Kind::ServiceAccount => "serviceaccounts",
        }
    }
}

/// One object by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{}",
            self.kind.singular(),
            self.namespace,
            self.name
        )
    }
}

/// Why an object could not be had (not found is an answer, not an error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("getting {kind} {namespace}/{name}: {message}")]
    Get {
        kind: &'static str,
        namespace: String,
        name: String,
        message: String,
    },
    #[error("listing services in {namespace}: {message}")]
    Services { namespace: String, message: String },
    #[error("requesting a token for serviceaccount {namespace}/{name}: {message}")]
    Token {
        namespace: String,
        name: String,
        message: String,
    },
}

/// A TokenRequest for a pod's service account, bound to the pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenRequest {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
    /// None: the API server's own audience.
    pub audience: Option<String>,
    pub expiration_seconds: i64,
}

/// An issued token and when it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub token: String,
    pub expiry: SystemTime,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("token", &"<redacted>")
            .field("expiry", &self.expiry)
            .finish()
    }
}

/// The API objects the engine asks for. Each answer is found (`Ok(Some)`), not found
/// (`Ok(None)`) or an error. Implementations read only what they are asked for (a
/// node may read only what its pods reference) and may cache.
pub trait Objects: Send + Sync {
    fn config_map<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ConfigMap>>>;

    fn secret<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Secret>>>;

    fn service_account<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<ServiceAccount>>>;

    /// A token for the request's service account, bound to its pod; `Ok(None)` when the
    /// service account (or the pod) does not exist.
    fn service_account_token<'a>(
        &'a self,
        req: &'a TokenRequest,
    ) -> BoxFuture<'a, Result<Option<Token>>>;

    /// The services of a namespace (for service environment variables).
    fn services<'a>(&'a self, namespace: &'a str) -> BoxFuture<'a, Result<Vec<Service>>>;

    /// The objects a pod now references (an empty set: the pod is gone), so an
    /// implementation can watch exactly those.
    fn track(&self, pod_uid: &str, refs: &BTreeSet<ObjectRef>) {
        let _ = (pod_uid, refs);
    }

    /// Changes of tracked objects, if the implementation watches them: the engine
    /// refreshes the volumes of the pods referencing a changed object.
    fn changes(&self) -> Option<broadcast::Receiver<ObjectRef>> {
        None
    }
}

/// One lookup's answer as the volume and environment code sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<T> {
    Found(T),
    NotFound,
    /// The lookup failed: the error's text.
    Failed(String),
}

impl<T> Lookup<T> {
    fn from_result(r: Result<Option<T>>) -> Self {
        match r {
            Ok(Some(v)) => Lookup::Found(v),
            Ok(None) => Lookup::NotFound,
            Err(e) => Lookup::Failed(e.to_string()),
        }
    }
}

/// What a projected token is asked with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenSpec {
    /// Empty: the API server's own audience.
    pub audience: String,
    pub expiration_seconds: i64,
}

/// A projected token's lifetime when the pod names none.
pub const DEFAULT_TOKEN_SECONDS: i64 = 3600;

impl TokenSpec {
    pub fn of(p: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection) -> Self {
        Self {
            audience: p.audience.clone().unwrap_or_default(),
            expiration_seconds: p.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
        }
    }
}

/// The API objects one pod references, as fetched for one sync: the input of the volume
/// and environment code. A name missing from its map was not fetched (no API server).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodObjects {
    pub config_maps: BTreeMap<String, Lookup<ConfigMap>>,
    pub secrets: BTreeMap<String, Lookup<Secret>>,
    pub tokens: BTreeMap<TokenSpec, Lookup<Token>>,
    /// Service environment variables (None: none are set, as without an API server).
    pub service_env: Option<BTreeMap<String, String>>,
}

/// A secret's data with `stringData` folded in (the API server does that on write; a
/// secret read back never has it, but one from a test or a file may).
pub fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

pub(crate) fn namespace(pod: &Pod) -> &str {
    pod.metadata
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

/// The pod's service account (`default` when unset, as the API server defaults it).
pub fn service_account_name(pod: &Pod) -> &str {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.service_account_name.as_deref())
        .filter(|n| !n.is_empty())
        .or_else(|| {
            spec.and_then(|s| s.service_account.as_deref())
                .filter(|n| !n.is_empty())
        })
        .unwrap_or("default")
}

// ---------------------------------------------------------------------------------------
// What a pod references

/// Names a pod's volumes, one container's environment, or its pull secrets reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Names {
    config_maps: BTreeSet<String>,
    secrets: BTreeSet<String>,
    tokens: BTreeSet<TokenSpec>,
}

fn volume_names(pod: &Pod) -> Names {
    let mut n = Names::default();
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_deref());
    for v in volumes.unwrap_or_default() {
        if let Some(cm) = &v.config_map {
            n.config_maps.insert(cm.name.clone());
        }
        if let Some(s) = &v.secret {
            n.secrets.insert(s.secret_name.clone().unwrap_or_default());
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                n.config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &src.secret {
                n.secrets.insert(s.name.clone());
            }
            if let Some(t) = &src.service_account_token {
                n.tokens.insert(TokenSpec::of(t));
            }
        }
    }
    n
}

fn env_names(c: &Container) -> Names {
    let mut n = Names::default();
    for from in c.env_from.iter().flatten() {
        if let Some(r) = &from.config_map_ref {
            n.config_maps.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_ref {
            n.secrets.insert(r.name.clone());
        }
    }
    for var in c.env.iter().flatten() {
        let Some(from) = &var.value_from else {
            continue;
        };
        if let Some(r) = &from.config_map_key_ref {
            n.config_maps.insert(r.name.clone());
        }
        if let Some(r) = &from.secret_key_ref {
            n.secrets.insert(r.name.clone());
        }
    }
    n
}

fn pod_pull_secret_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .and_then(|s| s.image_pull_secrets.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|r| r.name.clone())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Every config map and secret the pod references (volumes, every container's env and
/// envFrom, pull secrets): what an implementation of [`Objects`] should watch for it.
pub fn references(pod: &Pod) -> BTreeSet<ObjectRef> {
    let ns = namespace(pod);
    let mut names = volume_names(pod);
    for (_, c) in crate::translate::containers(pod) {
        let e = env_names(c);
        names.config_maps.extend(e.config_maps);
        names.secrets.extend(e.secrets);
    }
    names.secrets.extend(pod_pull_secret_names(pod));
    let of = |kind: Kind, name: &String| ObjectRef {
        kind,
        namespace: ns.to_string(),
        name: name.clone(),
    };
    names
        .config_maps
        .iter()
        .map(|n| of(Kind::ConfigMap, n))
        .chain(names.secrets.iter().map(|n| of(Kind::Secret, n)))
        .filter(|r| !r.name.is_empty())
        .collect()
}

/// Whether the pod's volumes need the API server (config maps, secrets, tokens): such
/// volumes are refreshed while the pod runs.
pub fn has_api_volumes(pod: &Pod) -> bool {
    volume_names(pod) != Names::default()
}

/// What makes a static pod unrunnable: it references an API object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("static pods may not reference {resource} ({what})")]
pub struct StaticPodReference {
    /// `configmaps`, `secrets`, `serviceaccounts`.
    pub resource: &'static str,
    /// Where, e.g. `volume "cfg"`.
    pub what: String,
}

/// The first API object a static pod references, as upstream refuses such pods (a
/// static pod runs before, and without, the API server).
pub fn static_pod_reference(pod: &Pod) -> Option<StaticPodReference> {
    let found = |resource: &'static str, what: String| Some(StaticPodReference { resource, what });
    let spec = pod.spec.as_ref()?;
    if let Some(name) = pod_pull_secret_names(pod).first() {
        return found("secrets", format!("imagePullSecrets {name:?}"));
    }
    for v in spec.volumes.iter().flatten() {
        let what = format!("volume {:?}", v.name);
        if v.secret.is_some() {
            return found("secrets", what);
        }
        if v.config_map.is_some() {
            return found("configmaps", what);
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if src.secret.is_some() {
                return found("secrets", what);
            }
            if src.config_map.is_some() {
                return found("configmaps", what);
            }
            if src.service_account_token.is_some() {
                return found("serviceaccounts", what);
            }
            if src.cluster_trust_bundle.is_some() {
                return found("clustertrustbundles", what);
            }
        }
    }
    for (_, c) in crate::translate::containers(pod) {
        let n = env_names(c);
        let what = format!("container {:?} environment", c.name);
        if !n.secrets.is_empty() {
            return found("secrets", what);
        }
        if !n.config_maps.is_empty() {
            return found("configmaps", what);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Fetching

/// An empty name names nothing (and asking for it would list the namespace).
async fn fetch_names(objects: &dyn Objects, ns: &str, names: &Names) -> PodObjects {
    let cms = futures::future::join_all(names.config_maps.iter().map(|n| async move {
        let found = match n.as_str() {
            "" => Lookup::NotFound,
            _ => Lookup::from_result(objects.config_map(ns, n).await),
        };
        (n.clone(), found)
    }));
    let secrets = futures::future::join_all(names.secrets.iter().map(|n| async move {
        let found = match n.as_str() {
            "" => Lookup::NotFound,
            _ => Lookup::from_result(objects.secret(ns, n).await),
        };
        (n.clone(), found)
    }));
    let (cms, secrets) = futures::join!(cms, secrets);
    PodObjects {
        config_maps: cms.into_iter().collect(),
        secrets: secrets.into_iter().collect(),
        ..Default::default()
    }
}

/// Fetches what the pod's volumes project: config maps, secrets, and tokens (through
/// `tokens`, which reuses a token until 80 % of its life).
pub async fn fetch_volume_objects(
    objects: &dyn Objects,
    tokens: &TokenCache,
    pod: &Pod,
    now: SystemTime,
) -> PodObjects {
    let ns = namespace(pod);
    let names = volume_names(pod);
    let mut out = fetch_names(objects, ns, &names).await;
    for spec in &names.tokens {
        let req = TokenRequest {
            namespace: ns.to_string(),
            service_account: service_account_name(pod).to_string(),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
            audience: Some(spec.audience.clone()).filter(|a| !a.is_empty()),
            expiration_seconds: spec.expiration_seconds,
        };
        let token = tokens.get(objects, &req, now).await;
        out.tokens.insert(spec.clone(), token);
    }
    out
}

/// Fetches what one container's environment names: config maps and secrets, and the
/// services for the service environment variables. A failure to list services comes
/// back beside the objects (then without service variables): an API pod cannot start
/// without them, a static pod goes on without.
pub async fn fetch_env_objects(
    objects: &dyn Objects,
    pod: &Pod,
    c: &Container,
) -> (PodObjects, Option<Error>) {
    let ns = namespace(pod);
    let mut out = fetch_names(objects, ns, &env_names(c)).await;
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let master = objects.services(envvars::MASTER_NAMESPACE).await;
    let own = if links && ns != envvars::MASTER_NAMESPACE {
        Some(objects.services(ns).await)
    } else {
        None
    };
    let (master, own) = match (master, own) {
        (Ok(m), Some(Ok(o))) => (m, o),
        (Ok(m), None) => {
            let own = if links { m.clone() } else { Vec::new() };
            (m, own)
        }
        (Err(e), _) | (_, Some(Err(e))) => return (out, Some(e)),
    };
    out.service_env = Some(envvars::service_env(ns, links, &own, &master));
    (out, None)
}

/// The secrets to pull the pod's images with: the pod's `imagePullSecrets`, then its
/// service account's. Missing or unreadable ones are left out (the pull may still work),
/// as upstream.
pub async fn pull_secrets(objects: &dyn Objects, pod: &Pod) -> Vec<Secret> {
    let ns = namespace(pod);
    let mut names = pod_pull_secret_names(pod);
    let sa = service_account_name(pod);
    match objects.service_account(ns, sa).await {
        Ok(Some(account)) => {
            for r in account.image_pull_secrets.iter().flatten() {
                if !r.name.is_empty() && !names.contains(&r.name) {
                    names.push(r.name.clone());
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(namespace = %ns, service_account = %sa, err = %e, "reading the service account's image pull secrets")
        }
    }
    let mut out = Vec::new();
    for name in names {
        match objects.secret(ns, &name).await {
            Ok(Some(s)) => out.push(s),
            Ok(None) => {
                tracing::warn!(namespace = %ns, secret = %name, "image pull secret not found; the pull may not succeed")
            }
            Err(e) => {
                tracing::warn!(namespace = %ns, secret = %name, err = %e, "reading an image pull secret; the pull may not succeed")
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Tokens

/// A token is asked for again after this long, however long it is valid (upstream's
/// maxTTL: tokens of a year, for the legacy 3607 s request, are renewed daily).
const TOKEN_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    pod_uid: String,
    namespace: String,
    service_account: String,
    audience: Option<String>,
    expiration_seconds: i64,
}

#[derive(Debug, Clone)]
struct CachedToken {
    token: Token,
    fetched: SystemTime,
}

impl CachedToken {
    /// Still good to hand out without asking: less than 80 % of its life and less than a
    /// day has passed.
    fn fresh(&self, now: SystemTime) -> bool {
        let life = self
            .token
            .expiry
            .duration_since(self.fetched)
            .unwrap_or_default();
        let refresh_at = self.fetched + (life * 4 / 5).min(TOKEN_MAX_AGE);
        now < refresh_at
    }

    fn valid(&self, now: SystemTime) -> bool {
        now < self.token.expiry
    }
}

/// Projected service account tokens of running pods, by pod and request.
#[derive(Debug, Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

impl TokenCache {
    /// The token for `req`: the cached one while fresh, else a new one. When asking
    /// fails, a cached token that has not expired is handed out still.
    pub async fn get(
        &self,
        objects: &dyn Objects,
        req: &TokenRequest,
        now: SystemTime,
    ) -> Lookup<Token> {
        let key = TokenKey {
            pod_uid: req.pod_uid.clone(),
            namespace: req.namespace.clone(),
            service_account: req.service_account.clone(),
            audience: req.audience.clone(),
            expiration_seconds: req.expiration_seconds,
        };
        let cached = lock(&self.tokens).get(&key).cloned();
        if let Some(c) = &cached
            && c.fresh(now)
        {
            return Lookup::Found(c.token.clone());
        }
        match objects.service_account_token(req).await {
            Ok(Some(token)) => {
                tracing::debug!(pod.uid = %req.pod_uid, service_account = %req.service_account, "service account token issued");
                lock(&self.tokens).insert(
                    key,
                    CachedToken {
                        token: token.clone(),
                        fetched: now,
                    },
                );
                Lookup::Found(token)
            }
            Ok(None) => Lookup::NotFound,
            Err(e) => match cached {
                Some(c) if c.valid(now) => {
                    tracing::warn!(pod.uid = %req.pod_uid, err = %e, "renewing a service account token; the current one is still valid");
                    Lookup::Found(c.token)
                }
                _ => Lookup::Failed(e.to_string()),
            },
        }
    }

    /// Forgets the tokens of a pod that is gone.
    pub fn forget_pod(&self, pod_uid: &str) {
        lock(&self.tokens).retain(|k, _| k.pod_uid != pod_uid);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake [`Objects`]: objects in maps, every call recorded, errors injectable.

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        ConfigMap(String, String),
        Secret(String, String),
        ServiceAccount(String, String),
        Token(TokenRequest),
        Services(String),
    }

    #[derive(Default)]
    pub struct FakeObjects {
        pub config_maps: Mutex<BTreeMap<(String, String), ConfigMap>>,
        pub secrets: Mutex<BTreeMap<(String, String), Secret>>,
        pub service_accounts: Mutex<BTreeMap<(String, String), ServiceAccount>>,
        pub services: Mutex<BTreeMap<String, Vec<Service>>>,
        /// Answered with an error: (kind, name) — `("services", ns)` for a list.
        pub failing: Mutex<BTreeSet<(String, String)>>,
        pub calls: Mutex<Vec<Call>>,
        /// Tokens issued so far.
        pub issued: Mutex<u32>,
        pub token_life: Mutex<Duration>,
    }

    impl FakeObjects {
        pub fn new() -> Self {
            let f = Self::default();
            *lock(&f.token_life) = Duration::from_secs(3600);
            f
        }

        pub fn add_config_map(&self, ns: &str, v: serde_json::Value) {
            let cm: ConfigMap = serde_json::from_value(v).unwrap_or_default();
            let name = cm.metadata.name.clone().unwrap_or_default();
            lock(&self.config_maps).insert((ns.into(), name), cm);
        }

        pub fn add_secret(&self, ns: &str, v: serde_json::Value) {
            let s: Secret = serde_json::from_value(v).unwrap_or_default();
            let name = s.metadata.name.clone().unwrap_or_default();
            lock(&self.secrets).insert((ns.into(), name), s);
        }

        pub fn fail(&self, kind: &str, name: &str) {
            lock(&self.failing).insert((kind.into(), name.into()));
        }

        pub fn calls(&self) -> Vec<Call> {
            lock(&self.calls).clone()
        }

        fn failing(&self, kind: &str, name: &str) -> bool {
            lock(&self.failing).contains(&(kind.to_string(), name.to_string()))
        }

        fn get_err(kind: &'static str, ns: &str, name: &str) -> Error {
            Error::Get {
                kind,
                namespace: ns.into(),
                name: name.into(),
                message: "connection refused".into(),
            }
        }
    }

    impl Objects for FakeObjects {
        fn config_map<'a>(
            &'a self,
            ns: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<ConfigMap>>> {
            Box::pin(async move {
                lock(&self.calls).push(Call::ConfigMap(ns.into(), name.into()));
                if self.failing("configmap", name) {
                    return Err(Self::get_err("configmap", ns, name));
                }
                Ok(lock(&self.config_maps)
                    .get(&(ns.to_string(), name.to_string()))
                    .cloned())
            })
        }

        fn secret<'a>(
            &'a self,
            ns: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Secret>>> {
            Box::pin(async move {
                lock(&self.calls).push(Call::Secret(ns.into(), name.into()));
                if self.failing("secret", name) {
                    return Err(Self::get_err("secret", ns, name));
                }
                Ok(lock(&self.secrets)
                    .get(&(ns.to_string(), name.to_string()))
                    .cloned())
            })
        }

        fn service_account<'a>(
            &'a self,
            ns: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<ServiceAccount>>> {
            Box::pin(async move {
                lock(&self.calls).push(Call::ServiceAccount(ns.into(), name.into()));
                Ok(lock(&self.service_accounts)
                    .get(&(ns.to_string(), name.to_string()))
                    .cloned())
            })
        }

        fn service_account_token<'a>(
            &'a self,
            req: &'a TokenRequest,
        ) -> BoxFuture<'a, Result<Option<Token>>> {
            Box::pin(async move {
                lock(&self.calls).push(Call::Token(req.clone()));
                if self.failing("token", &req.service_account) {
                    return Err(Error::Token {
                        namespace: req.namespace.clone(),
                        name: req.service_account.clone(),
                        message: "connection refused".into(),
                    });
                }
                let mut n = lock(&self.issued);
                *n += 1;
                Ok(Some(Token {
                    token: format!(
                        "token-{}-{}-{}",
                        req.service_account,
                        req.audience.as_deref().unwrap_or("api"),
                        *n
                    ),
                    expiry: SystemTime::now() + *lock(&self.token_life),
                }))
            })
        }

        fn services<'a>(&'a self, ns: &'a str) -> BoxFuture<'a, Result<Vec<Service>>> {
            Box::pin(async move {
                lock(&self.calls).push(Call::Services(ns.into()));
                if self.failing("services", ns) {
                    return Err(Error::Services {
                        namespace: ns.into(),
                        message: "connection refused".into(),
                    });
                }
                Ok(lock(&self.services).get(ns).cloned().unwrap_or_default())
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Call, FakeObjects};
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).expect("pod")
    }

    fn api_pod(spec: serde_json::Value) -> Pod {
        pod(json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u1"}, "spec": spec}))
    }

    #[test]
    fn references_cover_volumes_env_and_pull_secrets() {
        let p = api_pod(json!({
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "configMap": {"name": "cm1"}},
                {"name": "b", "secret": {"secretName": "s1"}},
                {"name": "c", "projected": {"sources": [
                    {"configMap": {"name": "cm2"}}, {"secret": {"name": "s2"}},
                    {"serviceAccountToken": {"path": "token"}}]}}
            ],
            "initContainers": [{"name": "i", "image": "x",
                "envFrom": [{"configMapRef": {"name": "cm3"}}]}],
            "containers": [{"name": "c", "image": "x", "env": [
                {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "k"}}}]}]
        }));
        let got: Vec<String> = references(&p).iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "configmap ns/cm1",
                "configmap ns/cm2",
                "configmap ns/cm3",
                "secret ns/pull",
                "secret ns/s1",
                "secret ns/s2",
                "secret ns/s3"
            ]
        );
        assert!(has_api_volumes(&p));
        let plain = api_pod(json!({"volumes": [{"name": "e", "emptyDir": {}}],
                                   "containers": [{"name": "c", "image": "x"}]}));
        assert!(references(&plain).is_empty());
        assert!(!has_api_volumes(&plain));
    }

    #[test]
    fn static_pods_may_not_reference_api_objects() {
        let cases = [
            (
                json!({"imagePullSecrets": [{"name": "p"}]}),
                Some("secrets"),
            ),
            (
                json!({"volumes": [{"name": "v", "secret": {"secretName": "s"}}]}),
                Some("secrets"),
            ),
            (
                json!({"volumes": [{"name": "v", "configMap": {"name": "c"}}]}),
                Some("configmaps"),
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]}),
                Some("serviceaccounts"),
            ),
            (
                json!({"containers": [{"name": "c", "image": "x", "envFrom": [{"configMapRef": {"name": "c"}}]}]}),
                Some("configmaps"),
            ),
            (
                json!({"volumes": [{"name": "v", "projected": {"sources": [{"downwardAPI": {"items": []}}]}}],
                       "containers": [{"name": "c", "image": "x", "env": [{"name": "A", "value": "1"}]}]}),
                None,
            ),
        ];
        for (spec, want) in cases {
            let mut spec = spec;
            if spec.get("containers").is_none() {
                spec["containers"] = json!([{"name": "c", "image": "x"}]);
            }
            let got = static_pod_reference(&api_pod(spec.clone()));
            assert_eq!(got.as_ref().map(|r| r.resource), want, "{spec}");
            if let Some(r) = got {
                assert!(
                    r.to_string()
                        .starts_with(&format!("static pods may not reference {}", r.resource)),
                    "{r}"
                );
            }
        }
    }

    #[tokio::test]
    async fn volume_objects_are_fetched_once_per_name() {
        let f = FakeObjects::new();
        f.add_config_map(
            "ns",
            json!({"metadata": {"name": "cm1"}, "data": {"a": "1"}}),
        );
        f.fail("secret", "broken");
        let p = api_pod(json!({
            "serviceAccountName": "robot",
            "volumes": [
                {"name": "a", "configMap": {"name": "cm1"}},
                {"name": "b", "configMap": {"name": "cm1"}},
                {"name": "c", "secret": {"secretName": "missing"}},
                {"name": "d", "projected": {"sources": [{"secret": {"name": "broken"}},
                    {"serviceAccountToken": {"path": "t", "audience": "vault", "expirationSeconds": 7200}}]}}
            ],
            "containers": [{"name": "c", "image": "x"}]
        }));
        let tokens = TokenCache::default();
        let objs = fetch_volume_objects(&f, &tokens, &p, SystemTime::now()).await;
        assert!(matches!(
            objs.config_maps.get("cm1"),
            Some(Lookup::Found(_))
        ));
        assert_eq!(objs.secrets.get("missing"), Some(&Lookup::NotFound));
        assert!(
            matches!(objs.secrets.get("broken"), Some(Lookup::Failed(m)) if m.contains("connection refused"))
        );
        let spec = TokenSpec {
            audience: "vault".into(),
            expiration_seconds: 7200,
        };
        assert!(matches!(objs.tokens.get(&spec), Some(Lookup::Found(_))));
        let calls = f.calls();
        let cm_calls = calls
            .iter()
            .filter(|c| matches!(c, Call::ConfigMap(..)))
            .count();
        assert_eq!(cm_calls, 1, "{calls:?}");
        let token_req = calls.iter().find_map(|c| match c {
            Call::Token(r) => Some(r.clone()),
            _ => None,
        });
        assert_eq!(
            token_req,
            Some(TokenRequest {
                namespace: "ns".into(),
                service_account: "robot".into(),
                pod_name: "p".into(),
                pod_uid: "u1".into(),
                audience: Some("vault".into()),
                expiration_seconds: 7200,
            })
        );
    }

    #[tokio::test]
    async fn an_empty_name_is_never_asked_for() {
        let f = FakeObjects::new();
        let p = api_pod(json!({"volumes": [{"name": "s", "secret": {}}],
                               "containers": [{"name": "c", "image": "x"}]}));
        let objs = fetch_volume_objects(&f, &TokenCache::default(), &p, SystemTime::now()).await;
        assert_eq!(objs.secrets.get(""), Some(&Lookup::NotFound));
        assert!(f.calls().is_empty(), "{:?}", f.calls());
        assert!(references(&p).is_empty());
    }

    #[tokio::test]
    async fn tokens_are_renewed_at_eighty_percent_of_their_life() {
        let f = FakeObjects::new();
        let cache = TokenCache::default();
        let req = TokenRequest {
            namespace: "ns".into(),
            service_account: "default".into(),
            pod_name: "p".into(),
            pod_uid: "u1".into(),
            audience: None,
            expiration_seconds: 3600,
        };
        let t0 = SystemTime::now();
        let first = cache.get(&f, &req, t0).await;
        let again = cache.get(&f, &req, t0 + Duration::from_secs(2800)).await;
        assert_eq!(first, again, "reused before 80 %");
        let renewed = cache.get(&f, &req, t0 + Duration::from_secs(2900)).await;
        assert_ne!(first, renewed, "renewed after 80 %");
        assert_eq!(*lock(&f.issued), 2);

        // Renewal failing: the still valid token is handed out; an expired one is not.
        f.fail("token", "default");
        let t1 = t0 + Duration::from_secs(2900);
        // (The fake's tokens live an hour from the real now: about 700 s from t1.)
        let during_outage = cache.get(&f, &req, t1 + Duration::from_secs(650)).await;
        assert_eq!(during_outage, renewed);
        let expired = cache.get(&f, &req, t1 + Duration::from_secs(1000)).await;
        assert!(matches!(expired, Lookup::Failed(_)), "{expired:?}");

        cache.forget_pod("u1");
        assert!(lock(&cache.tokens).is_empty());
    }

    #[tokio::test]
    async fn long_lived_tokens_are_renewed_daily() {
        let f = FakeObjects::new();
        *lock(&f.token_life) = Duration::from_secs(365 * 24 * 3600);
        let cache = TokenCache::default();
        let req = TokenRequest {
            namespace: "ns".into(),
            service_account: "default".into(),
            pod_name: "p".into(),
            pod_uid: "u1".into(),
            audience: None,
            expiration_seconds: 3607,
        };
        let t0 = SystemTime::now();
        let first = cache.get(&f, &req, t0).await;
        let hour = cache.get(&f, &req, t0 + Duration::from_secs(3600)).await;
        assert_eq!(first, hour);
        let day = cache
            .get(&f, &req, t0 + Duration::from_secs(25 * 3600))
            .await;
        assert_ne!(first, day);
    }

    #[tokio::test]
    async fn env_objects_and_services() {
        let f = FakeObjects::new();
        let svc = |name: &str, ip: &str| -> Service {
            serde_json::from_value(json!({"metadata": {"name": name},
                "spec": {"clusterIP": ip, "ports": [{"port": 443, "protocol": "TCP"}]}}))
            .unwrap_or_default()
        };
        lock(&f.services).insert(
            "default".into(),
            vec![svc("kubernetes", "10.96.0.1"), svc("other", "10.96.0.9")],
        );
        lock(&f.services).insert("ns".into(), vec![svc("db", "10.96.0.5")]);
        f.add_config_map(
            "ns",
            json!({"metadata": {"name": "cfg"}, "data": {"K": "v"}}),
        );
        let p = api_pod(json!({"containers": [{"name": "c", "image": "x",
            "envFrom": [{"configMapRef": {"name": "cfg"}}]}]}));
        let c = &p.spec.as_ref().expect("spec").containers[0];
        let (objs, err) = fetch_env_objects(&f, &p, c).await;
        assert!(err.is_none());
        let env = objs.service_env.unwrap_or_default();
        assert_eq!(
            env.get("KUBERNETES_SERVICE_HOST").map(String::as_str),
            Some("10.96.0.1")
        );
        assert_eq!(
            env.get("DB_SERVICE_HOST").map(String::as_str),
            Some("10.96.0.5")
        );
        assert!(
            !env.contains_key("OTHER_SERVICE_HOST"),
            "other namespaces' services"
        );
        assert!(matches!(
            objs.config_maps.get("cfg"),
            Some(Lookup::Found(_))
        ));

        // enableServiceLinks: false leaves the master service only.
        let mut q = p.clone();
        if let Some(s) = q.spec.as_mut() {
            s.enable_service_links = Some(false);
        }
        let (objs, _) = fetch_env_objects(&f, &q, c).await;
        let env = objs.service_env.unwrap_or_default();
        assert!(env.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!env.contains_key("DB_SERVICE_HOST"));

        f.fail("services", "default");
        let (objs, err) = fetch_env_objects(&f, &p, c).await;
        assert!(objs.service_env.is_none());
        assert!(err.is_some_and(|e| e.to_string().contains("listing services in default")));
    }

    #[tokio::test]
    async fn pull_secrets_of_the_pod_and_its_service_account() {
        let f = FakeObjects::new();
        for n in ["mine", "theirs"] {
            f.add_secret(
                "ns",
                json!({"metadata": {"name": n}, "type": "kubernetes.io/dockerconfigjson"}),
            );
        }
        let sa: ServiceAccount = serde_json::from_value(json!({
            "metadata": {"name": "robot"},
            "imagePullSecrets": [{"name": "theirs"}, {"name": "mine"}, {"name": "gone"}]
        }))
        .unwrap_or_default();
        lock(&f.service_accounts).insert(("ns".into(), "robot".into()), sa);
        let p = api_pod(json!({"serviceAccountName": "robot",
            "imagePullSecrets": [{"name": "mine"}],
            "containers": [{"name": "c", "image": "x"}]}));
        let got: Vec<String> = pull_secrets(&f, &p)
            .await
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        assert_eq!(got, ["mine", "theirs"]);
    }
}
