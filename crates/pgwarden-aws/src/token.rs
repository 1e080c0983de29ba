//! The RDS IAM auth token: a SigV4 presigned `GET https://<host>:<port>/?Action=connect&DBUser=…`
//! for service `rds-db`, valid 900 seconds, returned without its scheme.
//!
//! `aws-sigv4` computes the signature. The URL around it is written here in botocore's exact
//! form: the operation parameters first (`Action`, then `DBUser`), then `X-Amz-Algorithm`,
//! `-Credential`, `-Date`, `-Expires`, `-SignedHeaders`, `-Security-Token` (when the
//! credentials carry one) and `-Signature` last, every value encoded with RFC 3986's unreserved
//! set, as botocore's `percent_encode_sequence` does.

use crate::{Credentials, Error};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::borrow::Cow;
use std::time::{Duration, SystemTime};

/// How long an RDS token is valid, in seconds (`X-Amz-Expires`), as botocore fixes it.
pub const TOKEN_LIFETIME_SECONDS: u64 = 900;

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - _ . ~`) is encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The RDS auth token (the password) for `username` at `hostname:port` in `region`, signed at
/// `signing_time`: byte-for-byte what botocore's `generate_db_auth_token` returns for the same
/// inputs and clock.
pub fn rds_auth_token(
    hostname: &str,
    port: u16,
    username: &str,
    region: &str,
    credentials: &Credentials,
    signing_time: SystemTime,
) -> Result<String, Error> {
    let failed = |reason: String| Error::Signing {
        hostname: hostname.to_string(),
        port,
        reason,
    };
    if hostname.is_empty()
        || hostname
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/?#@%".contains(c))
    {
        return Err(failed(
            "the host name must be a DNS name or IP address, without scheme, port or path".into(),
        ));
    }
    let operation = format!("Action=connect&DBUser={}", encode(username));
    let url = format!("https://{hostname}:{port}/?{operation}");
    // botocore signs `host` as the lower-cased host name, with the port unless it is https's
    // default (the token itself keeps the name as given).
    let host = if port == 443 {
        hostname.to_ascii_lowercase()
    } else {
        format!("{}:{port}", hostname.to_ascii_lowercase())
    };

    let mut settings = aws_sigv4::http_request::SigningSettings::default();
    settings.signature_location = aws_sigv4::http_request::SignatureLocation::QueryParams;
    settings.expires_in = Some(Duration::from_secs(TOKEN_LIFETIME_SECONDS));
    let identity = credentials.to_sdk().into();
    let params: aws_sigv4::http_request::SigningParams<'_> =
        aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(region)
            .name("rds-db")
            .time(signing_time)
            .settings(settings)
            .build()
            .map_err(|e| failed(e.to_string()))?
            .into();
    let request = aws_sigv4::http_request::SignableRequest::new(
        "GET",
        url.as_str(),
        std::iter::once(("host", host.as_str())),
        aws_sigv4::http_request::SignableBody::Bytes(&[]),
    )
    .map_err(|e| failed(e.to_string()))?;
    let (instructions, _signature) = aws_sigv4::http_request::sign(request, &params)
        .map_err(|e| failed(e.to_string()))?
        .into_parts();
    let (_headers, signed) = instructions.into_parts();

    let mut token = format!("{hostname}:{port}/?{operation}");
    for name in [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Security-Token",
        "X-Amz-Signature",
    ] {
        let value = signed.iter().find(|(key, _)| *key == name).map(|(_, v)| v);
        match (name, value) {
            ("X-Amz-Security-Token", None) => {}
            (_, None) => return Err(failed(format!("aws-sigv4 returned no {name}"))),
            (_, Some(value)) => {
                token.push('&');
                token.push_str(name);
                token.push('=');
                token.push_str(&encode(value));
            }
        }
    }
    Ok(token)
}

/// One query value, encoded as botocore's `percent_encode` does (UTF-8, unreserved kept).
fn encode(value: &str) -> Cow<'_, str> {
    utf8_percent_encode(value, QUERY_VALUE).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_botocore() {
        assert_eq!(
            encode("user@name/with+chars ü"),
            "user%40name%2Fwith%2Bchars%20%C3%BC"
        );
        assert_eq!(encode("a-b_c.d~e*f"), "a-b_c.d~e%2Af");
    }

    #[test]
    fn refuses_what_is_not_a_host_name() {
        let credentials = Credentials::new("AKID", secrecy::SecretString::from("s"), None);
        for host in ["", "bad host", "https://db", "db/path", "user@db"] {
            let error = rds_auth_token(
                host,
                5432,
                "u",
                "us-east-1",
                &credentials,
                SystemTime::now(),
            )
            .expect_err(host)
            .to_string();
            assert!(
                error.contains("must be a DNS name or IP address"),
                "{error}"
            );
        }
    }
}
