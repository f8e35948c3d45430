//! Image references, normalized the way kubelet and crictl expect
//! (`busybox` → `docker.io/library/busybox:latest`).

use std::fmt;

use oci_client::Reference;

use super::{Error, Result, content::parse_digest};

/// A normalized image reference: registry, repository, and a tag and/or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Docker Hub, where names without a registry live.
const DOCKER_HUB: &str = "docker.io";
/// Docker Hub's legacy name, normalized to [`DOCKER_HUB`].
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
/// Longest repository path (after normalization, `library/` included).
const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag.
const MAX_TAG_LEN: usize = 128;

impl ImageRef {
    /// Parses a reference by the distribution grammar
    /// (`[host[:port]/]path[:tag][@digest]`) and normalizes it as the Docker tools do.
    ///
    /// Hand-written rather than with `oci_client::Reference`'s parser: that one compiles
    /// a regex whose Unicode `\w{0,127}` tag expands to an automaton of ~8 MiB, kept in a
    /// static for the life of the process, which nearly doubled an idle node's memory.
    /// The grammar is the same, except that tags are ASCII as in Docker's (Go) grammar.
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidReference {
            reference: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(invalid("empty reference".into()));
        }
        // No part before the digest contains `@`; a tag follows the last `:` unless a `/`
        // comes after it, in which case that `:` separated a registry port.
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (input, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
            _ => (rest, None),
        };
        if let Some(t) = tag.filter(|t| !is_tag(t)) {
            return Err(invalid(format!(
                "tag {t:?} must be 1 to {MAX_TAG_LEN} letters, digits, '_', '.' or '-', \
                 not starting with '.' or '-'"
            )));
        }
        if let Some(d) = digest {
            parse_digest(d).map_err(|e| invalid(e.to_string()))?;
        }
        let has_registry = name
            .split_once('/')
            .is_some_and(|(host, path)| is_registry(host) && is_path(path));
        if !has_registry && !is_path(name) {
            return Err(invalid(format!(
                "name {name:?} must be [host[:port]/]path with lowercase path components"
            )));
        }
        let (registry, repository) = split_registry(name);
        // `Host/path` reads as a path on Docker Hub, where uppercase is not allowed.
        if !is_path(&repository) {
            return Err(invalid(format!(
                "repository {repository:?} must be lowercase letters, digits and separators"
            )));
        }
        if repository.len() > MAX_REPOSITORY_LEN {
            return Err(invalid(format!(
                "repository is longer than {MAX_REPOSITORY_LEN} characters"
            )));
        }
        Ok(Self {
            registry,
            repository,
            // `latest` only when there is neither tag nor digest.
            tag: tag
                .map(str::to_string)
                .or_else(|| digest.is_none().then(|| "latest".to_string())),
            digest: digest.map(str::to_string),
        })
    }

    /// `registry/repository`
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, if tagged.
    pub fn tagged(&self) -> Option<String> {
        self.tag.as_ref().map(|t| format!("{}:{t}", self.name()))
    }

    /// `registry/repository@digest` for a given manifest digest.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// The reference for the oci client, aimed at `host` (a mirror or the registry).
    pub fn to_client_ref(&self, host: &str) -> Reference {
        let mut r = match (&self.tag, &self.digest) {
            (Some(t), Some(d)) => Reference::with_tag_and_digest(
                self.registry.clone(),
                self.repository.clone(),
                t.clone(),
                d.clone(),
            ),
            (None, Some(d)) => {
                Reference::with_digest(self.registry.clone(), self.repository.clone(), d.clone())
            }
            (t, None) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                t.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        if host != self.registry {
            r.set_mirror_registry(host.to_string());
        }
        r
    }

    /// The same repository at a specific digest (used for child manifests and blobs).
    pub fn at_digest(&self, digest: &str) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `tag`: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    match tag.as_bytes().split_first() {
        Some((first, rest)) => {
            tag.len() <= MAX_TAG_LEN
                && word(*first)
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
        }
        None => false,
    }
}

/// A registry: `host[:port]`, the host being dot-separated labels of ASCII letters,
/// digits and inner hyphens, the port digits.
fn is_registry(registry: &str) -> bool {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// A repository path: `/`-separated components of lowercase letters and digits, joined
/// inside a component by one `.`, one `_`, two `_` or any number of `-`.
fn is_path(path: &str) -> bool {
    path.split('/').all(|component| {
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = component.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return false;
        };
        alnum(first)
            && alnum(last)
            && bytes.split(alnum).all(|sep| {
                matches!(sep, b"" | b"." | b"_" | b"__") || sep.iter().all(|&b| b == b'-')
            })
    })
}

