//! A stand-in for RDS's IAM log-in, which cannot run here: a TCP front of a [`PgCluster`] that
//! speaks PostgreSQL's wire protocol as RDS does to a user granted `rds_iam` (over TLS when
//! the policy holds a server configuration, answering `SSLRequest` as PostgreSQL does). It asks for a
//! cleartext password, accepts only a valid RDS auth token for its own host name and port, the
//! user and the region, signed with the one AWS key it knows and not expired, and answers
//! anything else with RDS's `PAM authentication failed` error. A client it accepts is then
//! connected to the real cluster (the front signs in there with SCRAM as that user) and the
//! two byte streams are spliced, so everything after log-in is real PostgreSQL.

use crate::PgCluster;
use bytes::BytesMut;
use pgwarden_aws::{Credentials, TOKEN_LIFETIME_SECONDS, rds_auth_token};
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The protocol version 3.0 startup code.
const PROTOCOL_3: i32 = 196_608;
/// The code of an `SSLRequest` (and of a `GSSENCRequest`, one more): declined.
const SSL_REQUEST: i32 = 80_877_103;
const GSS_REQUEST: i32 = 80_877_104;

/// What the front accepts: the AWS key tokens must be signed with, and the region.
pub struct IamPolicy {
    /// The credentials pgwarden's environment holds (the front checks signatures with them).
    pub credentials: Credentials,
    /// The region tokens must be signed for.
    pub region: String,
    /// The password of each database user in the real cluster, by name.
    pub passwords: HashMap<String, String>,
    /// TLS for clients that ask for it (`SSLRequest`); without it they are told `N`.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// A running front; it stops when dropped.
pub struct RdsIamFront {
    /// The port on 127.0.0.1 (tokens must be signed for `127.0.0.1:<port>`).
    pub port: u16,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

/// Log-ins seen so far.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    refused: AtomicUsize,
}

impl Drop for RdsIamFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RdsIamFront {
    /// Starts a front of `cluster` on a free port.
    pub async fn start(cluster: &PgCluster, policy: IamPolicy) -> std::io::Result<RdsIamFront> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let upstream = cluster.port();
        let counts = Arc::new(Counts::default());
        let shared = (Arc::new(policy), counts.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (policy, counts) = (shared.0.clone(), shared.1.clone());
                tokio::spawn(async move {
                    let _ = serve(client, port, upstream, &policy, &counts).await;
                });
            }
        });
        Ok(RdsIamFront { port, counts, task })
    }

    /// Log-ins with a valid token so far.
    pub fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    /// Log-ins refused so far.
    pub fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }
}

/// One client: TLS if asked for and offered, then the rest of [`sign_in`].
async fn serve(
    mut client: TcpStream,
    port: u16,
    upstream: u16,
    policy: &IamPolicy,
    counts: &Counts,
) -> std::io::Result<()> {
    loop {
        let packet = read_startup(&mut client).await?;
        match (startup_code(&packet), &policy.tls) {
            (SSL_REQUEST, Some(config)) => {
                client.write_all(b"S").await?;
                let mut secure = tokio_rustls::TlsAcceptor::from(config.clone())
                    .accept(client)
                    .await?;
                let startup = read_startup(&mut secure).await?;
                return sign_in(secure, startup, port, upstream, policy, counts).await;
            }
            (SSL_REQUEST | GSS_REQUEST, _) => client.write_all(b"N").await?,
            (PROTOCOL_3, _) => {
                return sign_in(client, packet, port, upstream, policy, counts).await;
            }
            _ => return Ok(()),
        }
    }
}

/// The code at the start of a startup-phase packet.
fn startup_code(packet: &[u8]) -> i32 {
    i32::from_be_bytes(packet[..4].try_into().expect("4 bytes"))
}

