//! Who is asking, and the review APIs a kubelet's own server delegates to.
//!
//! Every request is accepted, whatever its bearer token; its identity is what the
//! authenticator makes of the token (the kubeconfig's token is `system:admin` in
//! `system:masters`; tokens minted by [`Auth::mint`] and by TokenRequest are theirs) and
//! is recorded in the request log. TokenReview answers with the same authenticator,
//! SubjectAccessReview with a decision callback tests can replace (default: allow all).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::registry::new_uid;
use super::status::ApiError;

/// The audience tokens are for when a TokenRequest names none (the API server's own).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// An authenticated user (`authentication.k8s.io/v1` UserInfo).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    pub username: String,
    pub uid: String,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

impl UserInfo {
    /// A user with `groups` plus `system:authenticated`.
    pub fn new(username: impl Into<String>, groups: &[&str]) -> Self {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        groups.push("system:authenticated".into());
        Self {
            username: username.into(),
            groups,
            ..Self::default()
        }
    }

    /// The cluster admin of the kubeconfig.
    pub fn admin() -> Self {
        Self::new("system:admin", &["system:masters"])
    }

    /// A kubelet's identity: `system:node:<name>` in `system:nodes`.
    pub fn node(name: &str) -> Self {
        Self::new(format!("system:node:{name}"), &["system:nodes"])
    }

    /// A service account's identity.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self::new(
            format!("system:serviceaccount:{namespace}:{name}"),
            &[
                "system:serviceaccounts",
                &format!("system:serviceaccounts:{namespace}"),
            ],
        )
    }

    /// Who a request without credentials is.
    pub fn anonymous() -> Self {
        Self {
            username: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
            ..Self::default()
        }
    }

    /// As `status.user` of a TokenReview and `spec` of a CSR carry it.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.username, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }

    fn from_json(v: &Value) -> Self {
        let strings = |v: Option<&Value>| -> Vec<String> {
            v.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let extra = v
            .get("extra")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, vs)| (k.clone(), strings(Some(vs))))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            username: v
                .get("user")
                .or_else(|| v.get("username"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            uid: v
                .get("uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            groups: strings(v.get("groups")),
            extra,
        }
    }
}

/// One access question (a SubjectAccessReview's spec, typed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRequest {
    pub user: UserInfo,
    pub verb: String,
    pub namespace: String,
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
    /// For a non-resource request (`/healthz`): its path; empty otherwise.
    pub path: String,
}

/// An authorizer's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub denied: bool,
    pub reason: String,
}

impl Decision {
    pub fn allow() -> Self {
        Self {
            allowed: true,
            ..Self::default()
        }
    }

    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            denied: true,
            reason: reason.into(),
            ..Self::default()
        }
    }

    /// Neither allowed nor denied (the next authorizer would decide).
    pub fn no_opinion(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            ..Self::default()
        }
    }
}

/// Token → user, given the audiences the token is presented for (empty: the API
/// server's own).
pub type AuthenticateFn = dyn Fn(&str, &[String]) -> Option<UserInfo> + Send + Sync;
/// The decision for one access question.
pub type AuthorizeFn = dyn Fn(&AccessRequest) -> Decision + Send + Sync;

struct Issued {
    user: UserInfo,
    /// Empty: good for the API server itself.
    audiences: Vec<String>,
    /// Seconds since the epoch; none: never expires.
    expires: Option<i64>,
}

