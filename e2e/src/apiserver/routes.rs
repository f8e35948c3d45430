//! HTTP: request parsing, routing to discovery and resources, verbs, and responses.
//!
//! Paths are the real server's: `/api/v1/[namespaces/{ns}/]{resource}[/{name}[/{sub}]]`
//! and `/apis/{group}/{version}/...`. Bodies are JSON in and out (protobuf request bodies
//! of the kinds [`protobuf`] knows are decoded to JSON first; a protobuf `Accept`
//! gets JSON, which client-go and kubectl take); `Accept: ...;as=Table` gets a Table for
//! get, list and watch.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

use super::auth::UserInfo;
use super::patch::{self, PatchType};
use super::protobuf;
use super::registry::{DeleteOptions, Deleted, returns_deleted_object};
use super::resources::{Behavior, Gvr, Resource, find, lookup};
use super::selectors::{FieldSelector, LabelSelector, Selector};
use super::status::{self, ApiError};
use super::table::{self, IncludeObject};
use super::watch::{Params, Watch};
use super::{RequestRecord, Shared, discovery};

/// A response body: a whole JSON document or a watch stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// Watches without `timeoutSeconds` end after this long (the real server's minimum
/// request timeout).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Bodies larger than this are refused (the real server's limit is 3 MiB per object).
const MAX_BODY: usize = 16 << 20;

enum Reply {
    Json(StatusCode, Value),
    Text(&'static str),
    Watch(Box<Watch>),
}

/// One parsed request.
struct Ctx {
    shared: Arc<Shared>,
    method: Method,
    query: Vec<(String, String)>,
    user: UserInfo,
    accept: String,
    content_type: String,
    body: Bytes,
}

impl Ctx {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        let media = self
            .content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        if media == protobuf::MEDIA_TYPE {
            return protobuf::decode(&self.body);
        }
        if !matches!(media, "" | "application/json" | "*/*") {
            return Err(ApiError::unsupported_media_type(media));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::bad_request(format!("couldn't decode the request body as json: {e}"))
        })
    }

    fn table(&self) -> Option<(&'static str, IncludeObject)> {
        let version = table::requested(&self.accept)?;
        let include = IncludeObject::parse(self.param("includeObject").unwrap_or_default());
        Some((version, include))
    }
}

fn header(req: &Request<Incoming>, name: http::header::HeaderName) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Decodes `%XX` escapes in one path segment.
fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves one request, recording it in the request log.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = req.uri().path().to_string();
    let query = form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let auth = header(&req, AUTHORIZATION);
    let token = auth
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    let authenticated = token
        .as_deref()
        .and_then(|t| shared.auth.authenticate(t, &[]));
    let user = authenticated.clone().unwrap_or_else(UserInfo::anonymous);
    let accept = header(&req, ACCEPT);
    let content_type = header(&req, CONTENT_TYPE);
    let user_agent = header(&req, http::header::USER_AGENT);
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    };
    let reply = match body {
        Ok(body) => {
            let ctx = Ctx {
                shared: shared.clone(),
                method: method.clone(),
                query,
                user,
                accept,
                content_type,
                body,
            };
            route(&ctx, &path)
        }
        Err(e) => Err(e),
    };
    let response = match reply {
        Ok(Reply::Json(code, value)) => json_response(code, &value),
        Ok(Reply::Text(text)) => Response::builder()
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from_static(text.as_bytes())).boxed()),
        Ok(Reply::Watch(watch)) => watch_response(*watch),
        Err(e) => {
            let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            json_response(code, &e.to_status())
        }
    };
    let response = response.unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    });
    shared.record(RequestRecord {
        method: method.to_string(),
        path: target,
        user: authenticated,
        token,
        user_agent,
        status: response.status().as_u16(),
    });
    Ok(response)
}

fn json_response(code: StatusCode, value: &Value) -> Result<Response<Body>, http::Error> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    Response::builder()
        .status(code)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
}

