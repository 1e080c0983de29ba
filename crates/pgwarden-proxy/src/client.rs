//! A client's first steps: TLS negotiation, the startup packet and its password, decoded with
//! pgwire's messages.

use crate::reply::{self, PgError};
use bytes::{Buf, BytesMut};
use pgwire::messages::startup::PasswordMessageFamily;
use pgwire::messages::{
    DecodeContext, PgWireFrontendMessage as Frontend, SslNegotiationMetaMessage,
};
use secrecy::SecretString;
use std::collections::BTreeMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

/// A byte stream to a client or a server (TCP, Unix socket or TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// A boxed [`Io`].
pub type Stream = Box<dyn Io>;

/// PostgreSQL's limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
const MAX_STARTUP_PACKET: usize = 10_000;

/// What a client asked for.
pub enum Hello {
    /// A session, once its password is checked.
    Session(Startup),
    /// To cancel the query running on the session holding this key.
    Cancel {
        /// The proxy-given process id.
        pid: i32,
        /// Its secret.
        secret: i32,
    },
}

/// A client past its startup packet.
pub struct Startup {
    /// The connection, TLS-wrapped if negotiated.
    pub stream: Stream,
    /// The startup packet's parameters.
    pub parameters: BTreeMap<String, String>,
    /// Whether the connection is encrypted.
    pub tls: bool,
}

impl Startup {
    /// The startup packet's `user`.
    pub fn user(&self) -> &str {
        self.parameters.get("user").map_or("", String::as_str)
    }

    /// The startup packet's `database`, if it names one.
    pub fn database(&self) -> Option<&str> {
        self.parameters.get("database").map(String::as_str)
    }

    /// Asks for the password in clear text (the stream is TLS or local) and reads it.
    pub async fn read_password(&mut self) -> Result<SecretString, PgError> {
        let mut out = BytesMut::new();
        reply::ask_password(&mut out);
        self.stream.write_all(&out).await.map_err(gone)?;
        let mut buf = BytesMut::new();
        let mut context = DecodeContext::default();
        context.awaiting_frontend_ssl = false;
        context.awaiting_frontend_startup = false;
        let message = read_message(&mut self.stream, &mut buf, &context).await?;
        let Frontend::PasswordMessageFamily(family) = message else {
            return Err(PgError::new(
                "08P01",
                "expected a password message (the token)",
            ));
        };
        let (PasswordMessageFamily::Raw(_) | PasswordMessageFamily::Password(_)) = &family else {
            return Err(PgError::new("08P01", "expected a password message"));
        };
        let password = family
            .into_password()
            .map_err(|e| PgError::new("08P01", format!("invalid password message: {e}")))?;
        Ok(SecretString::from(password.password))
    }
}

/// The client hung up (or broke the stream): nothing more can be said to it.
fn gone(error: std::io::Error) -> PgError {
    PgError::new("08006", format!("the client connection failed: {error}"))
}

