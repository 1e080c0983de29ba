//! Server connections: TCP (TLS as `sslmode` says), the startup packet and SCRAM
//! authentication with a pgwarden credential, written with postgres-protocol's messages, and
//! the choice among several hosts by `target_session_attrs`.

use crate::client::Stream;
use crate::config::{SslMode, TargetSessionAttrs, Upstream};
use crate::reply::PgError;
use crate::statements::ServerStatements;
use bytes::BytesMut;
use pgwarden_client::Credential;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest a server connection may take to be made and authenticated.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An authenticated server connection, ready for queries.
pub struct Server {
    /// The connection.
    pub stream: Stream,
    /// The parameters the server reported (`server_version`, `TimeZone`, …).
    pub parameters: Vec<(String, String)>,
    /// Where it is, for cancel requests.
    pub address: Arc<str>,
    /// The server's cancel key.
    pub key: (i32, i32),
    /// The statements the proxy prepared on it (transaction pooling).
    pub statements: ServerStatements,
}

/// Why no server connection could be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The server refused the credential: a wrong password (`28P01`), or a role that is gone
    /// or may no longer log in (`28000`), as while its lease is revoked or after it expired.
    #[error("the database refused the credential: {0}")]
    CredentialRefused(String),
    /// The server answered with another error.
    #[error("{code}: {message}")]
    Server {
        /// Its SQLSTATE.
        code: String,
        /// Its message.
        message: String,
    },
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// Makes server connections as [`Upstream`] says.
pub struct Connector {
    tls: Option<TlsConnector>,
}

