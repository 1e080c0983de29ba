//! The rustls connector for servers (`upstream:`), one crypto provider (aws-lc-rs) as
//! everywhere in pgwarden. (The acceptor for clients, `tls:`, is `pgwarden_tls`'s.)

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsConnector;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The PEM certificates in `path`; `what` names the setting in errors.
fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// A connector trusting the certificates in `root_cert`, or the system's roots; it always
/// verifies the chain and the server's name (as pgwarden's own connections do).
pub fn connector(root_cert: Option<&Path>) -> Result<TlsConnector, String> {
    let certs = match root_cert {
        Some(path) => certificates(path, "upstream.root_cert")?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err("no usable root certificate for upstream TLS; set upstream.root_cert".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}
