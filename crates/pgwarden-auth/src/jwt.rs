//! Signature and standard-claim checks of a JWT against a [`Jwks`].

use crate::{AuthError, Check, Jwks};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde_json::{Map, Value};

/// Asymmetric algorithms accepted; `none` and shared-secret HMAC never are.
const ACCEPTED: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::PS256,
];

/// What a token's standard claims must say.
#[derive(Debug, Clone, Default)]
pub struct JwtRules {
    /// Accepted `iss` values; empty accepts any.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (any one suffices); empty skips the check.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Whether a token without `exp` is refused.
    pub require_exp: bool,
}

/// Strings of a claim that is a string or a list of strings.
pub(crate) fn claim_strings(claims: &Map<String, Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// The verified claims of `token`.
pub async fn verify(
    jwks: &Jwks,
    token: &str,
    rules: &JwtRules,
) -> Result<Map<String, Value>, AuthError> {
    let header = decode_header(token).map_err(|e| {
        AuthError::rejected(
            Check::Malformed,
            format!("the token is not a valid JWT: {e}"),
        )
    })?;
    if !ACCEPTED.contains(&header.alg) {
        return Err(AuthError::rejected(
            Check::Malformed,
            format!("the token's algorithm {:?} is not accepted", header.alg),
        ));
    }
    if let Some(critical) = &header.crit {
        // RFC 7515: a header parameter marked critical that is not understood makes the
        // token invalid, and pgwarden understands none.
        return Err(AuthError::rejected(
            Check::Malformed,
            format!(
                "the token marks header parameters {critical:?} critical, which pgwarden does not understand"
            ),
        ));
    }
    let key = jwks.key(header.kid.as_deref(), header.alg).await?;
    let mut validation = Validation::new(header.alg);
    validation.leeway = rules.leeway_secs;
    validation.validate_nbf = true;
    // A claim that is checked must be present: a token without it fails, never skips the check.
    validation.required_spec_claims.clear();
    if rules.require_exp {
        validation.required_spec_claims.insert("exp".into());
    }
    if !rules.issuers.is_empty() {
        validation.set_issuer(&rules.issuers);
        validation.required_spec_claims.insert("iss".into());
    }
    if rules.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&rules.audiences);
        validation.required_spec_claims.insert("aud".into());
    }
    let claims = decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(|e| {
            let (check, detail) = match e.kind() {
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => (
                    Check::Signature,
                    "the token's signature does not verify".to_string(),
                ),
                ErrorKind::ExpiredSignature => {
                    (Check::Expired, "the token has expired".to_string())
                }
                ErrorKind::ImmatureSignature => (
                    Check::NotYetValid,
                    "the token is not valid yet (nbf)".to_string(),
                ),
                ErrorKind::InvalidIssuer => (
                    Check::Issuer,
                    format!(
                        "the token's issuer is not accepted (accepted: {:?})",
                        rules.issuers
                    ),
                ),
                ErrorKind::InvalidAudience => (
                    Check::Audience,
                    format!(
                        "the token's audience is not accepted (accepted: {:?})",
                        rules.audiences
                    ),
                ),
                ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                    "iss" => (
                        Check::Issuer,
                        format!(
                            "the token has no issuer (iss); accepted: {:?}",
                            rules.issuers
                        ),
                    ),
                    "aud" => (
                        Check::Audience,
                        format!(
                            "the token has no audience (aud); accepted: {:?}",
                            rules.audiences
                        ),
                    ),
                    "exp" => (Check::Expired, "the token has no expiry (exp)".to_string()),
                    other => (
                        Check::Malformed,
                        format!("the token has no {other:?} claim"),
                    ),
                },
                other => (
                    Check::Malformed,
                    format!("the token cannot be read: {other:?}"),
                ),
            };
            AuthError::rejected(check, detail)
        })?
        .claims;
    issued_in_the_past(&claims, rules.leeway_secs)?;
    Ok(claims)
}

/// Refuses a token whose `iat` is not a number, or later than now (give or take `leeway`
/// seconds): a token from the future was not issued by a working issuer.
fn issued_in_the_past(claims: &Map<String, Value>, leeway: u64) -> Result<(), AuthError> {
    let Some(iat) = claims.get("iat") else {
        return Ok(());
    };
    let Some(iat) = iat.as_f64() else {
        return Err(AuthError::rejected(
            Check::Malformed,
            "the token's iat is not a number",
        ));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if iat > now + leeway as f64 {
        return Err(AuthError::rejected(
            Check::NotYetValid,
            "the token was issued in the future (iat)",
        ));
    }
    Ok(())
}