/// Splits a valid name into registry and repository as Docker does: the first component
/// is a registry only if it has a `.` or a `:` or is `localhost`; Docker Hub names
/// without a namespace are in `library/`.
fn split_registry(name: &str) -> (String, String) {
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest),
        _ => (DOCKER_HUB, name),
    };
    let registry = if registry == DOCKER_HUB_LEGACY {
        DOCKER_HUB
    } else {
        registry
    };
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository.to_string()
    };
    (registry.to_string(), repository)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_kubelet_and_crictl() {
        let d = format!("sha256:{}", "f".repeat(64));
        let cases: Vec<(String, &str)> = vec![
            ("busybox".into(), "docker.io/library/busybox:latest"),
            ("busybox:1.36".into(), "docker.io/library/busybox:1.36"),
            ("library/busybox".into(), "docker.io/library/busybox:latest"),
            (
                "docker.io/busybox".into(),
                "docker.io/library/busybox:latest",
            ),
            ("user/app:v1".into(), "docker.io/user/app:v1"),
            (
                "registry.k8s.io/pause:3.10".into(),
                "registry.k8s.io/pause:3.10",
            ),
            (
                "127.0.0.1:5000/test/img".into(),
                "127.0.0.1:5000/test/img:latest",
            ),
            ("localhost/img:t".into(), "localhost/img:t"),
            (
                format!("busybox@{d}"),
                "docker.io/library/busybox@sha256:ffff",
            ),
            (format!("q.io/a/b:t@{d}"), "q.io/a/b:t@sha256:ffff"),
        ];
        for (input, want) in cases {
            let got = ImageRef::parse(&input).expect(&input).to_string();
            assert!(got.starts_with(want), "{input}: got {got}, want {want}");
        }
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER/case",
            "a:b:c:d",
            "x@sha256:123",
            "x@md5:abcd",
            "bad space",
            "busybox:",
            ":tag",
            "a//b",
            "a/b/",
            "-a/b",
            "a.-b",
            "a___b",
            "host:/a",
            "host:5x/a",
            "-host.io/a",
            "host-.io/a",
            "a:.tag",
            "a:-tag",
            "a:tag/x",
            "a:\u{fc}",
            "a@sha256:FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_tag = format!("a:{}", "t".repeat(MAX_TAG_LEN + 1));
        assert!(ImageRef::parse(&long_tag).is_err());
        assert!(ImageRef::parse(&long_tag[..long_tag.len() - 1]).is_ok());
        let long_name = "a".repeat(MAX_REPOSITORY_LEN - "library/".len() + 1);
        assert!(ImageRef::parse(&long_name).is_err());
        assert!(ImageRef::parse(&long_name[1..]).is_ok());
    }

    /// What parsing was before: oci-spec's regex grammar, then our repository and digest
    /// checks. Only tags differ: its `\w` also admits non-ASCII letters.
    fn oci_spec_parse(input: &str) -> Option<ImageRef> {
        let r: Reference = input.parse().ok()?;
        let repo_ok = r.repository().split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
        if !repo_ok || r.digest().is_some_and(|d| parse_digest(d).is_err()) {
            return None;
        }
        Some(ImageRef {
            registry: r.registry().to_string(),
            repository: r.repository().to_string(),
            tag: r.tag().map(str::to_string),
            digest: r.digest().map(str::to_string),
        })
    }

    #[test]
    fn same_grammar_as_oci_spec() {
        let d = format!("sha256:{}", "0123456789abcdef".repeat(4));
        let mut inputs: Vec<String> = [
            "busybox",
            "test.com:tag",
            "test.com:5000",
            "test.com/repo:tag",
            "test:5000/repo",
            "test:5000/repo:tag",
            "lowercase:Uppercase",
            "Uppercase:tag",
            "Uppercase/lowercase:tag",
            "test:5000/Uppercase/lowercase:tag",
            "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
            "b.gcr.io/test.example.com/my-app:test.example.com",
            "xn--n3h.com/myimage:xn--n3h.com",
            "foo_bar.com:8080",
            "foo/foo_bar.com:8080",
            "a_b.com/x",
            "index.docker.io/busybox",
            "index.docker.io/user/app",
            "localhost",
            "localhost:5000",
            "localhost/a",
            "a__b/c--d/e.f_g",
            "aa/asdf$$^/aa",
            "1.2.3.4:5/x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        inputs.extend([format!("repo@{d}"), format!("h:1/r:t@{d}"), format!("@{d}")]);
        // And every short string over the characters that matter.
        let alphabet = b"aZ9.-_:/@";
        for len in 1..=5u32 {
            for mut n in 0..alphabet.len().pow(len) {
                let mut s = String::new();
                for _ in 0..len {
                    s.push(alphabet[n % alphabet.len()] as char);
                    n /= alphabet.len();
                }
                inputs.push(s);
            }
        }
        let mut accepted = 0;
        for input in &inputs {
            let parsed = ImageRef::parse(input).ok();
            assert_eq!(parsed, oci_spec_parse(input), "{input:?}");
            accepted += usize::from(parsed.is_some());
        }
        // Both grammars accept a good share of them, so acceptance is compared too.
        assert!(accepted > 1000, "only {accepted} accepted");
    }
}
