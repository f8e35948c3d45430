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

impl ImageRef {
    pub fn parse(input: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidReference {
            reference: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(invalid("empty reference".into()));
        }
        let parsed: Reference = input.parse().map_err(|e| invalid(format!("{e}")))?;
        let repo_ok = parsed.repository().split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
        if !repo_ok {
            return Err(invalid(format!(
                "repository {:?} must be lowercase letters, digits and separators",
                parsed.repository()
            )));
        }
        if let Some(d) = parsed.digest() {
            parse_digest(d).map_err(|e| invalid(e.to_string()))?;
        }
        Ok(Self {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            // The parser adds `latest` only when there is neither tag nor digest.
            tag: parsed.tag().map(str::to_string),
            digest: parsed.digest().map(str::to_string),
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
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
