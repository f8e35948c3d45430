//! The agent's API client when it authenticates with a client certificate: one
//! `kube::Client` for the agent's whole life, whose identity follows rotation (upstream's
//! kubelet `certificate/transport.go`). New TLS connections present the newest
//! certificate (a rustls client-certificate resolver reading [`Identity`], and no TLS
//! session resumption, which would carry the old one over); on rotation
//! every connection opened before it is closed (watches included), so nothing keeps
//! talking with a certificate about to expire and every caller reconnects by itself.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt as _;
use rustls::sign::CertifiedKey;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tower::{BoxError, ServiceBuilder};

/// The client certificate the agent presents, swapped on rotation.
#[derive(Clone, Debug)]
pub struct Identity {
    inner: Arc<RwLock<Current>>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    /// Cancelled when `key` is replaced: closes the connections made with it.
    connections: CancellationToken,
}

impl Identity {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Current {
                key,
                connections: CancellationToken::new(),
            })),
        }
    }

    /// Presents `key` from now on and closes every connection opened before.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        let old = {
            let mut cur = self.inner.write().unwrap_or_else(PoisonError::into_inner);
            cur.key = key;
            std::mem::replace(&mut cur.connections, CancellationToken::new())
        };
        old.cancel();
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .key
            .clone()
    }

    /// The token a connection opened now closes on.
    fn connection_token(&self) -> CancellationToken {
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .connections
            .clone()
    }
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// TCP connections that close when the identity they were opened under is replaced.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    identity: Identity,
}

impl tower::Service<Uri> for Connector {
    type Response = Closing<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let token = self.identity.connection_token();
        let connecting = self.http.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(Closing::new(io, token))
        })
    }
}

/// An I/O stream that fails every read and write once `token` is cancelled, waking the
/// connection's task so an idle pooled connection is dropped at once too.
pub struct Closing<T> {
    io: T,
    token: CancellationToken,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> Closing<T> {
    pub fn new(io: T, token: CancellationToken) -> Self {
        let closed = Box::pin(token.clone().cancelled_owned());
        Self { io, token, closed }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.token.is_cancelled() || self.closed.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "connection closed: the client certificate was rotated",
            ));
        }
        Ok(())
    }
}

impl<T: Read + Unpin> Read for Closing<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Closing<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Closing<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

/// A `kube::Client` for `config` (its server, CA, TLS name, token, impersonation and
/// retries, as kube's own builder makes it) presenting `identity`. The client
/// certificate fields of `config` are not used.
pub fn client(mut config: kube::Config, identity: Identity) -> Result<kube::Client, kube::Error> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // As kube does; only fails when another thread installed one meanwhile.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
    config.auth_info.client_certificate = None;
    config.auth_info.client_certificate_data = None;
    config.auth_info.client_key = None;
    config.auth_info.client_key_data = None;
    if config.proxy_url.is_some() {
        tracing::warn!("the kubeconfig's proxy-url is not used with a rotating client certificate");
    }
    let mut tls = config.rustls_client_config()?;
    tls.client_auth_cert_resolver = Arc::new(identity.clone());
    // A resumed session carries the certificate of the handshake it resumes, so a new
    // connection after rotation would still authenticate with the old one. Upstream's
    // client keeps no session cache either.
    tls.resumption = rustls::client::Resumption::disabled();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let connector = Connector { http, identity };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &config.tls_server_name {
        Some(name) => {
            let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
                kube::Error::RustlsTls(kube::client::RustlsTlsError::InvalidServerName(e))
            })?;
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let https = builder.enable_http1().wrap_connector(connector);
    let http_client: hyper_util::client::legacy::Client<_, kube::client::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.default_retry.then(|| {
            tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry())
        }))
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(http_client);
    Ok(kube::Client::new(service, config.default_namespace))
}