/// Reads the client's first packets: answers `SSLRequest` (with TLS when `tls` is set, else
/// `N`) and `GSSENCRequest` (`N`), then reads the startup packet or a cancel request.
pub async fn hello(
    mut stream: Stream,
    tls: Option<&TlsAcceptor>,
) -> Result<Hello, (Option<Stream>, PgError)> {
    let mut buf = BytesMut::new();
    let (mut encrypted, mut ssl_answered, mut gss_answered) = (false, false, false);
    let mut context = DecodeContext::default();
    context.awaiting_frontend_ssl = true;
    context.awaiting_frontend_startup = true;
    loop {
        if let Err(error) = check_startup_length(&mut stream, &mut buf).await {
            return Err((Some(stream), error));
        }
        let message = match read_message(&mut stream, &mut buf, &context).await {
            Ok(message) => message,
            Err(error) => return Err((Some(stream), error)),
        };
        match message {
            Frontend::SslNegotiation(
                request @ (SslNegotiationMetaMessage::PostgresSsl(_)
                | SslNegotiationMetaMessage::PostgresGss(_)),
            ) if encrypted
                || match request {
                    SslNegotiationMetaMessage::PostgresSsl(_) => ssl_answered,
                    _ => gss_answered,
                } =>
            {
                // Asked again after its answer, or after encryption began (PostgreSQL reads
                // it as a startup packet of protocol 1234.5679 or 1234.5680).
                let error = PgError::new(
                    "0A000",
                    "unsupported frontend protocol: SSLRequest or GSSENCRequest sent again",
                );
                return Err((Some(stream), error));
            }
            Frontend::SslNegotiation(SslNegotiationMetaMessage::PostgresSsl(_)) => {
                ssl_answered = true;
                if !buf.is_empty() {
                    // Bytes sent after SSLRequest before our answer could be injected by a
                    // man in the middle (CVE-2021-23214): refuse, as PostgreSQL does.
                    let error =
                        PgError::new("08P01", "received unencrypted data after SSL request");
                    return Err((Some(stream), error));
                }
                let Some(acceptor) = tls else {
                    if let Err(e) = stream.write_all(b"N").await {
                        return Err((Some(stream), gone(e)));
                    }
                    continue;
                };
                if let Err(e) = stream.write_all(b"S").await {
                    return Err((Some(stream), gone(e)));
                }
                match acceptor.accept(stream).await {
                    Ok(secured) => stream = Box::new(secured),
                    Err(error) => {
                        tracing::debug!(%error, "TLS handshake with a client failed");
                        return Err((None, gone(error)));
                    }
                }
                encrypted = true;
            }
            Frontend::SslNegotiation(SslNegotiationMetaMessage::PostgresGss(_)) => {
                gss_answered = true;
                if let Err(e) = stream.write_all(b"N").await {
                    return Err((Some(stream), gone(e)));
                }
            }
            Frontend::SslNegotiation(SslNegotiationMetaMessage::None) => {
                context.awaiting_frontend_ssl = false;
            }
            Frontend::CancelRequest(cancel) => {
                // Keys the proxy hands out are 4 bytes; a longer one matches no session.
                let Some(secret) = cancel.secret_key.as_i32() else {
                    return Err((Some(stream), PgError::new("08P01", "unknown cancel key")));
                };
                return Ok(Hello::Cancel {
                    pid: cancel.pid,
                    secret,
                });
            }
            Frontend::Startup(startup) => {
                if startup.protocol_number_major != 3 {
                    let error = PgError::new(
                        "0A000",
                        format!(
                            "unsupported frontend protocol {}.{}: the proxy speaks 3.0",
                            startup.protocol_number_major, startup.protocol_number_minor
                        ),
                    );
                    return Err((Some(stream), error));
                }
                let mut parameters = startup.parameters;
                let unsupported: Vec<String> = parameters
                    .keys()
                    .filter(|k| k.starts_with("_pq_."))
                    .cloned()
                    .collect();
                if startup.protocol_number_minor > 0 || !unsupported.is_empty() {
                    // Protocol 3.2 or extensions asked for: the proxy speaks 3.0, and says so.
                    parameters.retain(|k, _| !k.starts_with("_pq_."));
                    let mut out = BytesMut::new();
                    reply::negotiate_protocol(&mut out, unsupported);
                    if let Err(e) = stream.write_all(&out).await {
                        return Err((Some(stream), gone(e)));
                    }
                }
                return Ok(Hello::Session(Startup {
                    stream,
                    parameters,
                    tls: encrypted,
                }));
            }
            _ => {
                let error = PgError::new("08P01", "invalid startup packet layout");
                return Err((Some(stream), error));
            }
        }
    }
}

/// Refuses a startup-phase packet whose length PostgreSQL would refuse, before reading it.
async fn check_startup_length(stream: &mut Stream, buf: &mut BytesMut) -> Result<(), PgError> {
    while buf.len() < 4 {
        if stream.read_buf(buf).await.map_err(gone)? == 0 {
            return Err(PgError::new("08P01", "incomplete startup packet"));
        }
    }
    let length = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    match usize::try_from(length) {
        Ok(length) if (8..=MAX_STARTUP_PACKET).contains(&length) => Ok(()),
        _ => Err(PgError::new("08P01", "invalid length of startup packet")),
    }
}

/// Reads until one whole message decodes under `context`.
async fn read_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
    context: &DecodeContext,
) -> Result<Frontend, PgError> {
    loop {
        match Frontend::decode(buf, context) {
            Ok(Some(message)) => return Ok(message),
            Ok(None) => {}
            Err(error) => {
                buf.clear();
                return Err(PgError::new("08P01", format!("invalid message: {error}")));
            }
        }
        if buf.remaining() > MAX_STARTUP_PACKET {
            return Err(PgError::new(
                "08P01",
                "message too long before authentication",
            ));
        }
        if stream.read_buf(buf).await.map_err(gone)? == 0 {
            return Err(PgError::new("08P01", "incomplete message"));
        }
    }
}
