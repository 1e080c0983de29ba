//! Without AWS credentials an RDS token cannot be made: the agent stops with one line naming
//! the credential and the cause, and writes no file.

#[test]
fn without_aws_credentials_the_agent_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // SAFETY: this test binary runs this one test, and nothing else runs yet.
    unsafe {
        for name in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
        ] {
            std::env::remove_var(name);
        }
        std::env::set_var("AWS_CONFIG_FILE", d.join("no-config"));
        std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", d.join("no-credentials"));
    }
    let config = d.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "credentials:\n  - {{ rds: {{ hostname: h, username: u, region: eu-west-1 }}, files: [{{ path: {}/rds.env, format: env }}] }}\n",
            d.display()
        ),
    )
    .unwrap();
    let agent = pgwarden_agent::AgentConfig::load(&config).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let error = runtime
        .block_on(pgwarden_agent::run(
            agent,
            pgwarden_agent::Mode::Once,
            std::future::pending(),
        ))
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("rds:u@h:5432: cannot make the RDS token: no AWS credentials found"),
        "{error}"
    );
    assert!(!d.join("rds.env").exists());
}
