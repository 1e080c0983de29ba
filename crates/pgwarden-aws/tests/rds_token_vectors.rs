//! Every token in `vectors/rds_tokens.json` (made by botocore's `generate_db_auth_token` with a
//! frozen clock, see `vectors/make_vectors.py`) is reproduced byte for byte.

use pgwarden_aws::{Credentials, rds_auth_token};
use secrecy::SecretString;
use serde::Deserialize;
use std::time::SystemTime;

#[derive(Deserialize)]
struct File {
    generator: String,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    hostname: String,
    port: u16,
    username: String,
    region: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    signing_time: String,
    token: String,
}

fn vectors() -> File {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/rds_tokens.json");
    let text = std::fs::read_to_string(path).expect("read rds_tokens.json");
    serde_json::from_str(&text).expect("parse rds_tokens.json")
}

#[test]
fn matches_botocore_byte_for_byte() {
    let file = vectors();
    assert!(
        file.generator.starts_with("botocore "),
        "{}",
        file.generator
    );
    assert!(file.vectors.len() >= 8, "too few vectors");
    for vector in &file.vectors {
        let credentials = Credentials::new(
            vector.access_key_id.clone(),
            SecretString::from(vector.secret_access_key.clone()),
            vector.session_token.clone().map(SecretString::from),
        );
        let time = time::OffsetDateTime::parse(
            &vector.signing_time,
            &time::format_description::well_known::Rfc3339,
        )
        .expect("signing_time");
        let token = rds_auth_token(
            &vector.hostname,
            vector.port,
            &vector.username,
            &vector.region,
            &credentials,
            SystemTime::from(time),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", vector.name));
        assert_eq!(token, vector.token, "vector {:?}", vector.name);
    }
}

#[test]
fn the_vectors_cover_what_matters() {
    let file = vectors();
    let any = |check: &dyn Fn(&Vector) -> bool| file.vectors.iter().any(check);
    assert!(any(&|v| v.session_token.is_some()), "a session token");
    assert!(any(&|v| v.session_token.is_none()), "no session token");
    assert!(
        any(&|v| v.username.contains(['@', '/', '+', ' '])),
        "a user name to encode"
    );
    assert!(any(&|v| !v.username.is_ascii()), "a non-ASCII user name");
    assert!(any(&|v| v.port != 5432), "a non-default port");
    assert!(any(&|v| v.port == 443), "https's default port");
    assert!(any(&|v| v.region != "us-east-1"), "another region");
    assert!(
        any(&|v| v.hostname.chars().any(|c| c.is_ascii_uppercase())),
        "a mixed-case host"
    );
}
