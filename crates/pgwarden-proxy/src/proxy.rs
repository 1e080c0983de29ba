//! The running proxy: listeners, admission under `max_client_conn`, each client from its way
//! in to its last byte, the periodic sweep, and draining on shutdown.

use crate::cancel::Cancels;
use crate::client::{self, Hello, Stream};
use crate::config::{ClientAuth, PoolMode, ProxyConfig};
use crate::identity::Identities;
use crate::login::{self, Admitted, Entry};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::relay::Session;
use crate::reply::{self, PgError};
use crate::statements::Tracker;
use crate::upstream::Connector;
use bytes::BytesMut;
use pgwarden_client::{Auth, Client};
use pgwarden_tls::ReloadingCert;
use secrecy::SecretString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// How often idle connections and unused pools are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Everything a client's handling needs.
pub(crate) struct Shared {
    pub(crate) config: ProxyConfig,
    /// pgwarden, as nobody in particular: logins act through it (sharing its connections).
    pub(crate) broker: Client,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) identities: Option<Identities>,
    pub(crate) connector: Arc<Connector>,
    pub(crate) registry: Registry,
    pub(crate) cancels: Cancels,
    pub(crate) tls: Option<TlsAcceptor>,
    clients: AtomicUsize,
    /// Clients beyond `max_client_conn` being refused (each after its SSL negotiation).
    turning_away: AtomicUsize,
    draining: watch::Receiver<bool>,
}

/// A started proxy.
pub struct Running {
    /// The TCP address it listens on, if any.
    pub addr: Option<SocketAddr>,
    /// The address of `/metrics`, `/healthz` and `/readyz`.
    pub metrics_addr: SocketAddr,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting clients, lets open transactions finish (within `drain_timeout`),
    /// closes every session and revokes every lease.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What the proxy reads from files before it listens.
struct Loaded {
    /// The certificate shown to clients, reloaded when its files change.
    certificate: Option<Arc<ReloadingCert>>,
    tls: Option<TlsAcceptor>,
    connector: Arc<Connector>,
    broker: Client,
}

impl Loaded {
    /// Reads the client certificate and key, the upstream TLS files and the broker's CA.
    fn read(config: &ProxyConfig) -> Result<Loaded, String> {
        let certificate = config
            .tls
            .as_ref()
            .map(|files| ReloadingCert::load("tls", files))
            .transpose()?;
        let tls = certificate
            .as_ref()
            .map(|certificate| certificate.acceptor(&[]))
            .transpose()?;
        let connector = Arc::new(Connector::new(&config.upstream)?);
        let broker = Client::with_ca_file(
            &config.address,
            Auth::Token(SecretString::from("")),
            config.ca_file.as_deref(),
        )
        .map_err(|e| format!("ca_file: {e}"))?;
        Ok(Loaded {
            certificate,
            tls,
            connector,
            broker,
        })
    }
}

/// Checks that the files `config` names (certificates, keys, CAs) can be read and used,
/// without listening or connecting anywhere.
pub fn check_files(config: &ProxyConfig) -> Result<(), String> {
    Loaded::read(config).map(drop)
}

/// Starts listening as `config` says.
pub async fn start(config: ProxyConfig) -> Result<Running, String> {
    let Loaded {
        certificate,
        tls,
        connector,
        broker,
    } = Loaded::read(&config)?;
    let identities = match &config.auth {
        ClientAuth::Identity { logins } => Some(Identities::new(
            broker.acting_as(Auth::Token(SecretString::from(""))),
            logins.clone(),
            config.identity_cache,
        )),
        ClientAuth::Sidecar { .. } => None,
    };
    let tcp = match config.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?,
        ),
        None => None,
    };
    // The socket is named after the TCP port bound (as PostgreSQL's are), 5432 without one.
    let port = match &tcp {
        Some(listener) => listener.local_addr().map_err(|e| e.to_string())?.port(),
        None => 5432,
    };
    let unix = match &config.unix_socket_dir {
        Some(dir) => Some(listen_unix(
            &dir.join(format!(".s.PGSQL.{port}")),
            config.unix_socket_mode,
        )?),
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = watch::channel(false);
    if let Some(certificate) = certificate {
        tokio::spawn(certificate.watch(stopped.clone()));
    }
    let (drain, draining) = watch::channel(false);
    let health =
        crate::health::serve(config.metrics_listen, metrics.clone(), draining.clone()).await?;
    let shared = Arc::new(Shared {
        config,
        broker,
        metrics: metrics.clone(),
        identities,
        connector,
        registry: Registry::default(),
        cancels: Cancels::default(),
        tls,
        clients: AtomicUsize::new(0),
        turning_away: AtomicUsize::new(0),
        draining,
    });
    let addr = tcp.as_ref().and_then(|l| l.local_addr().ok());
    let task = tokio::spawn(serve(shared, tcp, unix, stopped, drain));
    Ok(Running {
        addr,
        metrics_addr: health,
        metrics,
        stop,
        task,
    })
}

/// Listens on the Unix socket at `path` with permissions `mode`. A socket file left by a
/// process that died is replaced; one a live process listens on is not.
fn listen_unix(path: &std::path::Path, mode: u32) -> Result<UnixListener, String> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "cannot listen on {}: another process is listening there",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set the permissions of {}: {e}", path.display()))?;
    Ok(listener)
}