impl Connector {
    /// A connector for `upstream`; a bad `root_cert` is an error.
    pub fn new(upstream: &Upstream) -> Result<Connector, String> {
        let tls = match upstream.sslmode {
            SslMode::Disable | SslMode::Prefer => None,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                Some(crate::tls::connector(upstream.root_cert.as_deref())?)
            }
        };
        Ok(Connector { tls })
    }

    /// Connects as `credential` to its database on its hosts, the first that fits `attrs`
    /// (with `prefer-standby`, any host if no standby answers).
    pub async fn connect(
        &self,
        credential: &Credential,
        attrs: TargetSessionAttrs,
    ) -> Result<Server, ConnectError> {
        let hosts = hosts(credential);
        let database = credential.database.as_str();
        let mut failures = Vec::new();
        let mut fallback = None;
        for address in &hosts {
            let attempt =
                tokio::time::timeout(CONNECT_TIMEOUT, self.open(address, credential, database));
            let mut server = match attempt.await {
                Ok(Ok(server)) => server,
                Ok(Err(ConnectError::CredentialRefused(m))) => {
                    return Err(ConnectError::CredentialRefused(m));
                }
                // One host: its own error, as it said it.
                Ok(Err(error)) if hosts.len() == 1 => return Err(error),
                Ok(Err(error)) => {
                    failures.push(format!("{address}: {error}"));
                    continue;
                }
                Err(_) => {
                    failures.push(format!("{address}: no answer within {CONNECT_TIMEOUT:?}"));
                    continue;
                }
            };
            if attrs == TargetSessionAttrs::Any {
                return Ok(server);
            }
            let standby = match in_recovery(&mut server).await {
                Ok(standby) => standby,
                Err(m) => {
                    failures.push(format!("{address}: {m}"));
                    continue;
                }
            };
            match (attrs, standby) {
                (TargetSessionAttrs::ReadWrite, false)
                | (TargetSessionAttrs::ReadOnly | TargetSessionAttrs::PreferStandby, true) => {
                    return Ok(server);
                }
                (TargetSessionAttrs::PreferStandby, false) => {
                    fallback.get_or_insert(server);
                }
                _ => failures.push(format!(
                    "{address}: {}",
                    if standby {
                        "is a standby"
                    } else {
                        "is not a standby"
                    }
                )),
            }
        }
        if let Some(server) = fallback {
            return Ok(server);
        }
        Err(ConnectError::Failed(format!(
            "no server fits (target_session_attrs {:?}): {}",
            attrs,
            failures.join("; ")
        )))
    }

    /// One connection to `address`, authenticated.
    async fn open(
        &self,
        address: &str,
        credential: &Credential,
        database: &str,
    ) -> Result<Server, ConnectError> {
        let failed = |e: std::io::Error| ConnectError::Failed(e.to_string());
        let tcp = TcpStream::connect(address).await.map_err(failed)?;
        tcp.set_nodelay(true).map_err(failed)?;
        let mut stream: Stream = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => Box::new(start_tls(connector, tcp, host_name(address)).await?),
        };
        let mut out = BytesMut::new();
        let parameters = [
            ("user", credential.username.as_str()),
            ("database", database),
            ("application_name", "pgwarden-proxy"),
        ];
        frontend::startup_message(parameters, &mut out).map_err(failed)?;
        stream.write_all(&out).await.map_err(failed)?;
        let mut reader = Reader::default();
        let password = credential.password.expose_secret().as_bytes();
        let mut scram = None;
        let mut scram_done = false;
        let mut server = Server {
            stream: Box::new(tokio::io::empty()),
            parameters: Vec::new(),
            address: address.into(),
            key: (0, 0),
            statements: ServerStatements::default(),
        };
        loop {
            out.clear();
            match reader.next(&mut stream).await? {
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = false;
                    while let Ok(Some(mechanism)) =
                        fallible_iterator::FallibleIterator::next(&mut mechanisms)
                    {
                        offered |= mechanism == SCRAM_SHA_256;
                    }
                    if !offered {
                        return Err(ConnectError::Failed(
                            "the server offers no SCRAM-SHA-256".into(),
                        ));
                    }
                    let client = ScramSha256::new(password, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, client.message(), &mut out)
                        .map_err(failed)?;
                    scram = Some(client);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let client = scram.as_mut().ok_or_else(|| unexpected("SASL continue"))?;
                    client.update(body.data()).map_err(failed)?;
                    frontend::sasl_response(client.message(), &mut out).map_err(failed)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let client = scram.as_mut().ok_or_else(|| unexpected("SASL final"))?;
                    client.finish(body.data()).map_err(failed)?;
                    scram_done = true;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = postgres_protocol::authentication::md5_hash(
                        credential.username.as_bytes(),
                        password,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut out).map_err(failed)?;
                }
                Message::AuthenticationCleartextPassword => {
                    if self.tls.is_none() {
                        return Err(ConnectError::Failed(
                            "the server asks for the password in clear text over an unencrypted connection; use sslmode require or better".into(),
                        ));
                    }
                    frontend::password_message(password, &mut out).map_err(failed)?;
                }
                Message::AuthenticationOk if scram.is_some() && !scram_done => {
                    // A server that skips SCRAM's last step never proved it knows the password.
                    return Err(ConnectError::Failed(
                        "the server ended SCRAM authentication without proving itself".into(),
                    ));
                }
                Message::AuthenticationOk => {}
                Message::ParameterStatus(body) => {
                    let name = body.name().map_err(failed)?.to_string();
                    let value = body.value().map_err(failed)?.to_string();
                    server.parameters.push((name, value));
                }
                Message::BackendKeyData(body) => {
                    server.key = (body.process_id(), body.secret_key())
                }
                Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => {
                    server.stream = stream;
                    return Ok(server);
                }
                Message::ErrorResponse(body) => {
                    let (code, message) = error_fields(body.fields());
                    return Err(refusal(code, message));
                }
                _ => return Err(unexpected("message during authentication")),
            }
            if !out.is_empty() {
                stream.write_all(&out).await.map_err(failed)?;
            }
        }
    }
}

fn unexpected(what: &str) -> ConnectError {
    ConnectError::Failed(format!("unexpected {what} from the server"))
}

/// The host of `host:port` (an IPv6 address in brackets loses them), for TLS verification.
fn host_name(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Every `host:port` of the credential (several when it names primary and replicas).
fn hosts(credential: &Credential) -> Vec<String> {
    if credential.hosts.is_empty() {
        vec![format!("{}:{}", credential.host, credential.port)]
    } else {
        credential.hosts.clone()
    }
}

/// The SQLSTATE and message of an `ErrorResponse`.
fn error_fields(mut fields: ErrorFields<'_>) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    while let Ok(Some(field)) = fallible_iterator::FallibleIterator::next(&mut fields) {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
    }
    (code, message)
}

/// What a simple query answered.
pub struct Answer {
    /// The first column of its first row, if it returned one (and it was not NULL).
    pub value: Option<Vec<u8>>,
    /// Whether the server was outside a transaction when it finished.
    pub idle: bool,
}

