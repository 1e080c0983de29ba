//! A TLS certificate served from PEM files (pgwarden's API, the proxy's clients), taken again
//! when either file's contents change (a renewal by cert-manager, say) without a restart. A
//! renewal that cannot be read, or whose key does not match its certificate, keeps the last
//! good pair.

use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// A certificate chain and its private key, in PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How often the files are read for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The certificate the listener presents, reloaded from its files when they change.
#[derive(Debug)]
pub struct ReloadingCert {
    /// The configuration's name for the files (`http.tls`), for errors and logs.
    setting: &'static str,
    files: TlsFiles,
    current: RwLock<Loaded>,
    /// The last reload's error, reported once until something changes.
    last_error: Mutex<Option<String>>,
}

/// A pair in use, and the digest of the files' contents it came from.
#[derive(Debug)]
struct Loaded {
    digest: [u8; 32],
    key: Arc<CertifiedKey>,
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

/// The contents of the certificate file and of the key file. (Compared whole: a renewed key
/// can have the old one's length and modification time.)
fn read(setting: &str, files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), String> {
    let cert = std::fs::read(&files.cert)
        .map_err(|e| format!("{setting}.cert {}: {e}", files.cert.display()))?;
    let key = std::fs::read(&files.key)
        .map_err(|e| format!("{setting}.key {}: {e}", files.key.display()))?;
    Ok((cert, key))
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let length = u64::try_from(cert.len()).unwrap_or(u64::MAX);
    Sha256::new()
        .chain_update(length.to_be_bytes())
        .chain_update(cert)
        .chain_update(key)
        .finalize()
        .into()
}

/// The pair in `cert` and `key` (read from `files`), checked to belong together.
fn parse(setting: &str, files: &TlsFiles, cert: &[u8], key_pem: &[u8]) -> Result<Loaded, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting}.cert {}: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{setting}.cert {}: no certificate in the file",
            files.cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "{setting}.key {}: no private key in the file (an unencrypted PKCS#8, PKCS#1 or \
             SEC1 PEM key)",
            files.key.display()
        ),
        other => format!("{setting}.key {}: {other}", files.key.display()),
    })?;
    let key = CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        format!(
            "{setting}: the key {} does not serve the certificate {} (its first certificate \
             must be the server's own): {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Loaded {
        digest: digest(cert, key_pem),
        key: Arc::new(key),
    })
}

impl ReloadingCert {
    /// Reads `files` now: an error says what is wrong with which file, as `setting` (the
    /// configuration's name for them, e.g. `http.tls`) and the file's path.
    pub fn load(setting: &'static str, files: &TlsFiles) -> Result<Arc<ReloadingCert>, String> {
        let (cert, key) = read(setting, files)?;
        let loaded = parse(setting, files, &cert, &key)?;
        Ok(Arc::new(ReloadingCert {
            setting,
            files: files.clone(),
            current: RwLock::new(loaded),
            last_error: Mutex::new(None),
        }))
    }

    /// Reads the files again and takes their pair if their contents changed; true if the
    /// pair in use changed. A pair that cannot be used is an error (once: the same error
    /// again is not reported), and the last good one stays.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let renewed = read(self.setting, &self.files).and_then(|(cert, key)| {
            if self.current.read().digest == digest(&cert, &key) {
                return Ok(None);
            }
            parse(self.setting, &self.files, &cert, &key).map(Some)
        });
        let mut last_error = self.last_error.lock();
        match renewed {
            Ok(renewed) => {
                *last_error = None;
                let changed = renewed.is_some();
                if let Some(loaded) = renewed {
                    *self.current.write() = loaded;
                }
                Ok(changed)
            }
            Err(error) if last_error.as_deref() == Some(error.as_str()) => Ok(false),
            Err(error) => {
                *last_error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// An acceptor presenting this certificate, whatever it becomes, offering the
    /// application protocols `alpn` (none: no ALPN).
    pub fn acceptor(self: &Arc<Self>, alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("{}: {e}", self.setting))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    /// Reads the files every [`RELOAD_INTERVAL`] until `shutdown` turns true, logging each
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
        let cert = ReloadingCert::load("http.tls", &write(dir.path(), &first)).unwrap();
        let first_der = served(&cert);
        assert_eq!(cert.reload_if_changed(), Ok(false));

        let renewed = self_signed("renewed.example");
        write(dir.path(), &renewed);
        assert_eq!(cert.reload_if_changed(), Ok(true));
        let renewed_der = served(&cert);
        assert_ne!(renewed_der, first_der);

        // A key from another pair: refused, and the renewed pair stays.
        let other = self_signed("other.example.org");
        std::fs::write(dir.path().join("tls.key"), &other.1).unwrap();
        let error = cert.reload_if_changed().unwrap_err();
        assert_eq!(
            error,
            format!(
                "http.tls: the key {} does not serve the certificate {} (its first certificate \
                 must be the server's own): keys may not be consistent: KeyMismatch",
                dir.path().join("tls.key").display(),
                dir.path().join("tls.crt").display()
            )
        );
        assert_eq!(served(&cert), renewed_der);
        assert_eq!(cert.reload_if_changed(), Ok(false), "reported once");
        // Put right: taken.
        write(dir.path(), &renewed);
        assert_eq!(
            cert.reload_if_changed(),
            Ok(false),
            "the pair in use already"
        );
        write(dir.path(), &first);
        assert_eq!(cert.reload_if_changed(), Ok(true));
        assert_eq!(served(&cert), first_der);
    }

    #[test]
    fn files_that_cannot_be_used_say_which_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
        };
        let refused = || ReloadingCert::load("http.tls", &files).unwrap_err();
        assert_eq!(
            refused(),
            format!(
                "http.tls.cert {}: No such file or directory (os error 2)",
                files.cert.display()
            )
        );
        let (cert, key) = self_signed("server");
        std::fs::write(&files.cert, "not a certificate").unwrap();
        std::fs::write(&files.key, &key).unwrap();
        assert_eq!(
            refused(),
            format!(
                "http.tls.cert {}: no certificate in the file",
                files.cert.display()
            )
        );
        // The certificate where the key should be.
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, &cert).unwrap();
        assert_eq!(
            refused(),
            format!(
                "http.tls.key {}: no private key in the file (an unencrypted PKCS#8, PKCS#1 or \
                 SEC1 PEM key)",
                files.key.display()
            )
        );
    }
}
