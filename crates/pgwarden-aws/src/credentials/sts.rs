//! STS `AssumeRoleWithWebIdentity` over HTTPS: an unsigned form POST (the token is the
//! authentication) and its XML answer. The endpoint is AWS_ENDPOINT_URL_STS, else
//! AWS_ENDPOINT_URL, else the regional one for AWS_REGION / AWS_DEFAULT_REGION, else the
//! global `https://sts.amazonaws.com`.

use super::{Credentials, Env};
use crate::Error;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use quick_xml::events::Event;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Form values keep RFC 3986's unreserved characters only.
const FORM_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The HTTP client for STS: short timeouts, so a dead endpoint fails fast.
pub(super) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap_or_default()
}

/// The STS endpoint `env` selects.
pub(super) fn endpoint(env: &Env) -> String {
    if let Some(url) = env
        .get("AWS_ENDPOINT_URL_STS")
        .or_else(|| env.get("AWS_ENDPOINT_URL"))
    {
        return url.trim_end_matches('/').to_string();
    }
    match env
        .get("AWS_REGION")
        .or_else(|| env.get("AWS_DEFAULT_REGION"))
    {
        Some(region) if region.starts_with("cn-") => {
            format!("https://sts.{region}.amazonaws.com.cn")
        }
        Some(region) => format!("https://sts.{region}.amazonaws.com"),
        None => "https://sts.amazonaws.com".to_string(),
    }
}

/// Exchanges the web identity `token` for temporary credentials of `role_arn`.
pub(super) async fn assume_role_with_web_identity(
    http: &reqwest::Client,
    endpoint: &str,
    role_arn: &str,
    session_name: &str,
    token: &SecretString,
) -> Result<Credentials, Error> {
    let failed = |reason: String, source: Option<reqwest::Error>| Error::Sts {
        endpoint: endpoint.to_string(),
        reason,
        source,
    };
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn),
        ("RoleSessionName", session_name),
        ("WebIdentityToken", token.expose_secret()),
    ];
    let body = SecretString::from(
        form.iter()
            .map(|(name, value)| format!("{name}={}", utf8_percent_encode(value, FORM_VALUE)))
            .collect::<Vec<_>>()
            .join("&"),
    );
    let response = http
        .post(format!("{endpoint}/"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body.expose_secret().to_string())
        .send()
        .await
        .map_err(|e| failed("request failed".into(), Some(e.without_url())))?;
    let status = response.status();
    let text = response
        .text()
        .await
        .map_err(|e| failed("reading the answer failed".into(), Some(e.without_url())))?;
    if !status.is_success() {
        let fields = leaves(&text, &["Code", "Message"]).unwrap_or_default();
        return Err(Error::StsRejected {
            role_arn: role_arn.to_string(),
            status: status.as_u16(),
            code: fields
                .get("Code")
                .cloned()
                .unwrap_or_else(|| "unknown".into()),
            message: fields
                .get("Message")
                .cloned()
                .unwrap_or_else(|| "no message".into()),
        });
    }
    parse_credentials(&text).map_err(|reason| failed(reason, None))
}

/// The credentials of a successful answer.
fn parse_credentials(xml: &str) -> Result<Credentials, String> {
    let mut fields = leaves(
        xml,
        &[
            "AccessKeyId",
            "SecretAccessKey",
            "SessionToken",
            "Expiration",
        ],
    )?;
    let mut take = |name: &str| {
        fields
            .remove(name)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| format!("the answer has no {name}"))
    };
    let access_key_id = take("AccessKeyId")?;
    let secret_access_key = SecretString::from(take("SecretAccessKey")?);
    let session_token = SecretString::from(take("SessionToken")?);
    let expiration = take("Expiration")?;
    let expires_at =
        time::OffsetDateTime::parse(&expiration, &time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("Expiration {expiration:?} is not an RFC 3339 time: {e}"))?;
    Ok(
        Credentials::new(access_key_id, secret_access_key, Some(session_token))
            .expiring(SystemTime::from(expires_at)),
    )
}

