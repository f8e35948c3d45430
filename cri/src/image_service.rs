//! CRI `ImageService` over [`Images`]: translation between wire messages and the store.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use proto::v1;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::image::pull::Credentials;
use crate::image::{Image, Images};

pub struct ImageService {
    images: Arc<Images>,
    runtime: Arc<crate::runtime::Runtime>,
}

impl ImageService {
    pub fn new(images: Arc<Images>, runtime: Arc<crate::runtime::Runtime>) -> Self {
        Self { images, runtime }
    }
}

/// Images per message of a streamed listing, well under gRPC's message size limit.
const STREAM_CHUNK: usize = 500;

impl ImageService {
    /// Images matching a CRI filter: all, or the one the filter's image names.
    fn matching(&self, filter: Option<v1::ImageFilter>) -> Vec<Image> {
        match filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty())
        {
            Some(r) => self.images.resolve(&r).into_iter().collect(),
            None => self.images.list(),
        }
    }
}

fn to_wire(img: &Image) -> v1::Image {
    v1::Image {
        id: img.id.clone(),
        repo_tags: img.repo_tags.clone(),
        repo_digests: img.repo_digests.clone(),
        size: img.size,
        uid: img.uid().map(|value| v1::Int64Value { value }),
        username: img.username(),
        spec: Some(v1::ImageSpec {
            image: img.id.clone(),
            ..Default::default()
        }),
        pinned: img.pinned,
    }
}

fn image_arg(spec: Option<&v1::ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(
            Error::InvalidArgument("image spec with a non-empty image is required".into()).into(),
        ),
    }
}

/// CRI credentials → ours. `auth` is base64 `user:password`, as in Docker config files.
pub(crate) fn credentials(auth: Option<&v1::AuthConfig>) -> Result<Credentials, Error> {
    let Some(a) = auth else {
        return Ok(Credentials::Anonymous);
    };
    if !a.registry_token.is_empty() {
        return Ok(Credentials::Bearer(a.registry_token.clone()));
    }
    if !a.identity_token.is_empty() {
        return Err(Error::InvalidArgument(
            "identity_token (OAuth2 refresh token) auth is not supported; pass username/password or registry_token"
                .into(),
        ));
    }
    if !a.username.is_empty() || !a.password.is_empty() {
        return Ok(Credentials::Basic {
            username: a.username.clone(),
            password: a.password.clone(),
        });
    }
    if !a.auth.is_empty() {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| Error::InvalidArgument(format!("auth is not valid base64: {e}")))?;
        let text = String::from_utf8(decoded)
            .map_err(|_| Error::InvalidArgument("auth is not UTF-8".into()))?;
        let (username, password) = text.split_once(':').ok_or_else(|| {
            Error::InvalidArgument("auth must encode \"username:password\"".into())
        })?;
        return Ok(Credentials::Basic {
            username: username.into(),
            password: password.into(),
        });
    }
    Ok(Credentials::Anonymous)
}

#[tonic::async_trait]
impl v1::image_service_server::ImageService for ImageService {
    async fn list_images(
        &self,
        req: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        let images = self.matching(req.into_inner().filter);
        Ok(Response::new(v1::ListImagesResponse {
            images: images.iter().map(to_wire).collect(),
        }))
    }

    type StreamImagesStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<v1::StreamImagesResponse, Status>> + Send>,
    >;

