//! Image pull credentials from `kubernetes.io/dockerconfigjson` and
//! `kubernetes.io/dockercfg` secrets, matched to an image the way upstream's
//! credential keyring does it: a location (`registry.example.com`,
//! `registry.example.com:5000/team`, `*.example.com`, `https://index.docker.io/v1/`) matches
//! an image of the same host (glob per dot-separated part), same port, and a repository
//! path below the location's path. The most specific locations come first; Docker Hub
//! images also match `index.docker.io` credentials. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use proto::v1;
use serde::Deserialize;

pub const TYPE_DOCKER_CONFIG_JSON: &str = "kubernetes.io/dockerconfigjson";
pub const TYPE_DOCKERCFG: &str = "kubernetes.io/dockercfg";
const KEY_DOCKER_CONFIG_JSON: &str = ".dockerconfigjson";
const KEY_DOCKERCFG: &str = ".dockercfg";

/// Docker Hub as the credential files name it.
const DEFAULT_REGISTRY_HOST: &str = "index.docker.io";

/// Why a pull secret was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("secret {secret}: type {type_} is not a docker config secret")]
    WrongType { secret: String, type_: String },
    #[error("secret {secret}: no {key} key")]
    MissingKey { secret: String, key: &'static str },
    #[error("secret {secret}: {key}: {reason}")]
    Invalid {
        secret: String,
        key: &'static str,
        reason: String,
    },
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, DockerConfigEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct DockerConfigEntry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
    #[serde(default, rename = "identitytoken")]
    identity_token: String,
}

/// Credentials by location, most specific location first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Keyring {
    /// (location key `host[:port][/path]`, credentials), sorted by key, descending.
    entries: Vec<(String, v1::AuthConfig)>,
}

impl Keyring {
    /// The keyring of the given secrets; the ones that are no docker config are skipped
    /// (and reported).
    pub fn from_secrets(secrets: &[Secret]) -> (Self, Vec<Error>) {
        let mut ring = Keyring::default();
        let mut errors = Vec::new();
        for s in secrets {
            match ring.add_secret(s) {
                Ok(()) => {}
                Err(e) => errors.push(e),
            }
        }
        ring.entries
            .sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.username.cmp(&b.1.username)));
        ring.entries.dedup();
        (ring, errors)
    }

    fn add_secret(&mut self, s: &Secret) -> Result<(), Error> {
        let secret = s.metadata.name.clone().unwrap_or_default();
        let type_ = s.type_.clone().unwrap_or_default();
        let data = crate::objects::secret_data(s);
        let (key, config) = match type_.as_str() {
            TYPE_DOCKER_CONFIG_JSON => {
                let raw = data.get(KEY_DOCKER_CONFIG_JSON).ok_or(Error::MissingKey {
                    secret: secret.clone(),
                    key: KEY_DOCKER_CONFIG_JSON,
                })?;
                let parsed: DockerConfigJson =
                    serde_json::from_slice(raw).map_err(|e| Error::Invalid {
                        secret: secret.clone(),
                        key: KEY_DOCKER_CONFIG_JSON,
                        reason: e.to_string(),
                    })?;
                (KEY_DOCKER_CONFIG_JSON, parsed.auths)
            }
            TYPE_DOCKERCFG => {
                let raw = data.get(KEY_DOCKERCFG).ok_or(Error::MissingKey {
                    secret: secret.clone(),
                    key: KEY_DOCKERCFG,
                })?;
                let parsed: BTreeMap<String, DockerConfigEntry> = serde_json::from_slice(raw)
                    .map_err(|e| Error::Invalid {
                        secret: secret.clone(),
                        key: KEY_DOCKERCFG,
                        reason: e.to_string(),
                    })?;
                (KEY_DOCKERCFG, parsed)
            }
            _ => return Err(Error::WrongType { secret, type_ }),
        };
        for (location, entry) in config {
            let (mut username, mut password) = (entry.username, entry.password);
            if !entry.auth.is_empty() {
                let decoded = decode_base64(entry.auth.trim())
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| Error::Invalid {
                        secret: secret.clone(),
                        key,
                        reason: format!("auth of {location} is not base64 of user:password"),
                    })?;
                let (u, p) = decoded.split_once(':').ok_or_else(|| Error::Invalid {
                    secret: secret.clone(),
                    key,
                    reason: format!("auth of {location} is not user:password"),
                })?;
                username = u.to_string();
                password = p.to_string();
            }
            let Some(loc) = location_key(&location) else {
                continue;
            };
            self.entries.push((
                loc,
                v1::AuthConfig {
                    username,
                    password,
                    server_address: location.clone(),
                    identity_token: entry.identity_token,
                    ..Default::default()
                },
            ));
        }
        Ok(())
    }

    /// The credentials to try for `image`, most specific location first; empty: pull
    /// anonymously.
    pub fn lookup(&self, image: &str) -> Vec<v1::AuthConfig> {
        let repo = repository(image);
        let mut out: Vec<v1::AuthConfig> = self
            .entries
            .iter()
            .filter(|(k, _)| location_matches(k, &repo))
            .map(|(_, a)| a.clone())
            .collect();
        if out.is_empty() && is_docker_hub(&repo) {
            out = self
                .entries
                .iter()
                .filter(|(k, _)| k == DEFAULT_REGISTRY_HOST)
                .map(|(_, a)| a.clone())
                .collect();
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A credential location as a key: scheme dropped, `/v1/` and `/v2/` read as the host.
fn location_key(location: &str) -> Option<String> {
    let rest = location
        .strip_prefix("https://")
        .or_else(|| location.strip_prefix("http://"))
        .unwrap_or(location);
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return None;
    }
    let path = path
        .strip_prefix("/v1")
        .or_else(|| path.strip_prefix("/v2"))
        .filter(|p| p.is_empty() || p.starts_with('/'))
        .unwrap_or(path);
    if path.is_empty() || path == "/" {
        Some(host.to_string())
    } else {
        Some(format!("{host}{path}"))
    }
}

/// The repository an image is pulled from, with its registry: `busybox:1` →
/// `docker.io/library/busybox`, `r.example.com:5000/a/b@sha256:…` →
/// `r.example.com:5000/a/b`.
pub fn repository(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A tag is a `:` after the last `/`.
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let name = match without_digest[last_slash..].find(':') {
        Some(i) => &without_digest[..last_slash + i],
        None => without_digest,
    };
    match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            name.to_string()
        }
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    }
}

