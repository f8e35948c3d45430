//! Authentication and authorization of the kubelet API, as upstream's defaults: a client
//! certificate from `--client-ca-file`, else a bearer token through TokenReview (cached
//! 2 min); every request then asks a SubjectAccessReview about `nodes/<subresource>` of
//! this node (allowed cached 5 min, denied 30 s).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::Digest as _;

/// Upstream's webhook token cache TTL (`authentication.webhook.cacheTTL`).
pub const TOKEN_TTL: Duration = Duration::from_secs(120);
/// `authorization.webhook.cacheAuthorizedTTL`.
pub const ALLOWED_TTL: Duration = Duration::from_secs(300);
/// `authorization.webhook.cacheUnauthorizedTTL`.
pub const DENIED_TTL: Duration = Duration::from_secs(30);
/// Bounds the caches: past this many entries the expired ones are dropped, then all.
const CACHE_MAX: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{review}: {source}")]
    Api {
        review: &'static str,
        source: kube::Error,
    },
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: Vec<(String, Vec<String>)>,
}

/// What a request asks for, as upstream's `GetRequestAttributes`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: &'static str,
    pub subresource: &'static str,
}

/// The verb of an HTTP method (upstream: none for others, which no policy allows).
pub fn verb(method: &http::Method) -> &'static str {
    match *method {
        http::Method::POST => "create",
        http::Method::GET => "get",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "",
    }
}

fn is_subpath(path: &str, prefix: &str) -> bool {
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The `nodes` subresource a path is authorized as.
pub fn subresource(path: &str) -> &'static str {
    let path = path.trim_end_matches('/');
    if is_subpath(path, "/stats") {
        "stats"
    } else if is_subpath(path, "/metrics") {
        "metrics"
    } else if is_subpath(path, "/logs") {
        "log"
    } else if is_subpath(path, "/spec") {
        "spec"
    } else if is_subpath(path, "/checkpoint") {
        "checkpoint"
    } else {
        "proxy"
    }
}

pub fn attributes(method: &http::Method, path: &str) -> Attributes {
    Attributes {
        verb: verb(method),
        subresource: subresource(path),
    }
}

/// Upstream's 403 text.
pub fn forbidden_message(user: &str, a: &Attributes) -> String {
    format!(
        "Forbidden (user={user}, verb={}, resource=nodes, subresource={})",
        a.verb, a.subresource
    )
}

struct Cache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Cache<K, V> {
    fn new() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, k: &K, now: Instant) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(k)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v.clone())
    }

    fn put(&self, k: K, v: V, until: Instant) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= CACHE_MAX {
            let now = Instant::now();
            entries.retain(|_, (_, u)| *u > now);
            if entries.len() >= CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(k, (v, until));
    }
}

/// The webhook authenticator and authorizer, over the API server.
pub struct Auth {
    client: kube::Client,
    node: String,
    /// Keyed by the token's SHA-256, so no token is kept in memory past its request.
    tokens: Cache<[u8; 32], User>,
    decisions: Cache<(User, Attributes), bool>,
}

impl Auth {
    pub fn new(client: kube::Client, node: String) -> Self {
        Self {
            client,
            node,
            tokens: Cache::new(),
            decisions: Cache::new(),
        }
    }