/// Accepts clients until told to stop, then drains.
async fn serve(
    shared: Arc<Shared>,
    tcp: Option<TcpListener>,
    unix: Option<UnixListener>,
    mut stop: watch::Receiver<bool>,
    drain: watch::Sender<bool>,
) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            accepted = accept_tcp(tcp.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let local = peer.ip().to_canonical().is_loopback();
                    admit(&shared, Box::new(stream), local);
                }
                Err(error) => accept_failed(error).await,
            },
            accepted = accept_unix(unix.as_ref()) => match accepted {
                Ok((stream, _)) => admit(&shared, Box::new(stream), true),
                Err(error) => accept_failed(error).await,
            },
            _ = sweep.tick() => {
                shared.registry.sweep(shared.config.server_idle_timeout);
            }
            _ = stop.changed() => break,
        }
    }
    drop((tcp, unix));
    let _ = drain.send(true);
    let deadline = tokio::time::Instant::now() + shared.config.drain_timeout;
    while shared.clients.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = shared.clients.load(Ordering::SeqCst);
    if left > 0 {
        tracing::warn!(
            clients = left,
            "drain timeout: closing the sessions still in a transaction"
        );
    }
    shared.registry.close_all().await;
}

/// After a failed accept (out of file descriptors, say): logged, and a pause, so the loop
/// does not spin while the cause lasts.
async fn accept_failed(error: std::io::Error) {
    tracing::warn!(%error, "accepting a client failed; pausing 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn accept_tcp(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_unix(
    listener: Option<&UnixListener>,
) -> std::io::Result<(tokio::net::UnixStream, tokio::net::unix::SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Takes a client in, unless there are too many already.
fn admit(shared: &Arc<Shared>, stream: Stream, local: bool) {
    shared.metrics.clients_total.inc();
    let shared = shared.clone();
    if shared.clients.fetch_add(1, Ordering::SeqCst) >= shared.config.max_client_conn {
        // Not a client: it holds no slot while it is turned away.
        shared.clients.fetch_sub(1, Ordering::SeqCst);
        let turning = shared.turning_away.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            turn_away(&shared, stream, turning < shared.config.max_client_conn).await;
            shared.turning_away.fetch_sub(1, Ordering::SeqCst);
        });
        return;
    }
    tokio::spawn(async move {
        shared.metrics.clients.inc();
        handle(&shared, stream, local).await;
        shared.metrics.clients.dec();
        shared.clients.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Refuses a client beyond `max_client_conn` with `53300`. As PostgreSQL does, the error comes
/// after the SSL negotiation (`negotiate`), where a client that asked for TLS (libpq's default
/// `sslmode=prefer`) can read it; without `negotiate` (as many clients as `max_client_conn` are
/// already being turned away), at once, so a flood costs no handshakes. A cancel request is
/// served all the same.
async fn turn_away(shared: &Shared, mut stream: Stream, negotiate: bool) {
    let error = PgError::new("53300", "sorry, too many clients already");
    if !negotiate {
        shared.metrics.refused("too_many_clients");
        refuse(&mut stream, &error).await;
        return;
    }
    let hello = client::hello(stream, shared.tls.as_ref());
    let stream = match tokio::time::timeout(shared.config.client_login_timeout, hello).await {
        Ok(Ok(Hello::Cancel { pid, secret })) => {
            shared.cancels.cancel(pid, secret).await;
            return;
        }
        Ok(Ok(Hello::Session(startup))) => Some(startup.stream),
        Ok(Err((stream, _))) => stream,
        Err(_) => None,
    };
    shared.metrics.refused("too_many_clients");
    if let Some(mut stream) = stream {
        refuse(&mut stream, &error).await;
    }
}

/// Sends a FATAL error and closes.
async fn refuse(stream: &mut Stream, error: &PgError) {
    let mut out = BytesMut::new();
    reply::fatal(&mut out, error);
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// One client, from its first byte to its last.
async fn handle(shared: &Arc<Shared>, stream: Stream, local: bool) {
    let identify = login::identify(shared, stream, local);
    let entry = match tokio::time::timeout(shared.config.client_login_timeout, identify).await {
        Err(_) => {
            shared.metrics.refused("login_timeout");
            return;
        }
        Ok(Err(entry)) => entry,
        Ok(Ok(identified)) => login::admit(shared, identified).await,
    };
    let admitted = match entry {
        Entry::In(admitted) => admitted,
        Entry::Done => return,
        Entry::Refused(stream, reason, error) => {
            shared.metrics.refused(reason);
            tracing::info!(reason, code = %error.code, message = %error.message, "client refused");
            if let Some(mut stream) = stream {
                refuse(&mut stream, &error).await;
            }
            return;
        }
    };
    let Admitted {
        mut stream,
        pool,
        first,
        parameters,
    } = admitted;
    let registered = shared.cancels.register();
    let mut welcome = BytesMut::new();
    reply::welcome(&mut welcome, &parameters, registered.key);
    if stream.write_all(&welcome).await.is_err() {
        return;
    }
    let session = Session {
        client: stream,
        pool,
        mode: shared.config.pool_mode,
        statements: (shared.config.pool_mode == PoolMode::Transaction
            && shared.config.max_prepared_statements > 0)
            .then(|| Tracker::new(shared.config.max_prepared_statements)),
        wait: shared.config.query_wait_timeout,
        draining: shared.draining.clone(),
        cancel: registered.target.clone(),
        metrics: shared.metrics.clone(),
    };
    session.run(first).await;
}
