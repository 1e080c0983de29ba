//! TLS for the API listener: the certificate chain and key from PEM files, taken again when
//! either file changes (a renewal by cert-manager, say) without a restart. A renewal that
//! cannot be read, or whose key does not match its certificate, keeps the last good pair.

use crate::config::TlsFiles;
use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// How often the files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// What tells that a file changed: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The certificate the listener presents, reloaded from its files when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    stamps: [Stamp; 2],
    key: Arc<CertifiedKey>,
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// Reads the chain and key in `files` and checks that they belong together.
fn load(files: &TlsFiles) -> Result<Loaded, String> {
    // Stamped before reading: a change while reading is seen at the next check.
    let stamps = [stamp(&files.cert), stamp(&files.key)];
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("http.tls.cert {}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "http.tls.cert {}: no certificate in the file",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("http.tls.key {}: {e}", files.key.display()))?;
    let key = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        format!(
            "http.tls: the key {} does not serve the certificate {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Loaded {
        stamps,
        key: Arc::new(key),
    })
}

impl ReloadingCert {
    /// Reads `files` now: an error says what is wrong with which file.
    pub fn load(files: TlsFiles) -> Result<ReloadingCert, String> {
        let loaded = load(&files)?;
        Ok(ReloadingCert {
            files,
            current: RwLock::new(loaded),
        })
    }

    /// Reads the files again if either changed since last read; true if the pair in use
    /// changed. A pair that cannot be used is an error, and the last good one stays.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let stamps = [stamp(&self.files.cert), stamp(&self.files.key)];
        if self.current.read().stamps == stamps {
            return Ok(false);
        }
        match load(&self.files) {
            Ok(loaded) => {
                *self.current.write() = loaded;
                Ok(true)
            }
            Err(error) => {
                // Not tried again until the files change once more.
                self.current.write().stamps = stamps;
                Err(error)
            }
        }
    }

    /// An acceptor presenting this certificate, whatever it becomes.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("http.tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Checks the files every [`RELOAD_INTERVAL`] until `shutdown` turns true, logging each
    /// reload and each renewal that cannot be used.
    pub async fn watch(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(RELOAD_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            match self.reload_if_changed() {
                Ok(true) => {
                    tracing::info!(cert = %self.files.cert.display(), "reloaded the API's TLS certificate")
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(%error, "cannot use the changed TLS files; keeping the certificate in use")
                }
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name` and its key, in PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &std::path::Path, (cert, key): &(String, String)) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    fn served(cert: &ReloadingCert) -> Vec<u8> {
        cert.current.read().key.cert[0].to_vec()
    }

    #[test]
    fn a_renewal_is_taken_and_a_broken_one_keeps_the_last_good_pair() {
        let dir = tempfile::tempdir().unwrap();
        let first = self_signed("first");
        let cert = ReloadingCert::load(write(dir.path(), &first)).unwrap();
        let first_der = served(&cert);
        assert_eq!(cert.reload_if_changed(), Ok(false));

        // Lengths differ between names, so the change shows even within one mtime tick.
        let renewed = self_signed("renewed.example");
        write(dir.path(), &renewed);
        assert_eq!(cert.reload_if_changed(), Ok(true));
        let renewed_der = served(&cert);
        assert_ne!(renewed_der, first_der);

        // A key from another pair: refused, and the renewed pair stays.
        let other = self_signed("other.example.org");
        std::fs::write(dir.path().join("tls.key"), &other.1).unwrap();
        let error = cert.reload_if_changed().unwrap_err();
        assert!(
            error.starts_with(&format!(
                "http.tls: the key {} does not serve the certificate {}: ",
                dir.path().join("tls.key").display(),
                dir.path().join("tls.crt").display()
            )),
            "{error}"
        );
        assert_eq!(served(&cert), renewed_der);
        assert_eq!(cert.reload_if_changed(), Ok(false), "tried once per change");
    }

    #[test]
    fn files_that_cannot_be_used_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("missing.crt"),
            key: dir.path().join("missing.key"),
        };
        let error = ReloadingCert::load(files.clone()).unwrap_err();
        assert!(
            error.starts_with(&format!("http.tls.cert {}: ", files.cert.display())),
            "{error}"
        );
        std::fs::write(&files.cert, "not a certificate").unwrap();
        assert_eq!(
            ReloadingCert::load(files.clone()).unwrap_err(),
            format!(
                "http.tls.cert {}: no certificate in the file",
                files.cert.display()
            )
        );
    }
}
