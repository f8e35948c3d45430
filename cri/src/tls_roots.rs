//! Root certificates on a host that has none. The TLS stack under the registry client
//! (reqwest with rustls' platform verifier) reads the host's CA store each time a client
//! is built, and `oci-client` builds a default client inside every constructor, which
//! panics when that store is empty (a minimal image, an edge board without the
//! ca-certificates package). So before anything else, while the process is still
//! single-threaded, [`ensure`] checks the store and, when it is empty, writes the
//! Mozilla root set bundled in the binary (`webpki-root-certs`) to a PEM file and
//! points `SSL_CERT_FILE` at it, with a warning that names how to use the host's own.
//! A node that only imports archives starts either way.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;

/// Why the bundled roots could not be put in place.
#[derive(Debug, thiserror::Error)]
#[error(
    "this host has no CA certificates and the bundled ones cannot be written to {path}: {source}"
)]
pub struct Error {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// File name of the bundled roots under the state directory.
const FILE: &str = "bundled-ca-roots.pem";

/// Makes sure the TLS stack finds root certificates; see the module docs. Returns the
/// bundle written, if one was. Must run before any other thread starts: it may set an
/// environment variable.
pub fn ensure(state_dir: &Path) -> Result<Option<PathBuf>, Error> {
    let found = rustls_native_certs::load_native_certs();
    if !found.certs.is_empty() {
        return Ok(None);
    }
    let path = state_dir.join(FILE);
    write_bundle(&path).map_err(|source| Error {
        path: path.clone(),
        source,
    })?;
    tracing::warn!(
        bundle = %path.display(),
        errors = ?found.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "no usable CA certificates on this host: HTTPS registries are checked against the bundled Mozilla root set; install the host's CA bundle (ca-certificates) or name roots in [registry] ca_files"
    );
    // SAFETY: called from `main` before the async runtime or any other thread exists,
    // so nothing reads the environment concurrently.
    unsafe { std::env::set_var("SSL_CERT_FILE", &path) };
    Ok(Some(path))
}

/// The bundled roots as PEM, written atomically.
fn write_bundle(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(pem_bundle().as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn pem_bundle() -> String {
    let mut out = String::new();
    for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_is_pem_that_parses_back() {
        let pem = pem_bundle();
        let n = pem.matches("-----BEGIN CERTIFICATE-----").count();
        assert_eq!(n, webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(n > 50, "{n} roots");
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub").join(FILE);
        write_bundle(&path).expect("write");
        let first = pem
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap_or_default()
            .replace("-----BEGIN CERTIFICATE-----", "")
            .replace('\n', "");
        let der = base64::engine::general_purpose::STANDARD
            .decode(first)
            .expect("base64");
        assert_eq!(der, webpki_root_certs::TLS_SERVER_ROOT_CERTS[0].as_ref());
        assert_eq!(std::fs::read_to_string(&path).expect("read"), pem);
    }
}