/// Tokens known to the server and the review callbacks.
pub struct Auth {
    admin_token: String,
    tokens: Mutex<HashMap<String, Issued>>,
    authenticator: Mutex<Option<Arc<AuthenticateFn>>>,
    authorizer: Mutex<Arc<AuthorizeFn>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl Auth {
    pub fn new() -> Self {
        let admin_token = format!("admin-{}", new_uid());
        let mut tokens = HashMap::new();
        tokens.insert(
            admin_token.clone(),
            Issued {
                user: UserInfo::admin(),
                audiences: Vec::new(),
                expires: None,
            },
        );
        Self {
            admin_token,
            tokens: Mutex::new(tokens),
            authenticator: Mutex::new(None),
            authorizer: Mutex::new(Arc::new(|_: &AccessRequest| Decision::allow())),
        }
    }

    /// The kubeconfig's bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// A new token that authenticates as `user`.
    pub fn mint(&self, user: &UserInfo) -> String {
        let token = format!("token-{}", new_uid());
        self.add_token(&token, user.clone());
        token
    }

    /// Makes `token` authenticate as `user`.
    pub fn add_token(&self, token: &str, user: UserInfo) {
        lock(&self.tokens).insert(
            token.to_string(),
            Issued {
                user,
                audiences: Vec::new(),
                expires: None,
            },
        );
    }

    pub fn set_authenticator(&self, f: Arc<AuthenticateFn>) {
        *lock(&self.authenticator) = Some(f);
    }

    pub fn set_authorizer(&self, f: Arc<AuthorizeFn>) {
        *lock(&self.authorizer) = f;
    }

    /// The user `token` is for the `audiences` given, if it authenticates.
    pub fn authenticate(&self, token: &str, audiences: &[String]) -> Option<UserInfo> {
        let custom = lock(&self.authenticator).clone();
        if let Some(f) = custom {
            return f(token, audiences);
        }
        let tokens = lock(&self.tokens);
        let issued = tokens.get(token)?;
        if issued
            .expires
            .is_some_and(|e| e <= chrono::Utc::now().timestamp())
        {
            return None;
        }
        let good_for = |aud: &str| {
            if issued.audiences.is_empty() {
                aud == API_AUDIENCE
            } else {
                issued.audiences.iter().any(|a| a == aud)
            }
        };
        let ok = if audiences.is_empty() {
            issued.audiences.is_empty() || issued.audiences.iter().any(|a| a == API_AUDIENCE)
        } else {
            audiences.iter().any(|a| good_for(a))
        };
        ok.then(|| issued.user.clone())
    }

    pub fn authorize(&self, req: &AccessRequest) -> Decision {
        let f = lock(&self.authorizer).clone();
        f(req)
    }

    /// `POST serviceaccounts/{name}/token`: a TokenRequest with `status.token` (a JWT-shaped,
    /// unsigned token naming the service account, audiences, expiry and bound object) and
    /// `status.expirationTimestamp`.
    pub fn token_request(
        &self,
        sa: &Value,
        bound_pod: Option<&Value>,
        mut req: Value,
    ) -> Result<Value, ApiError> {
        let ns = sa
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let name = sa
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let sa_uid = sa
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut audiences = strings(req.pointer("/spec/audiences"));
        if audiences.is_empty() {
            audiences.push(API_AUDIENCE.to_string());
        }
        let seconds = req
            .pointer("/spec/expirationSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(3600);
        if seconds < 600 {
            return Err(ApiError::invalid_field(
                "authentication.k8s.io",
                "TokenRequest",
                name,
                "FieldValueInvalid",
                "spec.expirationSeconds",
                format!(
                    "Invalid value: {seconds}: may not specify a duration less than 10 minutes"
                ),
            ));
        }
        let now = chrono::Utc::now();
        let exp = now.timestamp() + seconds;
        let mut claims = json!({
            "iss": API_AUDIENCE,
            "sub": format!("system:serviceaccount:{ns}:{name}"),
            "aud": audiences,
            "iat": now.timestamp(),
            "nbf": now.timestamp(),
            "exp": exp,
            "jti": new_uid(),
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": sa_uid}},
        });
        if let Some(pod) = bound_pod {
            claims["kubernetes.io"]["pod"] = json!({
                "name": pod.pointer("/metadata/name"),
                "uid": pod.pointer("/metadata/uid"),
            });
        }
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
        let token = format!("{header}.{body}.{}", URL_SAFE_NO_PAD.encode(new_uid()));
        let mut user = UserInfo::service_account(ns, name);
        user.uid = sa_uid.to_string();
        if let Some(pod) = bound_pod {
            let field = |p: &str| {
                pod.pointer(p)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            user.extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![field("/metadata/name")],
            );
            user.extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![field("/metadata/uid")],
            );
        }
        lock(&self.tokens).insert(
            token.clone(),
            Issued {
                user,
                audiences: audiences.clone(),
                expires: Some(exp),
            },
        );
        let expiration = chrono::DateTime::from_timestamp(exp, 0)
            .unwrap_or(now)
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        req["apiVersion"] = json!("authentication.k8s.io/v1");
        req["kind"] = json!("TokenRequest");
        req["metadata"] = json!({"name": name, "namespace": ns, "creationTimestamp": now.format("%Y-%m-%dT%H:%M:%SZ").to_string()});
        req["spec"]["audiences"] = json!(audiences);
        req["spec"]["expirationSeconds"] = json!(seconds);
        req["status"] = json!({"token": token, "expirationTimestamp": expiration});
        Ok(req)
    }

    /// A TokenReview, SubjectAccessReview, LocalSubjectAccessReview,
    /// SelfSubjectAccessReview or SelfSubjectReview with its `.status` decided.
    pub fn review(
        &self,
        kind: &str,
        namespace: Option<&str>,
        requester: &UserInfo,
        mut review: Value,
    ) -> Result<Value, ApiError> {
        let spec = review.get("spec").cloned().unwrap_or(json!({}));
        match kind {
            "TokenReview" => {
                let token = spec
                    .get("token")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let audiences = strings(spec.get("audiences"));
                review["status"] = match self.authenticate(token, &audiences) {
                    Some(user) => {
                        let audiences = if audiences.is_empty() {
                            vec![API_AUDIENCE.to_string()]
                        } else {
                            audiences
                        };
                        json!({"authenticated": true, "user": user.to_json(), "audiences": audiences})
                    }
                    None => json!({"user": {}, "error": "invalid bearer token"}),
                };
            }
            "SelfSubjectReview" => {
                review["status"] = json!({"userInfo": requester.to_json()});
            }
            "SubjectAccessReview" | "LocalSubjectAccessReview" | "SelfSubjectAccessReview" => {
                let user = if kind == "SelfSubjectAccessReview" {
                    requester.clone()
                } else {
                    UserInfo::from_json(&spec)
                };
                if kind == "LocalSubjectAccessReview" {
                    let asked = spec
                        .pointer("/resourceAttributes/namespace")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if asked != namespace.unwrap_or_default() {
                        return Err(ApiError::bad_request(format!(
                            "spec.resourceAttributes.namespace must match namespace: {}",
                            namespace.unwrap_or_default()
                        )));
                    }
                }
                let attr = |section: &str, f: &str| {
                    spec.get(section)
                        .and_then(|s| s.get(f))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let resource = spec.get("resourceAttributes").is_some();
                let section = if resource {
                    "resourceAttributes"
                } else {
                    "nonResourceAttributes"
                };
                let req = AccessRequest {
                    user,
                    verb: attr(section, "verb"),
                    namespace: attr("resourceAttributes", "namespace"),
                    group: attr("resourceAttributes", "group"),
                    resource: attr("resourceAttributes", "resource"),
                    subresource: attr("resourceAttributes", "subresource"),
                    name: attr("resourceAttributes", "name"),
                    path: attr("nonResourceAttributes", "path"),
                };
                let d = self.authorize(&req);
                let mut status = json!({"allowed": d.allowed});
                if d.denied {
                    status["denied"] = json!(true);
                }
                if !d.reason.is_empty() {
                    status["reason"] = json!(d.reason);
                }
                review["status"] = status;
            }
            other => return Err(ApiError::internal(format!("{other} is not a review"))),
        }
        let meta = review
            .get("metadata")
            .cloned()
            .filter(Value::is_object)
            .unwrap_or(json!({}));
        review["metadata"] = meta;
        if review["metadata"].get("creationTimestamp").is_none() {
            review["metadata"]["creationTimestamp"] = Value::Null;
        }
        Ok(review)
    }
}

impl Default for Auth {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_system_admin() {
        let auth = Auth::new();
        let user = auth
            .authenticate(auth.admin_token(), &[])
            .expect("authenticated");
        assert_eq!(user.username, "system:admin");
        assert!(user.groups.contains(&"system:masters".to_string()));
        assert!(auth.authenticate("nope", &[]).is_none());
    }

    #[test]
    fn token_requests_make_audience_bound_tokens() {
        let auth = Auth::new();
        let sa = json!({"metadata": {"name": "default", "namespace": "ns", "uid": "u1"}});
        let req = json!({"spec": {"audiences": ["vault"], "expirationSeconds": 600}});
        let tr = auth.token_request(&sa, None, req).expect("token");
        let token = tr["status"]["token"].as_str().expect("token string");
        assert_eq!(token.split('.').count(), 3);
        let user = auth
            .authenticate(token, &["vault".into()])
            .expect("for vault");
        assert_eq!(user.username, "system:serviceaccount:ns:default");
        assert!(
            auth.authenticate(token, &[]).is_none(),
            "not for the API server"
        );
        let short = json!({"spec": {"expirationSeconds": 10}});
        assert_eq!(
            auth.token_request(&sa, None, short).map_err(|e| e.code),
            Err(422)
        );
    }

    #[test]
    fn access_reviews_ask_the_authorizer() {
        let auth = Auth::new();
        auth.set_authorizer(Arc::new(|r: &AccessRequest| {
            if r.user.username == "system:node:n1" && r.resource == "pods" {
                Decision::allow()
            } else {
                Decision::no_opinion("not a node")
            }
        }));
        let sar = |user: &str| json!({"spec": {"user": user, "resourceAttributes": {"verb": "get", "resource": "pods"}}});
        let yes = auth
            .review(
                "SubjectAccessReview",
                None,
                &UserInfo::admin(),
                sar("system:node:n1"),
            )
            .expect("review");
        assert_eq!(yes["status"]["allowed"], true);
        let no = auth
            .review("SubjectAccessReview", None, &UserInfo::admin(), sar("bob"))
            .expect("review");
        assert_eq!(no["status"]["allowed"], false);
        assert_eq!(no["status"]["reason"], "not a node");
    }
}