/// The text of every element named in `wanted` (by local name; the last one wins), with
/// entity references resolved.
fn leaves(xml: &str, wanted: &[&str]) -> Result<HashMap<String, String>, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut found = HashMap::new();
    let mut current: Option<String> = None;
    let broken = |e: &dyn std::fmt::Display| format!("the answer is not valid XML: {e}");
    loop {
        match reader.read_event().map_err(|e| broken(&e))? {
            Event::Start(element) => {
                let name = String::from_utf8_lossy(element.local_name().as_ref()).into_owned();
                current = wanted.contains(&name.as_str()).then(|| {
                    found.insert(name.clone(), String::new());
                    name
                });
            }
            Event::End(_) => current = None,
            Event::Text(text) => {
                if let Some(value) = current.as_ref().and_then(|name| found.get_mut(name)) {
                    value.push_str(&text.xml_content().map_err(|e| broken(&e))?);
                }
            }
            Event::CData(text) => {
                if let Some(value) = current.as_ref().and_then(|name| found.get_mut(name)) {
                    value.push_str(&text.decode().map_err(|e| broken(&e))?);
                }
            }
            Event::GeneralRef(reference) => {
                if let Some(value) = current.as_ref().and_then(|name| found.get_mut(name)) {
                    let resolved = match reference.resolve_char_ref().map_err(|e| broken(&e))? {
                        Some(character) => character.to_string(),
                        None => {
                            let name = reference.decode().map_err(|e| broken(&e))?;
                            quick_xml::escape::resolve_predefined_entity(&name)
                                .ok_or_else(|| format!("unknown XML entity &{name};"))?
                                .to_string()
                        }
                    };
                    value.push_str(&resolved);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(found
        .into_iter()
        .map(|(name, value)| (name, value.trim().to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:demo:app</SubjectFromWebIdentityToken>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/app/s</Arn>
      <AssumedRoleId>AROA:s</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <SessionToken>FwoG+token/with=chars&amp;more</SessionToken>
      <SecretAccessKey>wJalr/secret+key</SecretAccessKey>
      <Expiration>2026-11-25T13:00:00Z</Expiration>
      <AccessKeyId>ASIAEXAMPLE</AccessKeyId>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
</AssumeRoleWithWebIdentityResponse>"#;

    #[test]
    fn parses_the_credentials() {
        let credentials = parse_credentials(ANSWER).expect("parsed");
        assert_eq!(credentials.access_key_id(), "ASIAEXAMPLE");
        assert_eq!(
            credentials.secret_access_key().expose_secret(),
            "wJalr/secret+key"
        );
        assert_eq!(
            credentials.session_token().map(|t| t.expose_secret()),
            Some("FwoG+token/with=chars&more")
        );
        let expected = time::macros::datetime!(2026-11-25 13:00:00 UTC);
        assert_eq!(credentials.expires_at(), Some(SystemTime::from(expected)));
    }

    #[test]
    fn names_a_missing_field() {
        let error = parse_credentials("<x><AccessKeyId>A</AccessKeyId></x>").expect_err("bad");
        assert_eq!(error, "the answer has no SecretAccessKey");
    }

    #[test]
    fn reads_an_error_answer() {
        let xml = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>\
                   <Message>Token &quot;sub&quot; mismatch &#x26; more</Message></Error></ErrorResponse>";
        let fields = leaves(xml, &["Code", "Message"]).expect("parsed");
        assert_eq!(fields["Code"], "InvalidIdentityToken");
        assert_eq!(fields["Message"], "Token \"sub\" mismatch & more");
    }

    #[test]
    fn endpoint_choice() {
        assert_eq!(endpoint(&Env::default()), "https://sts.amazonaws.com");
        let env = Env::from_pairs([("AWS_REGION", "eu-west-1")]);
        assert_eq!(endpoint(&env), "https://sts.eu-west-1.amazonaws.com");
        let env = Env::from_pairs([("AWS_DEFAULT_REGION", "cn-north-1")]);
        assert_eq!(endpoint(&env), "https://sts.cn-north-1.amazonaws.com.cn");
        let env = Env::from_pairs([
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", "http://localhost:5000/"),
        ]);
        assert_eq!(endpoint(&env), "http://localhost:5000");
        let env = Env::from_pairs([
            ("AWS_ENDPOINT_URL", "http://localhost:5000"),
            ("AWS_ENDPOINT_URL_STS", "http://localhost:6000"),
        ]);
        assert_eq!(endpoint(&env), "http://localhost:6000");
    }
}
