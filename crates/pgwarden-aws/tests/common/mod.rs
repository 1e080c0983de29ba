//! moto_server for the tests that need real AWS protocol answers (STS, IAM): found through
//! PGWARDEN_MOTO_SERVER, the workspace's `.venv/bin` (which scripts/test creates),
//! /tmp/aws-venv/bin or PATH; without it the tests print SKIPPED and pass, unless
//! PGWARDEN_REQUIRE_MOTO is set.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto_server, stopped on drop.
pub struct Moto {
    child: Child,
    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PGWARDEN_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let workspace_venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/moto_server");
    let scratch_venv = PathBuf::from("/tmp/aws-venv/bin/moto_server");
    if let Some(found) = [workspace_venv, scratch_venv]
        .into_iter()
        .find(|p| p.is_file())
    {
        return Some(found);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("moto_server"))
        .find(|candidate| candidate.is_file())
}

/// Starts moto on a free port, or `None` (after printing SKIPPED) when it is not installed.
pub async fn start_moto(test: &str) -> Option<Moto> {
    let Some(binary) = moto_binary() else {
        assert!(
            std::env::var_os("PGWARDEN_REQUIRE_MOTO").is_none(),
            "PGWARDEN_REQUIRE_MOTO is set but moto_server was not found: pip install \
             'moto[server]' and put moto_server on PATH or in PGWARDEN_MOTO_SERVER"
        );
        eprintln!("SKIPPED {test}: moto_server not found (pip install 'moto[server]')");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
    let mut moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::new();
    loop {
        let ready = http
            .get(format!("{}/moto-api/", moto.url))
            .send()
            .await
            .is_ok_and(|response| response.status().is_success());
        if ready {
            return Some(moto);
        }
        if let Ok(Some(status)) = moto.child.try_wait() {
            panic!(
                "{} exited with {status} (a shim without moto installed?); set \
                 PGWARDEN_MOTO_SERVER to a working moto_server",
                binary.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "moto_server did not start in 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