fn is_docker_hub(repo: &str) -> bool {
    repo.starts_with("docker.io/") || repo.starts_with("index.docker.io/")
}

/// `host[:port]` and `/path` of a schemeless location or repository.
fn split_location(s: &str) -> (&str, &str, &str) {
    let (hostport, path) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (hostport, ""),
    };
    (host, port, path)
}

/// Whether a location key matches a repository: same port, as many host parts each
/// matching its glob, and the repository's path under the location's.
fn location_matches(key: &str, repo: &str) -> bool {
    let (ghost, gport, gpath) = split_location(key);
    let (thost, tport, tpath) = split_location(repo);
    if gport != tport || !tpath.starts_with(gpath) {
        return false;
    }
    let gparts: Vec<&str> = ghost.split('.').collect();
    let tparts: Vec<&str> = thost.split('.').collect();
    gparts.len() == tparts.len() && gparts.iter().zip(&tparts).all(|(g, t)| glob(g, t))
}

/// Shell-style matching of one host part: `*` any run, `?` one character.
fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Standard base64 (padding optional); None when it is not.
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = s.trim_end_matches('=').as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc: u32 = 0;
        for (i, c) in chunk.iter().enumerate() {
            acc |= value(*c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        // Encoding for the tests only.
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk.len();
            let v = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= n {
                    out.push(A[((v >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn secret(name: &str, type_: &str, key: &str, config: serde_json::Value) -> Secret {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "type": type_,
            "data": {key: b64(&config.to_string())},
        }))
        .expect("secret")
    }

    #[test]
    fn base64_round_trips() {
        for s in ["", "a", "ab", "abc", "user:pa55:word", "\u{e9}t\u{e9}"] {
            assert_eq!(decode_base64(&b64(s)).as_deref(), Some(s.as_bytes()), "{s}");
        }
        assert_eq!(decode_base64("!!!!"), None);
        assert_eq!(decode_base64("abcde"), None);
    }

    #[test]
    fn repositories_of_images() {
        let cases = [
            ("busybox", "docker.io/library/busybox"),
            ("busybox:1.36", "docker.io/library/busybox"),
            ("team/app:v1", "docker.io/team/app"),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox",
            ),
            ("localhost/app", "localhost/app"),
            ("r.example.com:5000/a/b:t", "r.example.com:5000/a/b"),
            ("r.example.com/a@sha256:abcd", "r.example.com/a"),
            ("127.0.0.1:5000/app:tag@sha256:ef", "127.0.0.1:5000/app"),
        ];
        for (image, want) in cases {
            assert_eq!(repository(image), want, "{image}");
        }
    }

    #[test]
    fn docker_config_secrets_to_auth_configs() {
        let json_secret = secret(
            "regcred",
            TYPE_DOCKER_CONFIG_JSON,
            KEY_DOCKER_CONFIG_JSON,
            json!({"auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:hubpass")},
                "registry.example.com": {"username": "u1", "password": "p1"},
                "registry.example.com/team": {"username": "team", "password": "tp"},
                "*.mirror.example.com": {"username": "m", "password": "mp"},
                "127.0.0.1:5000": {"auth": b64("local:lp")},
            }}),
        );
        let cfg_secret = secret(
            "legacy",
            TYPE_DOCKERCFG,
            KEY_DOCKERCFG,
            json!({"old.example.com": {"username": "o", "password": "op", "email": "x@y"}}),
        );
        let opaque: Secret =
            serde_json::from_value(json!({"metadata": {"name": "opaque"}, "type": "Opaque"}))
                .expect("secret");
        let (ring, errors) = Keyring::from_secrets(&[json_secret, cfg_secret, opaque]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(matches!(errors[0], Error::WrongType { .. }));
        let users = |image: &str| -> Vec<(String, String)> {
            ring.lookup(image)
                .into_iter()
                .map(|a| (a.username, a.password))
                .collect()
        };
        let pair = |u: &str, p: &str| (u.to_string(), p.to_string());
        assert_eq!(users("busybox"), [pair("hub", "hubpass")]);
        assert_eq!(users("docker.io/team/app:1"), [pair("hub", "hubpass")]);
        assert_eq!(users("registry.example.com/other/app"), [pair("u1", "p1")]);
        assert_eq!(
            users("registry.example.com/team/app:v2"),
            [pair("team", "tp"), pair("u1", "p1")],
            "the most specific location first"
        );
        assert_eq!(users("eu.mirror.example.com/app"), [pair("m", "mp")]);
        assert!(
            users("a.b.mirror.example.com/app").is_empty(),
            "a glob part is one part"
        );
        assert_eq!(users("127.0.0.1:5000/app"), [pair("local", "lp")]);
        assert!(users("127.0.0.1:5001/app").is_empty(), "another port");
        assert_eq!(users("old.example.com/x"), [pair("o", "op")]);
        assert!(users("quay.io/app").is_empty());
        let a = ring.lookup("registry.example.com/x");
        assert_eq!(a[0].server_address, "registry.example.com");
    }

    #[test]
    fn broken_secrets_are_reported() {
        let no_key: Secret = serde_json::from_value(json!({"metadata": {"name": "a"},
            "type": TYPE_DOCKER_CONFIG_JSON, "data": {}}))
        .expect("secret");
        let bad_json: Secret = serde_json::from_value(json!({"metadata": {"name": "b"},
            "type": TYPE_DOCKER_CONFIG_JSON, "data": {KEY_DOCKER_CONFIG_JSON: b64("{")}}))
        .expect("secret");
        let bad_auth = secret(
            "c",
            TYPE_DOCKER_CONFIG_JSON,
            KEY_DOCKER_CONFIG_JSON,
            json!({"auths": {"r.example.com": {"auth": b64("nocolon")}}}),
        );
        let (ring, errors) = Keyring::from_secrets(&[no_key, bad_json, bad_auth]);
        assert!(ring.is_empty());
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(matches!(errors[0], Error::MissingKey { .. }));
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("reg*", "registry"));
        assert!(glob("r?g", "reg"));
        assert!(!glob("r?g", "regg"));
        assert!(glob("*y", "registry"));
        assert!(!glob("a*b", "acd"));
    }
}
