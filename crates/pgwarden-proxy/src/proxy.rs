//! The running proxy: listeners, each client's way in (who it is, which pool), cancel
//! requests, the periodic sweep, and draining on shutdown.

use crate::client::{self, Hello, Startup, Stream};
use crate::config::{ClientAuth, ProxyConfig};
use crate::identity::{Identities, Refusal};
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolKey};
use crate::registry::Registry;
use crate::relay::{CancelTarget, Session};
use crate::reply::{self, PgError};
use crate::upstream::Connector;
use bytes::BytesMut;
use parking_lot::Mutex;
use pgwarden_client::{Auth, Client, ClientError, CredentialProvider, ProviderOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// How often idle connections and unused pools are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Everything a client's handling needs.
struct Shared {
    config: ProxyConfig,
    metrics: Arc<Metrics>,
    identities: Option<Identities>,
    connector: Arc<Connector>,
    registry: Registry,
    cancels: Mutex<HashMap<i32, (i32, CancelTarget)>>,
    tls: Option<TlsAcceptor>,
    clients: AtomicUsize,
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

/// Starts listening as `config` says.
pub async fn start(config: ProxyConfig) -> Result<Running, String> {
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let connector = Arc::new(Connector::new(&config.upstream)?);
    let identities = match &config.auth {
        ClientAuth::Identity { logins } => Some(Identities::new(
            &config.address,
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
        Some(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let _ = std::fs::remove_file(&path);
            Some(
                UnixListener::bind(&path)
                    .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = watch::channel(false);
    let (drain, draining) = watch::channel(false);
    let health =
        crate::health::serve(config.metrics_listen, metrics.clone(), draining.clone()).await?;
    let shared = Arc::new(Shared {
        config,
        metrics: metrics.clone(),
        identities,
        connector,
        registry: Registry::default(),
        cancels: Mutex::new(HashMap::new()),
        tls,
        clients: AtomicUsize::new(0),
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
            accepted = accept_tcp(tcp.as_ref()) => {
                if let Ok((stream, peer)) = accepted {
                    let _ = stream.set_nodelay(true);
                    let local = peer.ip().is_loopback();
                    admit(&shared, Box::new(stream), local);
                }
            }
            accepted = accept_unix(unix.as_ref()) => {
                if let Ok((stream, _)) = accepted {
                    admit(&shared, Box::new(stream), true);
                }
            }
            _ = sweep.tick() => {
                shared.registry.sweep(shared.config.server_idle_timeout).await;
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
fn admit(shared: &Arc<Shared>, mut stream: Stream, local: bool) {
    shared.metrics.clients_total.inc();
    let count = shared.clients.fetch_add(1, Ordering::SeqCst) + 1;
    let shared = shared.clone();
    tokio::spawn(async move {
        shared.metrics.clients.inc();
        if count > shared.config.max_client_conn {
            shared.metrics.refused("too_many_clients");
            refuse(
                &mut stream,
                &PgError::new("53300", "sorry, too many clients already"),
            )
            .await;
        } else {
            handle(&shared, stream, local).await;
        }
        shared.metrics.clients.dec();
        shared.clients.fetch_sub(1, Ordering::SeqCst);
    });
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
    let login = tokio::time::timeout(
        shared.config.client_login_timeout,
        log_in(shared, stream, local),
    );
    let (mut client, pool, checkout, key) = match login.await {
        Err(_) => {
            shared.metrics.refused("login_timeout");
            return;
        }
        Ok(Entry::Done) => return,
        Ok(Entry::Refused(stream, reason, error)) => {
            shared.metrics.refused(reason);
            tracing::info!(reason, code = error.code, message = %error.message, "client refused");
            if let Some(mut stream) = stream {
                refuse(&mut stream, &error).await;
            }
            return;
        }
        Ok(Entry::In(client, pool, checkout)) => {
            let key = (rand::random::<i32>() & i32::MAX, rand::random::<i32>());
            (client, pool, checkout, key)
        }
    };
    let mut welcome = BytesMut::new();
    reply::welcome(&mut welcome, &checkout.server.parameters, key);
    if client.write_all(&welcome).await.is_err() {
        pool.release(checkout, true);
        return;
    }
    let cancel = CancelTarget::default();
    shared.cancels.lock().insert(key.0, (key.1, cancel.clone()));
    let session = Session {
        client,
        pool,
        mode: shared.config.pool_mode,
        wait: shared.config.query_wait_timeout,
        draining: shared.draining.clone(),
        cancel,
        metrics: shared.metrics.clone(),
    };
    session.run(checkout).await;
    shared.cancels.lock().remove(&key.0);
}

/// How a client's way in ended.
enum Entry {
    /// It is in: its stream, pool and first server connection.
    In(Stream, Arc<Pool>, crate::pool::Checkout),
    /// It was refused: why (a metric label) and what it is told.
    Refused(Option<Stream>, &'static str, PgError),
    /// Nothing more to do (a cancel request was handled).
    Done,
}

/// Negotiates, authenticates and finds the client's pool.
async fn log_in(shared: &Arc<Shared>, stream: Stream, local: bool) -> Entry {
    let mut startup = match client::hello(stream, shared.tls.as_ref()).await {
        Ok(Hello::Session(startup)) => startup,
        Ok(Hello::Cancel { pid, secret }) => {
            cancel(shared, pid, secret).await;
            return Entry::Done;
        }
        Err((stream, error)) => return Entry::Refused(stream, "bad_startup", error),
    };
    let path = match role_path(startup.user(), &shared.config.mount) {
        Ok(path) => path,
        Err(error) => return Entry::Refused(Some(startup.stream), "bad_startup", error),
    };
    let database = startup.database().unwrap_or("").to_string();
    let (subject, client) = match who(shared, &mut startup, local).await {
        Ok(found) => found,
        Err((reason, error)) => return Entry::Refused(Some(startup.stream), reason, error),
    };
    let key = PoolKey {
        subject,
        path,
        database,
    };
    let pool = shared
        .registry
        .get(&key, || make_pool(shared, key.clone(), client.clone()))
        .await;
    let pool = match pool {
        Ok(pool) => pool,
        Err(error) => return Entry::Refused(Some(startup.stream), "not_allowed", error),
    };
    if let Some(fresh) = client.token() {
        pool.client().set_token(fresh).await;
    }
    match pool.acquire(shared.config.query_wait_timeout).await {
        Ok(checkout) => Entry::In(startup.stream, pool, checkout),
        Err(error) => Entry::Refused(Some(startup.stream), "server_unavailable", error),
    }
}

/// What the client's identity gives: a pgwarden token (identity mode) or the pod's login.
#[derive(Clone)]
enum Acting {
    /// A pgwarden token of the client's identity.
    Token(secrecy::SecretString),
    /// The pod's own service-account login.
    Pod,
}

impl Acting {
    fn token(&self) -> Option<secrecy::SecretString> {
        match self {
            Acting::Token(token) => Some(token.clone()),
            Acting::Pod => None,
        }
    }
}

/// Who the client is, and how to act as it.
async fn who(
    shared: &Shared,
    startup: &mut Startup,
    local: bool,
) -> Result<(String, Acting), (&'static str, PgError)> {
    let user = startup.user().to_string();
    let Some(identities) = &shared.identities else {
        if !local {
            return Err((
                "not_local",
                PgError::new(
                    "28000",
                    "the proxy runs as a sidecar: it serves only clients on loopback or its Unix socket",
                ),
            ));
        }
        return Ok(("sidecar".to_string(), Acting::Pod));
    };
    if !startup.tls && !local {
        return Err((
            "cleartext_without_tls",
            PgError::new(
                "28000",
                "the proxy takes a token as the password only over TLS (sslmode=require) or from loopback or its Unix socket",
            ),
        ));
    }
    let password = startup
        .read_password()
        .await
        .map_err(|e| ("no_password", e))?;
    match identities.verify(&password).await {
        Ok(verified) => Ok((verified.subject, Acting::Token(verified.token))),
        Err(refusal) => {
            let reason = refusal.reason();
            let error = match refusal {
                Refusal::Invalid(why) => PgError::new(
                    "28P01",
                    format!(
                        "password authentication failed for user \"{user}\": pgwarden refused the token: {why}"
                    ),
                ),
                Refusal::Unreachable(why) => {
                    PgError::new("08006", format!("cannot check the token: {why}"))
                }
            };
            Err((reason, error))
        }
    }
}

/// A new pool for `key`: its first credential, issued for the client's identity.
async fn make_pool(shared: &Shared, key: PoolKey, acting: Acting) -> Result<Arc<Pool>, PgError> {
    let auth = match (&acting, &shared.config.auth) {
        (Acting::Token(token), _) => Auth::Token(token.clone()),
        (
            Acting::Pod,
            ClientAuth::Sidecar {
                role,
                mount,
                token_file,
            },
        ) => Auth::Kubernetes {
            mount: mount.clone(),
            role: role.clone(),
            token_file: token_file.clone(),
        },
        (Acting::Pod, ClientAuth::Identity { .. }) => {
            return Err(PgError::new("28000", "no identity to act as"));
        }
    };
    let client = Arc::new(Client::new(&shared.config.address, auth));
    let options = ProviderOptions {
        revoke_replaced: false,
        ..ProviderOptions::default()
    };
    let provider = CredentialProvider::start(client.clone(), &key.path, options)
        .await
        .map_err(|error| refused_credential(&key, error))?;
    tracing::info!(path = %key.path, subject = %key.subject, lease_id = %provider.current().credential.lease_id, "pool opened");
    Ok(Pool::new(
        key,
        client,
        provider,
        shared.connector.clone(),
        shared.metrics.clone(),
        shared.config.pool_size,
    ))
}

/// What a client is told when pgwarden would not issue its credential.
fn refused_credential(key: &PoolKey, error: ClientError) -> PgError {
    match error {
        ClientError::Api {
            status: 403,
            message,
            ..
        } => PgError::new(
            "28000",
            format!("{} may not use {}: {message}", key.subject, key.path),
        ),
        ClientError::Api {
            status, message, ..
        } if status < 500 => PgError::new(
            "28000",
            format!("no credential from {}: {message}", key.path),
        ),
        other => PgError::new(
            "08006",
            format!("cannot get a credential from pgwarden: {other}"),
        ),
    }
}

/// `database/creds/<role>` for a startup `user` of `<role>` or `<mount>/<role>`.
fn role_path(user: &str, default_mount: &str) -> Result<String, PgError> {
    let valid = |part: &str| {
        part.len() <= 128
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    };
    let (mount, role) = user.split_once('/').unwrap_or((default_mount, user));
    if user.is_empty() {
        return Err(PgError::new(
            "28000",
            "no user name given: the user names the pgwarden role (e.g. appdb-readonly)",
        ));
    }
    if !valid(mount) || !valid(role) {
        return Err(PgError::new(
            "28000",
            format!(
                "user {user:?} must name a pgwarden role as <role> or <mount>/<role> (a letter or digit, then letters, digits, _ . -)"
            ),
        ));
    }
    Ok(format!("{mount}/creds/{role}"))
}

/// Passes a cancel request on to the server the session holding `pid` is using.
async fn cancel(shared: &Shared, pid: i32, secret: i32) {
    let target = {
        let cancels = shared.cancels.lock();
        cancels
            .get(&pid)
            .filter(|(known, _)| bool::from(known.to_be_bytes().ct_eq(&secret.to_be_bytes())))
            .and_then(|(_, target)| target.lock().clone())
    };
    let Some((address, (server_pid, server_secret))) = target else {
        return;
    };
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::cancel_request(server_pid, server_secret, &mut out);
    if let Ok(mut stream) = tokio::net::TcpStream::connect(&address).await {
        let _ = stream.write_all(&out).await;
    }
}

/// A TLS acceptor from the certificate chain and key files.
fn tls_acceptor(files: &crate::config::TlsFiles) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| format!("tls.cert {}: {e}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("tls.key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_names_the_role() {
        assert_eq!(
            role_path("appdb-readonly", "database").unwrap(),
            "database/creds/appdb-readonly"
        );
        assert_eq!(
            role_path("db2/reader", "database").unwrap(),
            "db2/creds/reader"
        );
        for bad in ["../x", "a/b/c", "x y", "ro\u{0}le"] {
            assert_eq!(
                role_path(bad, "database").unwrap_err().message,
                format!(
                    "user {bad:?} must name a pgwarden role as <role> or <mount>/<role> (a letter or digit, then letters, digits, _ . -)"
                )
            );
        }
        assert_eq!(role_path("", "database").unwrap_err().code, "28000");
    }
}
