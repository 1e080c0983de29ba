//! TLS to target databases. libpq's `sslmode` and `sslrootcert` URL parameters are read here
//! (tokio-postgres knows neither `verify-full` nor `sslrootcert`): `disable`, `allow` and
//! `prefer` (the default) connect in plaintext; `require`, `verify-ca` and `verify-full` use
//! TLS and always verify the server's certificate chain and name, against `sslrootcert` or the
//! system's roots — pgwarden sends administrative credentials over this link, so it never
//! accepts an unverified server.

use percent_encoding::percent_decode_str;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::sync::Arc;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How connections to a target travel.
#[derive(Clone)]
pub(crate) enum Transport {
    /// No TLS.
    Plain,
    /// TLS with a verified server certificate.
    Tls(MakeRustlsConnect),
}

/// Removes `sslmode` and `sslrootcert` from `url` and returns the transport they ask for.
pub(crate) fn take_tls_params(url: &str) -> Result<(String, Transport), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Transport::Plain));
    };
    let (mut mode, mut root_cert, mut kept) = (None, None, Vec::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
        match key {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root_cert = Some(value),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    let tls = match mode.as_deref().unwrap_or("prefer") {
        "disable" | "allow" | "prefer" => false,
        "require" | "verify-ca" | "verify-full" => true,
        other => {
            return Err(format!(
                "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ));
        }
    };
    if !tls {
        return match root_cert {
            Some(_) => Err("sslrootcert needs sslmode=require, verify-ca or verify-full".into()),
            None => Ok((url, Transport::Plain)),
        };
    }
    Ok((url, Transport::Tls(connector(root_cert.as_deref())?)))
}

/// A TLS connector trusting the PEM certificates in `root_cert`, or the system's roots.
fn connector(root_cert: Option<&str>) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = match root_cert {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .map_err(|e| format!("sslrootcert {path}: {e}"))?,
        None => rustls_native_certs::load_native_certs().certs,
    };
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(match root_cert {
            Some(path) => format!("sslrootcert {path} holds no usable certificate"),
            None => "no system root certificates found; set sslrootcert".into(),
        });
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_are_taken_out_of_the_url() {
        let (url, transport) =
            take_tls_params("postgresql://u:p@h/db?sslmode=disable&application_name=x").unwrap();
        assert_eq!(url, "postgresql://u:p@h/db?application_name=x");
        assert!(matches!(transport, Transport::Plain));
        let (url, transport) = take_tls_params("postgresql://u:p@h/db").unwrap();
        assert_eq!(url, "postgresql://u:p@h/db");
        assert!(matches!(transport, Transport::Plain));
    }

    #[test]
    fn bad_tls_settings_are_named() {
        assert_eq!(
            take_tls_params("postgresql://h/db?sslmode=sometimes")
                .err()
                .unwrap(),
            "sslmode \"sometimes\" is not one of disable, allow, prefer, require, verify-ca, verify-full"
        );
        assert_eq!(
            take_tls_params("postgresql://h/db?sslrootcert=/x.pem")
                .err()
                .unwrap(),
            "sslrootcert needs sslmode=require, verify-ca or verify-full"
        );
        let err =
            take_tls_params("postgresql://h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem")
                .err()
                .unwrap();
        assert!(err.starts_with("sslrootcert /nonexistent.pem: "), "{err}");
    }
}
