//! Image volumes (the Kubernetes `image` volume type): a CRI `Mount` naming an image
//! mounts that image's root filesystem read-only at its `container_path`, or one
//! directory of it (`image_sub_path`). The image must be present already (the kubelet
//! pulls it first). Its layers are the unpacked ones the store shares by chain id: an
//! overlay of them with no upper directory (read-only by construction) at
//! `<container dir>/image-volumes/<n>`; a one-layer image is its layer directory itself.
//! The container is then given an ordinary read-only bind mount of that directory.

use std::os::fd::AsFd as _;
use std::path::{Component, Path, PathBuf};

use nix::mount::MsFlags;
use proto::v1;
use serde::{Deserialize, Serialize};

use super::rootfs;
use super::{Error, Result, Runtime, io_err};

const DIR: &str = "image-volumes";

/// An image a container mounts as a volume, as recorded with the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageVolume {
    /// Where it is mounted in the container (as the CRI mount names it).
    pub container_path: String,
    /// The image's id (`sha256:` config digest): reported as the mount's `image_ref`
    /// and kept from removal while the container exists.
    pub image_id: String,
}

impl Runtime {
    /// Prepares every image mount of `config`: returns the config the OCI spec is built
    /// from (each image mount turned into a read-only bind of the prepared directory)
    /// and the volumes to record. Mounts made before an error are left for
    /// [`unmount_image_volumes`], which the caller runs on failure.
    pub(super) fn prepare_image_volumes(
        &self,
        dir: &Path,
        config: &v1::ContainerConfig,
    ) -> Result<(v1::ContainerConfig, Vec<ImageVolume>)> {
        let mut out = config.clone();
        let mut volumes = Vec::new();
        for (n, m) in out.mounts.iter_mut().enumerate() {
            let Some(spec) = m.image.as_ref().filter(|i| !i.image.is_empty()) else {
                continue;
            };
            let name = spec.image.clone();
            let invalid = |why: String| {
                Error::InvalidArgument(format!("image volume {}: {why}", m.container_path))
            };
            if !m.readonly {
                return Err(invalid(
                    "image volumes are read-only; the mount must set readonly".into(),
                ));
            }
            if !m.host_path.is_empty() {
                return Err(invalid(
                    "a mount names either an image or a host_path".into(),
                ));
            }
            let image = self.images.resolve(&name).ok_or_else(|| {
                invalid(format!(
                    "image {name:?} is not present on the node; pull it first"
                ))
            })?;
            let layers = self.layer_paths(&image)?;
            let root = match layers.as_slice() {
                [only] => only.clone(),
                _ => {
                    let target = dir.join(DIR).join(n.to_string());
                    mount_layers(&layers, &target, &dir.join(DIR).join("empty"))?;
                    target
                }
            };
            let source = match m.image_sub_path.as_str() {
                "" => root,
                sub => resolve_sub_path(&root, sub).map_err(invalid)?,
            };
            volumes.push(ImageVolume {
                container_path: m.container_path.clone(),
                image_id: image.id.clone(),
            });
            m.host_path = source.to_string_lossy().into_owned();
            m.image = None;
            m.image_sub_path.clear();
        }
        Ok((out, volumes))
    }
}

/// Unmounts whatever image volumes are mounted under a container directory. Missing or
/// not mounted is fine.
pub(super) fn unmount_image_volumes(dir: &Path) -> Result<()> {
    let base = dir.join(DIR);
    let entries = match std::fs::read_dir(&base) {
        Ok(e) => e,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(io_err("reading image volumes", &base)(err)),
    };
    for entry in entries.flatten() {
        rootfs::unmount(&entry.path())?;
    }
    Ok(())
}

/// The mounts a container status reports: as requested, each image mount with its
/// image's resolved reference (`image_ref`, the id PullImage answered).
pub(super) fn status_mounts(mounts: &[v1::Mount], volumes: &[ImageVolume]) -> Vec<v1::Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(spec) = m.image.as_mut()
                && let Some(v) = volumes
                    .iter()
                    .find(|v| v.container_path == m.container_path)
            {
                spec.image_ref = v.image_id.clone();
            }
            m
        })
        .collect()
}