fn watch_response(watch: Watch) -> Result<Response<Body>, http::Error> {
    let stream = futures::stream::unfold(watch, |mut w| async move {
        let chunk = w.next_chunk().await?;
        Some((chunk, w))
    })
    .map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(BodyExt::boxed(StreamBody::new(stream)))
}

fn only_get(ctx: &Ctx, value: Option<Value>) -> Result<Reply, ApiError> {
    if ctx.method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    value
        .map(|v| Reply::Json(StatusCode::OK, v))
        .ok_or_else(ApiError::no_route)
}

fn route(ctx: &Ctx, path: &str) -> Result<Reply, ApiError> {
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segs.as_slice() {
        [] => only_get(
            ctx,
            Some(
                json!({"paths": ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v3", "/readyz", "/version"]}),
            ),
        ),
        ["version"] => only_get(ctx, Some(discovery::version())),
        ["healthz" | "livez" | "readyz", ..] => {
            if ctx.method != Method::GET {
                return Err(ApiError::method_not_allowed());
            }
            Ok(Reply::Text("ok"))
        }
        ["api"] => only_get(
            ctx,
            Some(discovery::core_versions(&ctx.shared.addr.to_string())),
        ),
        ["apis"] => only_get(ctx, Some(discovery::groups())),
        ["apis", group] => only_get(ctx, discovery::group(group)),
        ["api", version] => only_get(ctx, discovery::resources("", version)),
        ["apis", group, version] => only_get(ctx, discovery::resources(group, version)),
        ["openapi", "v3"] => only_get(ctx, Some(discovery::openapi_index())),
        ["openapi", "v3", rest @ ..] => {
            only_get(ctx, discovery::openapi_group_version(&rest.join("/")))
        }
        ["api", version, rest @ ..] => resource_request(ctx, "", version, rest),
        ["apis", group, version, rest @ ..] => resource_request(ctx, group, version, rest),
        _ => Err(ApiError::no_route()),
    }
}

/// What a resource path names.
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, next, tail @ ..]
            if !(tail.is_empty() && matches!(*next, "status" | "finalize")) =>
        {
            (Some(ns.to_string()), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(ApiError::no_route()),
    };
    let res = lookup(group, version, plural).ok_or_else(ApiError::no_route)?;
    if !res.namespaced && namespace.is_some() {
        return Err(ApiError::no_route());
    }
    if res.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::no_route());
    }
    if let Some(sub) = &sub
        && res.subresource(sub).is_none()
    {
        return Err(ApiError::no_route());
    }
    Ok(Target {
        res,
        namespace,
        name,
        sub,
    })
}

fn allow(res: &Resource, verb: &str) -> Result<(), ApiError> {
    if res.allows(verb) {
        Ok(())
    } else {
        Err(ApiError::method_not_allowed())
    }
}

