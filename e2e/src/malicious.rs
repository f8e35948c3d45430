//! Hostile layer fixtures: tars that try to write outside the rootfs, and a gzip bomb.
//!
//! Wrap the bytes with [`Layer::raw_tar`](crate::image::Layer::raw_tar) or
//! [`Layer::precompressed`](crate::image::Layer::precompressed). `tar::Builder` refuses
//! `..` and absolute names, so the names here go into the header's name field raw.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result, ensure};
use sha2::{Digest, Sha256};

use crate::image::{CompressedLayer, Compression, LAYER_MTIME};

/// Contents of every file the fixtures try to plant outside the rootfs.
pub const PAYLOAD: &[u8] = b"nodelet-e2e: written outside the rootfs\n";
/// Size of the file in the decompression bomb the CRI tests pull: 256 MiB of zeros,
/// four times the layer limit those tests configure. What is tested is that unpacking
/// stops at the limit, which does not need a bigger bomb; a small one keeps the tests
/// quick on small machines.
pub const BOMB_SIZE: u64 = 256 << 20;
/// Name of the zero-filled file inside the bomb's tar.
pub const BOMB_FILE: &str = "zeros";

/// A tar with one regular file named `path` verbatim, e.g. `../escape` or
/// `../../../../tmp/nodelet-escape-<unique>`.
pub fn path_traversal(path: &str) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    append_raw(&mut tar, path, tar::EntryType::Regular, None, PAYLOAD)?;
    Ok(tar.into_inner()?)
}

/// A tar with one regular file at the absolute path `path`, e.g. `/tmp/x`.
pub fn absolute_path(path: &str) -> Result<Vec<u8>> {
    ensure!(
        path.starts_with('/'),
        "absolute_path wants an absolute path, got {path}"
    );
    path_traversal(path)
}

/// A tar with a symlink `link` pointing at `target` (e.g. `escape` -> `/tmp` or
/// `../../../../tmp`), then a regular file `link/file` written through it.
pub fn symlink_escape(link: &str, target: &str, file: &str) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    append_raw(&mut tar, link, tar::EntryType::Symlink, Some(target), b"")?;
    let through = format!("{}/{file}", link.trim_end_matches('/'));
    append_raw(&mut tar, &through, tar::EntryType::Regular, None, PAYLOAD)?;
    Ok(tar.into_inner()?)
}

/// A tar with a hard link `link` to `target`, e.g. `passwd-link` -> `../../etc/passwd`.
/// Nothing is written through the link: a vulnerable unpacker must not be able to
/// damage the host file during the test.
pub fn hardlink_escape(link: &str, target: &str) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    append_raw(&mut tar, link, tar::EntryType::Link, Some(target), b"")?;
    Ok(tar.into_inner()?)
}

/// A gzip layer whose tar holds one file, [`BOMB_FILE`], of `size` zero bytes. Zeros are
/// streamed through the encoder and hashed on the way, so only the compressed blob (about
/// `size / 1000`) is ever held in memory.
///
/// Squeezing hundreds of MiB takes a while, so each size is built once per test process
/// and cloned.
pub fn decompression_bomb(size: u64) -> Result<CompressedLayer> {
    static BUILT: Mutex<BTreeMap<u64, CompressedLayer>> = Mutex::new(BTreeMap::new());
    // Held while building, so concurrent tests wait for one build instead of racing.
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(bomb) = built.get(&size) {
        return Ok(bomb.clone());
    }
    let bomb = build_bomb(size)?;
    built.insert(size, bomb.clone());
    Ok(bomb)
}

fn build_bomb(size: u64) -> Result<CompressedLayer> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(HashingWriter {
        inner: gz,
        hasher: Sha256::new(),
    });
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(LAYER_MTIME);
    h.set_size(size);
    tar.append_data(&mut h, BOMB_FILE, io::repeat(0).take(size))
        .context("stream zeros into bomb layer")?;
    let HashingWriter { inner, hasher } = tar.into_inner()?;
    Ok(CompressedLayer {
        bytes: inner.finish().context("finish bomb gzip stream")?,
        compression: Compression::Gzip,
        diff_id: format!("sha256:{}", hex::encode(hasher.finalize())),
    })
}

/// Hashes every byte on its way to `inner`: the diff id of a tar being compressed.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Appends an entry whose name (and link name) go into the header unchecked.
fn append_raw(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    let field = &mut h.as_old_mut().name;
    ensure!(
        name.len() < field.len(),
        "raw tar name {name:?} longer than {} bytes",
        field.len() - 1
    );
    field[..name.len()].copy_from_slice(name.as_bytes());
    if let Some(link) = link {
        let field = &mut h.as_old_mut().linkname;
        ensure!(
            link.len() < field.len(),
            "raw tar link name {link:?} longer than {} bytes",
            field.len() - 1
        );
        field[..link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_mode(if kind == tar::EntryType::Symlink {
        0o777
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(LAYER_MTIME);
    h.set_size(data.len() as u64);
    h.set_cksum();
    tar.append(&h, data)
        .with_context(|| format!("append raw entry {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<(String, Option<String>)> {
        tar::Archive::new(tar)
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let link = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned());
                (name, link)
            })
            .collect()
    }

    #[test]
    fn hostile_names_are_stored_verbatim() {
        let cases = [
            (
                path_traversal("../escape").expect("traversal"),
                vec![("../escape", None)],
            ),
            (
                absolute_path("/tmp/x").expect("absolute"),
                vec![("/tmp/x", None)],
            ),
            (
                symlink_escape("escape", "/tmp", "x").expect("symlink"),
                vec![("escape", Some("/tmp")), ("escape/x", None)],
            ),
            (
                hardlink_escape("passwd-link", "../../etc/passwd").expect("hardlink"),
                vec![("passwd-link", Some("../../etc/passwd"))],
            ),
        ];
        for (tar, want) in cases {
            let got = names(&tar);
            let want = want
                .into_iter()
                .map(|(n, l)| (n.to_string(), l.map(str::to_string)))
                .collect::<Vec<_>>();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn small_bomb_inflates_to_its_size_and_diff_id() {
        let size = 8 << 20;
        let bomb = decompression_bomb(size).expect("bomb");
        assert!(
            bomb.bytes.len() < (size / 100) as usize,
            "{} bytes",
            bomb.bytes.len()
        );
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(bomb.bytes.as_slice())
            .read_to_end(&mut tar)
            .expect("gunzip");
        assert_eq!(crate::image::sha256_digest(&tar), bomb.diff_id);
        let mut archive = tar::Archive::new(tar.as_slice());
        let entry = archive
            .entries()
            .expect("entries")
            .next()
            .expect("one entry")
            .expect("entry");
        assert_eq!(entry.header().size().expect("size"), size);
    }
}