    async fn post(&self, path: &str, review: &'static str, body: Value) -> Result<Value, Error> {
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let req = http::Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| Error::Api {
                review,
                source: kube::Error::HttpError(e),
            })?;
        self.client
            .request::<Value>(req)
            .await
            .map_err(|source| Error::Api { review, source })
    }

    /// The user a bearer token names; none when the API server says it is not valid.
    pub async fn authenticate_token(&self, token: &str) -> Result<Option<User>, Error> {
        let now = Instant::now();
        let key: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some(u) = self.tokens.get(&key, now) {
            return Ok(Some(u));
        }
        let review = self
            .post(
                "/apis/authentication.k8s.io/v1/tokenreviews",
                "TokenReview",
                json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": token},
                }),
            )
            .await?;
        let status = &review["status"];
        if status["authenticated"] != json!(true) {
            return Ok(None);
        }
        let u = &status["user"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut extra: Vec<(String, Vec<String>)> = u["extra"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), strings(v))).collect())
            .unwrap_or_default();
        extra.sort();
        let user = User {
            name: u["username"].as_str().unwrap_or_default().to_string(),
            uid: u["uid"].as_str().unwrap_or_default().to_string(),
            groups: strings(&u["groups"]),
            extra,
        };
        self.tokens.put(key, user.clone(), now + TOKEN_TTL);
        Ok(Some(user))
    }

    /// Whether `user` may do `attrs` on this node.
    pub async fn authorize(&self, user: &User, attrs: &Attributes) -> Result<bool, Error> {
        let now = Instant::now();
        let key = (user.clone(), attrs.clone());
        if let Some(allowed) = self.decisions.get(&key, now) {
            return Ok(allowed);
        }
        let mut spec = json!({
            "user": user.name,
            "groups": user.groups,
            "resourceAttributes": {
                "namespace": "",
                "verb": attrs.verb,
                "group": "",
                "version": "v1",
                "resource": "nodes",
                "subresource": attrs.subresource,
                "name": self.node,
            },
        });
        if !user.uid.is_empty() {
            spec["uid"] = json!(user.uid);
        }
        if !user.extra.is_empty() {
            spec["extra"] = json!(user.extra.iter().cloned().collect::<HashMap<_, _>>());
        }
        let review = self
            .post(
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                "SubjectAccessReview",
                json!({
                    "apiVersion": "authorization.k8s.io/v1",
                    "kind": "SubjectAccessReview",
                    "spec": spec,
                }),
            )
            .await?;
        let allowed = review["status"]["allowed"] == json!(true);
        let ttl = if allowed { ALLOWED_TTL } else { DENIED_TTL };
        self.decisions.put(key, allowed, now + ttl);
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_from_methods() {
        for (m, v) in [
            (http::Method::GET, "get"),
            (http::Method::HEAD, ""),
            (http::Method::POST, "create"),
            (http::Method::PUT, "update"),
            (http::Method::PATCH, "patch"),
            (http::Method::DELETE, "delete"),
            (http::Method::OPTIONS, ""),
        ] {
            assert_eq!(verb(&m), v, "{m}");
        }
    }

    #[test]
    fn subresources_from_paths() {
        for (path, want) in [
            ("/stats", "stats"),
            ("/stats/", "stats"),
            ("/stats/summary", "stats"),
            ("/statsx", "proxy"),
            ("/metrics", "metrics"),
            ("/metrics/cadvisor", "metrics"),
            ("/metrics/resource", "metrics"),
            ("/logs/", "log"),
            ("/logs/messages", "log"),
            ("/spec/", "spec"),
            ("/checkpoint/ns/pod/c", "checkpoint"),
            ("/healthz", "proxy"),
            ("/pods", "proxy"),
            ("/runningpods/", "proxy"),
            ("/containerLogs/default/p/c", "proxy"),
            ("/exec/default/p/c", "proxy"),
            ("/", "proxy"),
            ("", "proxy"),
        ] {
            assert_eq!(subresource(path), want, "{path:?}");
        }
    }

    #[test]
    fn forbidden_text_is_upstreams() {
        let a = attributes(&http::Method::GET, "/metrics");
        assert_eq!(
            forbidden_message("alice", &a),
            "Forbidden (user=alice, verb=get, resource=nodes, subresource=metrics)"
        );
    }

    #[test]
    fn cache_expires() {
        let c: Cache<&str, bool> = Cache::new();
        let now = Instant::now();
        c.put("k", true, now + Duration::from_secs(1));
        assert_eq!(c.get(&"k", now), Some(true));
        assert_eq!(c.get(&"k", now + Duration::from_secs(2)), None);
    }
}
