//! `pgwarden rds token` as the real binary: credentials from the environment or a profile, a
//! fixed `--signing-time`, and the output compared with tokens botocore made
//! (`crates/pgwarden-aws/tests/vectors/rds_tokens.json`).

use std::path::Path;
use std::process::Command;

/// One botocore vector by name, as JSON.
fn vector(name: &str) -> serde_json::Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../pgwarden-aws/tests/vectors/rds_tokens.json"
    );
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vector| vector["name"] == name)
        .unwrap_or_else(|| panic!("no vector {name:?}"))
        .clone()
}

/// Runs `pgwarden` with only `env` (and HOME = `home`) in its environment.
fn pgwarden(args: &[&str], home: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(args)
        .env_clear()
        .env("HOME", home)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The `rds token` arguments for a vector.
fn token_args(vector: &serde_json::Value) -> Vec<String> {
    let text = |key: &str| vector[key].as_str().unwrap().to_string();
    vec![
        "rds".into(),
        "token".into(),
        "--hostname".into(),
        text("hostname"),
        "--port".into(),
        vector["port"].to_string(),
        "--username".into(),
        text("username"),
        "--region".into(),
        text("region"),
        "--signing-time".into(),
        text("signing_time"),
    ]
}

#[test]
fn prints_botocores_token_from_environment_credentials() {
    let home = tempfile::tempdir().unwrap();
    for name in ["session-token", "user-needs-encoding", "non-default-port"] {
        let vector = vector(name);
        let args = token_args(&vector);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut env = vec![
            (
                "AWS_ACCESS_KEY_ID",
                vector["access_key_id"].as_str().unwrap(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY",
                vector["secret_access_key"].as_str().unwrap(),
            ),
        ];
        if let Some(token) = vector["session_token"].as_str() {
            env.push(("AWS_SESSION_TOKEN", token));
        }
        let expected = format!("{}\n", vector["token"].as_str().unwrap());
        assert_eq!(
            pgwarden(&args, home.path(), &env),
            (0, expected, String::new()),
            "vector {name}"
        );
    }
}

#[test]
fn region_and_credentials_from_a_profile() {
    let vector = vector("plain");
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!(
            "[db]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            vector["access_key_id"].as_str().unwrap(),
            vector["secret_access_key"].as_str().unwrap()
        ),
    )
    .unwrap();
    std::fs::write(
        home.path().join(".aws/config"),
        format!(
            "[profile db]\nregion = {}\n",
            vector["region"].as_str().unwrap()
        ),
    )
    .unwrap();
    let mut args = token_args(&vector);
    let region = args.iter().position(|arg| arg == "--region").unwrap();
    args.drain(region..region + 2);
    args.extend(["--profile".to_string(), "db".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // --profile wins over the environment's keys, as in the AWS CLI.
    let env = [
        ("AWS_ACCESS_KEY_ID", "AKIAIGNORED"),
        ("AWS_SECRET_ACCESS_KEY", "ignored"),
    ];
    let expected = format!("{}\n", vector["token"].as_str().unwrap());
    assert_eq!(
        pgwarden(&args, home.path(), &env),
        (0, expected, String::new())
    );
}

#[test]
fn one_line_errors() {
    let home = tempfile::tempdir().unwrap();
    let base = [
        "rds",
        "token",
        "--hostname",
        "db.example.com",
        "--port",
        "5432",
        "--username",
        "app",
    ];

    let with_region: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--region", "eu-west-1"])
        .collect();
    let (code, out, err) = pgwarden(&with_region, home.path(), &[]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: no AWS credentials found; tried environment"),
        "{err}"
    );
    assert!(err.contains("web identity (AWS_ROLE_ARN"), "{err}");
    assert!(err.contains("profile \"default\""), "{err}");

    let (code, _, err) = pgwarden(&base, home.path(), &[]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("error: no AWS region: pass --region"),
        "{err}"
    );

    let bad_time: Vec<&str> = with_region
        .iter()
        .copied()
        .chain(["--signing-time", "yesterday"])
        .collect();
    let (code, _, err) = pgwarden(&bad_time, home.path(), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("not an RFC 3339 time"), "{err}");
}