/// Startup, token check, then the real cluster.
async fn sign_in<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    startup: Vec<u8>,
    port: u16,
    upstream: u16,
    policy: &IamPolicy,
    counts: &Counts,
) -> std::io::Result<()> {
    if startup_code(&startup) != PROTOCOL_3 {
        return Ok(());
    }
    let params = startup_params(&startup[4..]);
    let user = params.get("user").cloned().unwrap_or_default();
    // AuthenticationCleartextPassword, as RDS asks an `rds_iam` user.
    client.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await?;
    let (kind, body) = read_message(&mut client).await?;
    let token = body.strip_suffix(&[0]).unwrap_or(&body);
    let token = String::from_utf8_lossy(token);
    let checked = check_token(&token, port, &user, policy);
    let password = policy.passwords.get(&user);
    let (Ok(()), b'p', Some(password)) = (checked, kind, password) else {
        counts.refused.fetch_add(1, Ordering::SeqCst);
        let message = format!("PAM authentication failed for user \"{user}\"");
        return client.write_all(&error_response("28000", &message)).await;
    };
    counts.accepted.fetch_add(1, Ordering::SeqCst);
    let mut server = TcpStream::connect(("127.0.0.1", upstream)).await?;
    let mut packet = (startup.len() as i32 + 4).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    server.write_all(&packet).await?;
    let first = scram_login(&mut server, password).await?;
    client.write_all(&first).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// Checks `token` as RDS would: for this host and port, `user`, the policy's region and key,
/// signed at most [`TOKEN_LIFETIME_SECONDS`] ago and not in the future.
fn check_token(token: &str, port: u16, user: &str, policy: &IamPolicy) -> Result<(), String> {
    let query = token
        .strip_prefix(&format!("127.0.0.1:{port}/?"))
        .ok_or("signed for another host")?;
    let date = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("X-Amz-Date="))
        .ok_or("no X-Amz-Date")?;
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let signed: SystemTime = time::PrimitiveDateTime::parse(date, format)
        .map_err(|e| e.to_string())?
        .assume_utc()
        .into();
    let now = SystemTime::now();
    if signed > now + Duration::from_secs(60)
        || now > signed + Duration::from_secs(TOKEN_LIFETIME_SECONDS)
    {
        return Err("expired".into());
    }
    let expected = rds_auth_token(
        "127.0.0.1",
        port,
        user,
        &policy.region,
        &policy.credentials,
        signed,
    )
    .map_err(|e| e.to_string())?;
    if expected == token {
        Ok(())
    } else {
        Err("signature does not match".into())
    }
}

/// Signs in to the real cluster with SCRAM-SHA-256 and returns the bytes after it (from
/// `AuthenticationOk` on) that arrived with the last message read.
async fn scram_login(server: &mut TcpStream, password: &str) -> std::io::Result<Vec<u8>> {
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    loop {
        let (kind, body) = read_message(server).await?;
        let code = body
            .get(..4)
            .map(|b| i32::from_be_bytes(b.try_into().expect("4 bytes")));
        let mut reply = BytesMut::new();
        match (kind, code) {
            (b'R', Some(10)) => {
                frontend::sasl_initial_response(SCRAM_SHA_256, scram.message(), &mut reply)?
            }
            (b'R', Some(11)) => {
                scram.update(&body[4..])?;
                frontend::sasl_response(scram.message(), &mut reply)?;
            }
            (b'R', Some(12)) => scram.finish(&body[4..])?,
            _ => {
                // AuthenticationOk or an error: the client reads it and what follows.
                let mut message = vec![kind];
                message.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
                message.extend_from_slice(&body);
                return Ok(message);
            }
        }
        server.write_all(&reply).await?;
    }
}

/// Reads a startup-phase packet (no type byte) and returns it without its length.
async fn read_startup<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Vec<u8>> {
    let length = stream.read_i32().await?;
    let mut body = vec![0; usize::try_from(length - 4).unwrap_or(0).min(10_000)];
    stream.read_exact(&mut body).await?;
    if body.len() < 4 {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    Ok(body)
}

/// Reads one typed message: its type byte and body.
async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let kind = stream.read_u8().await?;
    let length = stream.read_i32().await?;
    let mut body = vec![0; usize::try_from(length - 4).unwrap_or(0).min(100_000)];
    stream.read_exact(&mut body).await?;
    Ok((kind, body))
}

/// The `name\0value\0…\0` pairs of a startup message.
fn startup_params(body: &[u8]) -> HashMap<String, String> {
    let fields: Vec<String> = body
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    fields
        .chunks(2)
        .filter(|pair| pair.len() == 2 && !pair[0].is_empty())
        .map(|pair| (pair[0].clone(), pair[1].clone()))
        .collect()
}

/// A FATAL `ErrorResponse` with `code` and `message`.
fn error_response(code: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&(fields.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(&fields);
    out
}