fn resource_request(
    ctx: &Ctx,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Reply, ApiError> {
    let t = parse_target(group, version, rest)?;
    if ctx.param("dryRun").is_some() && ctx.method != Method::GET {
        return Err(ApiError::bad_request(
            "dryRun is not supported by this test API server",
        ));
    }
    let ns = t.namespace.as_deref();
    match (&t.name, &t.sub) {
        (None, _) => match ctx.method {
            Method::GET if ctx.flag("watch") => {
                allow(t.res, "watch")?;
                watch(ctx, &t, None)
            }
            Method::GET => {
                allow(t.res, "list")?;
                list(ctx, &t)
            }
            Method::POST if t.res.namespaced && ns.is_none() => Err(ApiError::method_not_allowed()),
            Method::POST => {
                allow(t.res, "create")?;
                create(ctx, &t)
            }
            Method::DELETE => {
                allow(t.res, "deletecollection")?;
                delete_collection(ctx, &t)
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        (Some(name), None) => match ctx.method {
            Method::GET if ctx.flag("watch") => {
                allow(t.res, "watch")?;
                watch(ctx, &t, Some(name))
            }
            Method::GET => {
                allow(t.res, "get")?;
                get(ctx, &t, name)
            }
            Method::PUT => {
                allow(t.res, "update")?;
                update(ctx, &t, name, None)
            }
            Method::PATCH => {
                allow(t.res, "patch")?;
                patch(ctx, &t, name, None)
            }
            Method::DELETE => {
                allow(t.res, "delete")?;
                delete(ctx, &t, name)
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        (Some(name), Some(sub)) => {
            let verbs = t.res.subresource(sub).map(|s| s.verbs).unwrap_or_default();
            let verb = match ctx.method {
                Method::GET => "get",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::POST => "create",
                _ => return Err(ApiError::method_not_allowed()),
            };
            if !verbs.contains(&verb) {
                return Err(ApiError::method_not_allowed());
            }
            match (verb, sub.as_str()) {
                ("get", _) => get(ctx, &t, name),
                ("update", _) => update(ctx, &t, name, Some(sub)),
                ("patch", _) => patch(ctx, &t, name, Some(sub)),
                ("create", "token") => token_request(ctx, &t, name),
                _ => Err(ApiError::method_not_allowed()),
            }
        }
    }
}

fn selector(ctx: &Ctx, res: &Resource) -> Result<Selector, ApiError> {
    Ok(Selector {
        labels: LabelSelector::parse(ctx.param("labelSelector").unwrap_or_default())?,
        fields: FieldSelector::parse(ctx.param("fieldSelector").unwrap_or_default(), res)?,
    })
}

/// A list as the real server sends it: items without their own kind and apiVersion.
fn list_body(res: &Resource, items: Vec<Value>, rv: u64) -> Value {
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut o| {
            if let Value::Object(m) = &mut o {
                m.remove("kind");
                m.remove("apiVersion");
            }
            o
        })
        .collect();
    json!({
        "kind": res.list_kind(),
        "apiVersion": res.api_version(),
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    })
}

fn list(ctx: &Ctx, t: &Target) -> Result<Reply, ApiError> {
    let sel = selector(ctx, t.res)?;
    let (items, rv) = ctx
        .shared
        .registry
        .list(t.res, t.namespace.as_deref(), &sel);
    let body = match ctx.table() {
        Some((version, include)) => table::convert(t.res, &items, Some(rv), include, version),
        None => list_body(t.res, items, rv),
    };
    Ok(Reply::Json(StatusCode::OK, body))
}

fn get(ctx: &Ctx, t: &Target, name: &str) -> Result<Reply, ApiError> {
    let obj = ctx
        .shared
        .registry
        .get(t.res, t.namespace.as_deref(), name)?;
    let body = match ctx.table() {
        Some((version, include)) => table::convert(t.res, &[obj], None, include, version),
        None => obj,
    };
    Ok(Reply::Json(StatusCode::OK, body))
}

fn watch(ctx: &Ctx, t: &Target, name: Option<&str>) -> Result<Reply, ApiError> {
    let mut sel = selector(ctx, t.res)?;
    if let Some(name) = name {
        let mut escaped = String::new();
        for c in name.chars() {
            if matches!(c, '\\' | ',' | '=') {
                escaped.push('\\');
            }
            escaped.push(c);
        }
        sel.fields = FieldSelector::parse(&format!("metadata.name={escaped}"), t.res)?;
    }
    let resource_version = match ctx.param("resourceVersion").unwrap_or_default() {
        "" | "0" => None,
        rv => Some(rv.parse::<u64>().map_err(|_| {
            ApiError::invalid_field(
                t.res.group,
                t.res.kind,
                "",
                "FieldValueInvalid",
                "resourceVersion",
                format!("Invalid value: {rv:?}: must be a number"),
            )
        })?),
    };
    let send_initial_events = ctx.flag("sendInitialEvents");
    let bookmarks = ctx.flag("allowWatchBookmarks");
    if send_initial_events {
        if ctx.param("resourceVersionMatch") != Some("NotOlderThan") {
            return Err(ApiError::unprocessable(
                "sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan",
            ));
        }
        if !bookmarks {
            return Err(ApiError::unprocessable(
                "allowWatchBookmarks: Required value: sendInitialEvents requires setting allowWatchBookmarks=true",
            ));
        }
    }
    let timeout = match ctx
        .param("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(s) if s > 0 => Duration::from_secs(s),
        _ => DEFAULT_WATCH_TIMEOUT,
    };
    let params = Params {
        res: t.res,
        namespace: t.namespace.clone(),
        selector: sel,
        resource_version,
        bookmarks,
        send_initial_events,
        timeout,
        bookmark_interval: ctx.shared.options.bookmark_interval,
        table: ctx.table(),
    };
    Ok(Reply::Watch(Box::new(Watch::new(
        ctx.shared.registry.clone(),
        params,
    ))))
}

fn create(ctx: &Ctx, t: &Target) -> Result<Reply, ApiError> {
    let body = ctx.json_body()?;
    let ns = t.namespace.as_deref();
    if t.res.behavior == Behavior::Review {
        let reviewed =
            ctx.shared
                .auth
                .review(t.res.kind, ns, &ctx.user, check_kind(t.res, body)?)?;
        return Ok(Reply::Json(StatusCode::CREATED, reviewed));
    }
    let created = ctx.shared.registry.create(t.res, ns, body, &ctx.user)?;
    Ok(Reply::Json(StatusCode::CREATED, created))
}

/// Checks a review's apiVersion and kind (filled in when missing).
fn check_kind(res: &Resource, mut body: Value) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request is not a json object",
        ));
    }
    let api_version = res.api_version();
    for (field, want) in [("apiVersion", api_version.as_str()), ("kind", res.kind)] {
        let given = body.get(field).and_then(Value::as_str).unwrap_or_default();
        if !given.is_empty() && given != want {
            return Err(ApiError::bad_request(format!(
                "the {field} in the data ({given}) does not match the expected {field} ({want})"
            )));
        }
        body[field] = json!(want);
    }
    Ok(body)
}