    async fn stream_images(
        &self,
        req: Request<v1::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        let images = self.matching(req.into_inner().filter);
        // Lists of at least one image each; no image means no message at all.
        let chunks: Vec<Result<v1::StreamImagesResponse, Status>> = images
            .chunks(STREAM_CHUNK)
            .map(|c| {
                Ok(v1::StreamImagesResponse {
                    images: c.iter().map(to_wire).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(chunks))))
    }

    async fn image_status(
        &self,
        req: Request<v1::ImageStatusRequest>,
    ) -> Result<Response<v1::ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let reference = image_arg(req.image.as_ref())?;
        // CRI: a missing image is a response without image, not an error.
        let Some(img) = self.images.resolve(reference) else {
            return Ok(Response::new(v1::ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if req.verbose {
            let config: serde_json::Value = self
                .images
                .content()
                .read(&img.id)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(serde_json::Value::Null);
            let detail = serde_json::json!({
                "id": img.id,
                "manifestDigest": img.manifest_digest,
                "imageSpec": config,
                "layers": img.layers.iter().map(|l| serde_json::json!({
                    "digest": l.digest,
                    "mediaType": l.media_type,
                    "size": l.size,
                    "diffID": l.diff_id,
                    "chainID": l.chain_id,
                })).collect::<Vec<_>>(),
            });
            info.insert("info".to_string(), detail.to_string());
        }
        Ok(Response::new(v1::ImageStatusResponse {
            image: Some(to_wire(&img)),
            info,
        }))
    }

    async fn pull_image(
        &self,
        req: Request<v1::PullImageRequest>,
    ) -> Result<Response<v1::PullImageResponse>, Status> {
        let req = req.into_inner();
        let reference = image_arg(req.image.as_ref())?;
        let creds = credentials(req.auth.as_ref())?;
        let img = self
            .images
            .pull(reference, &creds)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(v1::PullImageResponse { image_ref: img.id }))
    }

    async fn remove_image(
        &self,
        req: Request<v1::RemoveImageRequest>,
    ) -> Result<Response<v1::RemoveImageResponse>, Status> {
        let req = req.into_inner();
        let reference = image_arg(req.image.as_ref())?;
        // A container's root filesystem is an overlay of the image's layers: refuse
        // while one exists, as CRI-O does, rather than pull layers from under it.
        if let Some(img) = self.images.resolve(reference)
            && let Some(container) = self.runtime.image_in_use(&img.id)
        {
            return Err(Error::from(crate::image::Error::InUse {
                id: img.id,
                by: format!("container {container}"),
            })
            .into());
        }
        self.images.remove(reference).await.map_err(Error::from)?;
        Ok(Response::new(v1::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<v1::ImageFsInfoRequest>,
    ) -> Result<Response<v1::ImageFsInfoResponse>, Status> {
        let usage = self.images.usage().map_err(Error::from)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default();
        let fs = v1::FilesystemUsage {
            timestamp: now,
            fs_id: Some(v1::FilesystemIdentifier {
                mountpoint: self.images.root().display().to_string(),
            }),
            used_bytes: Some(v1::UInt64Value { value: usage.bytes }),
            inodes_used: Some(v1::UInt64Value {
                value: usage.inodes,
            }),
        };
        Ok(Response::new(v1::ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: vec![self.runtime.writable_layers_usage()],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_config_translation() {
        let basic = |u: &str, p: &str| Credentials::Basic {
            username: u.into(),
            password: p.into(),
        };
        let cases: Vec<(v1::AuthConfig, Result<Credentials, ()>)> = vec![
            (Default::default(), Ok(Credentials::Anonymous)),
            (
                v1::AuthConfig {
                    username: "u".into(),
                    password: "p".into(),
                    ..Default::default()
                },
                Ok(basic("u", "p")),
            ),
            (
                v1::AuthConfig {
                    auth: "dXNlcjpwYTpzcw==".into(), // user:pa:ss
                    ..Default::default()
                },
                Ok(basic("user", "pa:ss")),
            ),
            (
                v1::AuthConfig {
                    registry_token: "tok".into(),
                    ..Default::default()
                },
                Ok(Credentials::Bearer("tok".into())),
            ),
            (
                v1::AuthConfig {
                    auth: "!!!".into(),
                    ..Default::default()
                },
                Err(()),
            ),
            (
                v1::AuthConfig {
                    identity_token: "refresh".into(),
                    ..Default::default()
                },
                Err(()),
            ),
        ];
        for (input, want) in cases {
            let got = credentials(Some(&input)).map_err(|_| ());
            assert_eq!(got, want, "{input:?}");
        }
    }
}
