//! TLS for fake servers: a throwaway CA with a certificate for `localhost`/`127.0.0.1`, and an
//! axum listener that terminates TLS with it.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and the server configuration of a certificate it signed for the loopback address.
pub struct TestCa {
    /// The CA certificate in PEM, what clients must trust.
    pub ca_pem: String,
    /// Server configuration presenting the loopback certificate.
    pub server_config: Arc<ServerConfig>,
    /// The loopback certificate in PEM (for servers configured by file, like PostgreSQL).
    pub cert_pem: String,
    /// Its private key in PEM.
    pub key_pem: String,
}

impl TestCa {
    /// A fresh CA and a certificate for `localhost` and `127.0.0.1`.
    pub fn localhost() -> TestCa {
        let ca_key = KeyPair::generate().expect("generating a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL takes a leaf whose subject is its issuer for self-signed.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pgwarden test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signing the CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().expect("generating a server key");
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server parameters");
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = leaf
            .signed_by(&leaf_key, &issuer)
            .expect("signing the server certificate");
        let server_config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .expect("a valid server certificate");
        TestCa {
            ca_pem: ca_cert.pem(),
            server_config: Arc::new(server_config),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        }
    }
}

/// A TCP listener that completes a TLS handshake before handing a connection to axum.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    /// Wraps `tcp` with `config`.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(config),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            // A client that rejects our certificate fails here; wait for the next one.
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