fn update(ctx: &Ctx, t: &Target, name: &str, sub: Option<&str>) -> Result<Reply, ApiError> {
    let body = ctx.json_body()?;
    let (obj, created) =
        ctx.shared
            .registry
            .update(t.res, t.namespace.as_deref(), name, sub, &ctx.user, |_| {
                Ok(body)
            })?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(Reply::Json(code, obj))
}

fn patch(ctx: &Ctx, t: &Target, name: &str, sub: Option<&str>) -> Result<Reply, ApiError> {
    let media = ctx
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let patch_type = PatchType::from_content_type(&media)
        .ok_or_else(|| ApiError::unsupported_media_type(&media))?;
    let res = t.res;
    let (obj, _) = ctx.shared.registry.update(
        res,
        t.namespace.as_deref(),
        name,
        sub,
        &ctx.user,
        |current| {
            let current =
                current.ok_or_else(|| ApiError::not_found(res.group, res.plural, name))?;
            Ok(patch::apply(res.kind, current, patch_type, &ctx.body)?)
        },
    )?;
    Ok(Reply::Json(StatusCode::OK, obj))
}

fn delete_options(ctx: &Ctx) -> Result<DeleteOptions, ApiError> {
    let mut opts = DeleteOptions {
        grace_period_seconds: ctx.param("gracePeriodSeconds").and_then(|s| s.parse().ok()),
        ..DeleteOptions::default()
    };
    if ctx.body.iter().any(|b| !b.is_ascii_whitespace()) {
        let body: Value = ctx.json_body()?;
        if let Some(g) = body.get("gracePeriodSeconds").and_then(Value::as_i64) {
            opts.grace_period_seconds = Some(g);
        }
        let pre = |f: &str| {
            body.pointer(&format!("/preconditions/{f}"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        opts.precondition_uid = pre("uid");
        opts.precondition_resource_version = pre("resourceVersion");
        if body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| !d.is_empty())
        {
            return Err(ApiError::bad_request(
                "dryRun is not supported by this test API server",
            ));
        }
    }
    Ok(opts)
}

fn delete_reply(res: &Resource, deleted: Deleted) -> Value {
    match deleted {
        Deleted::Gone(obj) if !returns_deleted_object(res) => {
            let meta = |f: &str| {
                obj.pointer(&format!("/metadata/{f}"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            };
            status::success(res.group, res.plural, meta("name"), meta("uid"))
        }
        Deleted::Gone(obj) | Deleted::Pending(obj) => obj,
    }
}

fn delete(ctx: &Ctx, t: &Target, name: &str) -> Result<Reply, ApiError> {
    let opts = delete_options(ctx)?;
    let deleted = ctx
        .shared
        .registry
        .delete(t.res, t.namespace.as_deref(), name, &opts)?;
    Ok(Reply::Json(StatusCode::OK, delete_reply(t.res, deleted)))
}

fn delete_collection(ctx: &Ctx, t: &Target) -> Result<Reply, ApiError> {
    let opts = delete_options(ctx)?;
    let sel = selector(ctx, t.res)?;
    let (items, _) = ctx
        .shared
        .registry
        .list(t.res, t.namespace.as_deref(), &sel);
    let mut out = Vec::new();
    for item in items {
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ns = item.pointer("/metadata/namespace").and_then(Value::as_str);
        match ctx.shared.registry.delete(t.res, ns, name, &opts) {
            Ok(Deleted::Gone(o) | Deleted::Pending(o)) => out.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let rv = ctx.shared.registry.store.resource_version();
    Ok(Reply::Json(StatusCode::OK, list_body(t.res, out, rv)))
}

/// `POST serviceaccounts/{name}/token`.
fn token_request(ctx: &Ctx, t: &Target, name: &str) -> Result<Reply, ApiError> {
    let ns = t.namespace.as_deref();
    let sa = ctx.shared.registry.get(t.res, ns, name)?;
    let mut body = ctx.json_body()?;
    for (field, want) in [
        ("apiVersion", "authentication.k8s.io/v1"),
        ("kind", "TokenRequest"),
    ] {
        let given = body.get(field).and_then(Value::as_str).unwrap_or_default();
        if !given.is_empty() && given != want {
            return Err(ApiError::bad_request(format!(
                "the {field} in the data ({given}) does not match the expected {field} ({want})"
            )));
        }
        body[field] = json!(want);
    }
    let bound = body.pointer("/spec/boundObjectRef").cloned();
    let pod = match bound {
        Some(r) if r.get("kind").and_then(Value::as_str) == Some("Pod") => {
            let pod_name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            let pods = find(Gvr::PODS).ok_or_else(|| ApiError::internal("pods are not served"))?;
            let pod = ctx.shared.registry.get(pods, ns, pod_name)?;
            let want_uid = r.get("uid").and_then(Value::as_str).unwrap_or_default();
            let uid = pod
                .pointer("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !want_uid.is_empty() && want_uid != uid {
                return Err(ApiError::conflict(
                    "",
                    "pods",
                    pod_name,
                    &format!(
                        "the UID in the bound object reference ({want_uid}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            Some(pod)
        }
        _ => None,
    };
    let tr = ctx.shared.auth.token_request(&sa, pod.as_ref(), body)?;
    Ok(Reply::Json(StatusCode::CREATED, tr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = parse_target("", "v1", &["namespaces", "default", "pods", "p", "status"])
            .expect("pod status");
        assert_eq!(
            (
                t.res.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("pods", Some("default"), Some("p"), Some("status"))
        );
        let t =
            parse_target("", "v1", &["namespaces", "default", "status"]).expect("namespace status");
        assert_eq!(
            (t.res.plural, t.name.as_deref(), t.sub.as_deref()),
            ("namespaces", Some("default"), Some("status"))
        );
        let t = parse_target("", "v1", &["pods"]).expect("all pods");
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(
            parse_target("", "v1", &["pods", "p"]).is_err(),
            "a pod needs a namespace"
        );
        assert!(
            parse_target("", "v1", &["namespaces", "x", "nodes"]).is_err(),
            "nodes are cluster-scoped"
        );
        assert!(parse_target("", "v1", &["namespaces", "x", "pods", "p", "nope"]).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab"), "a:b");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
