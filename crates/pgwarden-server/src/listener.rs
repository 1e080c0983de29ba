//! The HTTP listener: the API router on hyper with the limits `axum::serve` lacks. Each
//! connection must send its request headers within a timeout, which also closes keep-alive
//! connections left idle; at most a fixed number of connections are served at once (more wait
//! in the kernel's accept queue); on shutdown, requests in flight finish. With TLS, the
//! handshake must also end within that timeout, on the connection's own task, and shutdown
//! closes connections still shaking hands.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long shutdown waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Limits on the HTTP connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to finish its TLS handshake, to send a request's headers, and to
    /// start its next request on a kept-alive connection.
    pub header_read_timeout: Duration,
}

/// Serves `app` on `listener` within `limits` (over TLS with `tls`) until `shutdown` turns
/// true.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.map_err(std::io::Error::other)?,
            () = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let (watcher, http, tls) = (graceful.watcher(), http.clone(), tls.clone());
        let service = TowerToHyperService::new(app.clone());
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let served = match tls {
                None => {
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection).await
                }
                Some(tls) => {
                    let limit = limits.header_read_timeout;
                    // A connection still shaking hands has no request in flight: shutdown
                    // closes it rather than wait for its handshake.
                    let stream = tokio::select! {
                        stream = handshake(&tls, stream, limit) => stream,
                        () = stopped(&mut shutdown) => None,
                    };
                    let Some(stream) = stream else {
                        return;
                    };
                    let connection = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(connection).await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after 30s; stopping anyway");
    }
    Ok(())
}

/// Completes the TLS handshake on `stream` within `limit`; `None` (logged) when it fails or
/// takes longer.
async fn handshake(
    tls: &TlsAcceptor,
    stream: TcpStream,
    limit: Duration,
) -> Option<TlsStream<TcpStream>> {
    let peer = stream.peer_addr().ok();
    match tokio::time::timeout(limit, tls.accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(error)) => {
            tracing::debug!(?peer, %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(?peer, "no TLS handshake within the header read timeout");
            None
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgwarden_testkit::tls::TestCa;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn shutdown_closes_a_connection_still_shaking_hands_at_once() {
        let ca = TestCa::localhost();
        let dir = tempfile::tempdir().unwrap();
        let files = pgwarden_tls::TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        std::fs::write(&files.cert, &ca.cert_pem).unwrap();
        std::fs::write(&files.key, &ca.key_pem).unwrap();
        let acceptor = pgwarden_tls::ReloadingCert::load("http.tls", &files)
            .unwrap()
            .acceptor(&[b"http/1.1"])
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = HttpLimits {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(60),
        };
        let (stop, signal) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            Router::new(),
            limits,
            Some(acceptor),
            signal,
        ));
        // Connected, accepted, and silent: its handshake would wait 60 s.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send(true).unwrap();
        let stopped = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "shutdown did not wait for the handshake: {stopped:?}"
        );
        let read = silent.read(&mut [0u8; 16]).await;
        assert!(matches!(read, Ok(0) | Err(_)), "closed: {read:?}");
    }
}
