//! The offline policy commands, run as the real binary.

use std::process::Command;

fn pgwarden(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const POLICY: &str = r#"grants:
  - subjects: ["system:serviceaccount:team-a:*", "group:team-a"]
    roles: ["database/appdb-user", "database/appdb-readonly"]
    max_ttl: 8h
  - subjects: ["group:dba"]
    roles: ["database/*"]
"#;

#[test]
fn policy_check_and_explain() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, POLICY).unwrap();
    let good = good.to_str().unwrap();
    assert_eq!(
        pgwarden(&["policy", "check", good]),
        (0, format!("{good}: valid, 2 grant(s)\n"), String::new())
    );

    let (code, out, _) = pgwarden(&[
        "policy",
        "explain",
        "--policy",
        good,
        "--subject",
        "system:serviceaccount:team-a:app",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        out,
        "database/appdb-user\tgrant 1 (system:serviceaccount:team-a:app, max_ttl 28800s)\n\
         database/appdb-readonly\tgrant 1 (system:serviceaccount:team-a:app, max_ttl 28800s)\n"
    );
    let (_, out, _) = pgwarden(&[
        "policy",
        "explain",
        "--policy",
        good,
        "--subject",
        "user:kari",
        "--subject",
        "group:dba",
    ]);
    assert_eq!(out, "database/*\tgrant 2 (group:dba, role's own max TTL)\n");
    let (_, out, _) = pgwarden(&[
        "policy",
        "explain",
        "--policy",
        good,
        "--subject",
        "system:serviceaccount:team-b:app",
    ]);
    assert_eq!(
        out,
        "nothing: no grant names system:serviceaccount:team-b:app\n"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "grants:\n  - subjects: [\"group:dba\"]\n    roles: [\"database/*\"]\n    max_tll: 8h\n",
    )
    .unwrap();
    let (code, out, err) = pgwarden(&["policy", "check", bad.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with(&format!("error: policy file {}: ", bad.display())),
        "{err}"
    );
    assert!(err.contains("max_tll") && err.contains("line 4"), "{err}");

    let config = dir.path().join("pgwarden.yaml");
    std::fs::write(&config, format!("policy_file: \"{good}\"\n")).unwrap();
    let (code, out, _) = pgwarden(&[
        "policy",
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--subject",
        "group:dba",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "database/*\tgrant 2 (group:dba, role's own max TTL)\n")
    );
    let (code, _, err) = pgwarden(&["policy", "explain", "--subject", "group:dba"]);
    assert_eq!(code, 2);
    assert!(err.contains("--policy <POLICY>"), "{err}");
}