/// Runs `sql` by the simple protocol on `server`, taking note of the parameters it reports
/// changed; the server's error, if any.
pub async fn simple_query(server: &mut Server, sql: &str) -> Result<Answer, PgError> {
    let broken = |e: String| PgError::new("08006", e);
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).map_err(|e| broken(e.to_string()))?;
    server
        .stream
        .write_all(&out)
        .await
        .map_err(|e| broken(e.to_string()))?;
    let mut reader = Reader::default();
    let (mut value, mut error) = (None, None);
    loop {
        match reader
            .next(&mut server.stream)
            .await
            .map_err(|e| broken(e.to_string()))?
        {
            Message::ParameterStatus(body) => {
                let (Ok(name), Ok(reported)) = (body.name(), body.value()) else {
                    continue;
                };
                match server.parameters.iter_mut().find(|(n, _)| n == name) {
                    Some(known) => known.1 = reported.to_string(),
                    None => server
                        .parameters
                        .push((name.to_string(), reported.to_string())),
                }
            }
            Message::DataRow(row) if value.is_none() => {
                let mut ranges = row.ranges();
                if let Ok(Some(Some(range))) =
                    fallible_iterator::FallibleIterator::next(&mut ranges)
                {
                    value = row.buffer().get(range).map(<[u8]>::to_vec);
                }
            }
            Message::ErrorResponse(body) => {
                let (code, message) = error_fields(body.fields());
                error = Some(PgError::new(&code, message));
            }
            Message::ReadyForQuery(status) => {
                let idle = status.status() == b'I';
                return error.map_or(Ok(Answer { value, idle }), Err);
            }
            _ => {}
        }
    }
}

/// Whether the server is a standby (`pg_is_in_recovery()`).
async fn in_recovery(server: &mut Server) -> Result<bool, String> {
    let answer = simple_query(server, "SELECT pg_is_in_recovery()")
        .await
        .map_err(|e| e.to_string())?;
    match answer.value {
        Some(value) => Ok(value == b"t"),
        None => Err("no answer to pg_is_in_recovery()".into()),
    }
}

/// Reads whole backend messages.
#[derive(Default)]
struct Reader {
    buf: BytesMut,
}

impl Reader {
    async fn next(&mut self, stream: &mut Stream) -> Result<Message, ConnectError> {
        loop {
            match Message::parse(&mut self.buf) {
                Ok(Some(message)) => return Ok(message),
                Ok(None) => {}
                Err(e) => {
                    return Err(ConnectError::Failed(format!(
                        "invalid message from the server: {e}"
                    )));
                }
            }
            let read = stream.read_buf(&mut self.buf).await;
            match read {
                Ok(0) => {
                    return Err(ConnectError::Failed(
                        "the server closed the connection".into(),
                    ));
                }
                Ok(_) => {}
                Err(e) => return Err(ConnectError::Failed(e.to_string())),
            }
        }
    }
}

/// Asks for TLS (`SSLRequest`) and starts it, verifying the server as `host`.
async fn start_tls(
    connector: &TlsConnector,
    mut tcp: TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
    let failed = |e: std::io::Error| ConnectError::Failed(e.to_string());
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    tcp.write_all(&out).await.map_err(failed)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(failed)?;
    if answer[0] != b'S' {
        return Err(ConnectError::Failed(
            "the server does not offer TLS (sslmode requires it)".into(),
        ));
    }
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| ConnectError::Failed(format!("host {host:?}: {e}")))?;
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| ConnectError::Failed(format!("TLS: {e}")))
}

/// The error a server's refusal to log in means. A role dropped between its authentication
/// and the session's start (a revocation or an expiry racing the login) is refused with
/// `28000` "role … does not exist", and one being revoked with "role … is not permitted to
/// log in": both mean the credential is spent, as a wrong password does. (Other `28000`s,
/// such as no `pg_hba.conf` entry, are the server's own errors.)
fn refusal(code: String, message: String) -> ConnectError {
    let spent_role = code == "28000" && message.starts_with("role \"");
    if code == "28P01" || spent_role {
        ConnectError::CredentialRefused(message)
    } else {
        ConnectError::Server { code, message }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_spent_credential_is_told_from_the_servers_other_refusals() {
        let spent = |code: &str, message: &str| {
            matches!(
                super::refusal(code.into(), message.into()),
                super::ConnectError::CredentialRefused(_)
            )
        };
        assert!(spent(
            "28P01",
            "password authentication failed for user \"v-a\""
        ));
        assert!(spent("28000", "role \"v-a\" does not exist"));
        assert!(spent("28000", "role \"v-a\" is not permitted to log in"));
        assert!(!spent(
            "28000",
            "no pg_hba.conf entry for host \"10.0.0.1\", user \"v-a\", database \"appdb\""
        ));
        assert!(!spent("3D000", "database \"appdb\" does not exist"));
    }
}