/// A read-only overlay of `layers` (base first) on `target`; `empty` pads a
/// layerless image (overlayfs needs two lower directories without an upper one).
fn mount_layers(layers: &[PathBuf], target: &Path, empty: &Path) -> Result<()> {
    if rootfs::is_mountpoint(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(io_err("creating image volume", target))?;
    let mut lower: Vec<PathBuf> = layers.iter().rev().cloned().collect();
    while lower.len() < 2 {
        let pad = empty.join(lower.len().to_string());
        std::fs::create_dir_all(&pad).map_err(io_err("creating image volume", &pad))?;
        lower.push(pad);
    }
    let options = format!(
        "lowerdir={}",
        lower
            .iter()
            .map(|p| rootfs::escape(&p.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(":")
    );
    tracing::debug!(target = %target.display(), layers = layers.len(), "mount image volume");
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(|source| {
        Error::Rootfs(rootfs::Error::Mount {
            target: target.to_path_buf(),
            source,
        })
    })
}

/// `sub` (relative, no `..`) inside `root`, every symlink on the way resolved as if
/// `root` were `/` (an image's `/etc` link to `/usr/etc` stays in the image, and no link
/// leads out of it); it must exist. Returns the resolved path on the host.
fn resolve_sub_path(root: &Path, sub: &str) -> std::result::Result<PathBuf, String> {
    let rel = Path::new(sub);
    if rel.is_absolute() || rel.components().any(|c| c == Component::ParentDir) {
        return Err(format!(
            "image_sub_path {sub:?} must be relative and must not contain \"..\""
        ));
    }
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening the image root {}: {e}", root.display()))?;
    let fd = rustix::fs::openat2(
        dir.as_fd(),
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT => format!("image_sub_path {sub:?} does not exist in the image"),
        e => format!("image_sub_path {sub:?}: {e}"),
    })?;
    let real = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .map_err(|e| format!("image_sub_path {sub:?}: resolving: {e}"))?;
    if !real.starts_with(root) {
        return Err(format!("image_sub_path {sub:?} leads out of the image"));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_paths_stay_in_the_image() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("usr/etc")).expect("dirs");
        std::fs::write(root.join("usr/etc/passwd"), "x").expect("file");
        std::os::unix::fs::symlink("/usr/etc", root.join("etc")).expect("link");
        std::os::unix::fs::symlink("/", root.join("up")).expect("link");
        let root = std::fs::canonicalize(&root).expect("canonical");

        assert_eq!(
            resolve_sub_path(&root, "etc").expect("etc"),
            root.join("usr/etc"),
            "an absolute link resolves inside the image"
        );
        assert_eq!(resolve_sub_path(&root, "up").expect("up"), root);
        for (sub, want) in [
            ("missing", "does not exist in the image"),
            ("/etc", "must be relative"),
            ("usr/../..", "must not contain"),
        ] {
            let err = resolve_sub_path(&root, sub).expect_err(sub);
            assert!(err.contains(want), "{sub}: {err}");
        }
    }

    #[test]
    fn status_mounts_carry_the_image_ref() {
        let mounts = vec![
            v1::Mount {
                container_path: "/data".into(),
                host_path: "/srv".into(),
                ..Default::default()
            },
            v1::Mount {
                container_path: "/img".into(),
                readonly: true,
                image: Some(v1::ImageSpec {
                    image: "busybox".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        let vols = [ImageVolume {
            container_path: "/img".into(),
            image_id: "sha256:abc".into(),
        }];
        let got = status_mounts(&mounts, &vols);
        assert_eq!(got[0], mounts[0]);
        let img = got[1].image.clone().expect("image");
        assert_eq!(
            (img.image.as_str(), img.image_ref.as_str()),
            ("busybox", "sha256:abc")
        );
    }
}
