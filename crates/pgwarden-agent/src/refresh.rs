//! Credentials the agent refreshes on its own clock rather than by renewing a lease: RDS IAM
//! tokens (signed anew every `refresh`) and static roles' passwords (read again when their
//! rotation is due). One loop serves both: refresh when due, rewrite the files and fire
//! `on_change` when the credential changed, retry failures with capped exponential backoff
//! while the last files stay.

use crate::config::Delivery;
use crate::files::{render, write_atomically};
use crate::health::{Slot, Status};
use crate::on_change::fire;
use crate::run::AgentError;
use pgwarden_client::Credential;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// First wait before retrying a failed refresh; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one refresh found.
pub(crate) struct Refreshed {
    /// The credential now.
    pub credential: Credential,
    /// Until when it works.
    pub expires_at: Instant,
    /// When to refresh next.
    pub next_at: Instant,
    /// Whether it differs from the one in the files.
    pub changed: bool,
    /// What tells this credential from the next (a static role's rotation time), recorded
    /// once its files are written.
    pub version: Option<String>,
}

/// A credential refreshed on its own clock.
pub(crate) trait Refresher: Send + Sync + 'static {
    /// The credential's path and files.
    fn delivery(&self) -> &Delivery;

    /// Gets the credential now.
    fn refresh(&self) -> impl Future<Output = Result<Refreshed, AgentError>> + Send;

    /// Records that the files hold the credential of `version`.
    fn written(&self, _version: Option<String>) {}
}

/// Refreshes once and writes the files if the credential changed (or `force`); returns what
/// was found.
pub(crate) async fn refresh_and_write<R: Refresher>(
    refresher: &R,
    force: bool,
) -> Result<Refreshed, AgentError> {
    let refreshed = refresher.refresh().await?;
    if refreshed.changed || force {
        let delivery = refresher.delivery();
        for file in &delivery.files {
            write_atomically(&file.path, &render(file, &refreshed.credential)?)?;
        }
        tracing::info!(path = %delivery.path, files = delivery.files.len(), "credential files written");
        refresher.written(refreshed.version.clone());
    }
    Ok(refreshed)
}

/// The health slot of `delivery` valid until `expires_at`.
pub(crate) fn slot(delivery: &Delivery, expires_at: Instant) -> Slot {
    Slot {
        path: delivery.path.clone(),
        lease_id: String::new(),
        expires_at,
    }
}

/// Keeps `refresher`'s files fresh from `first` on, until aborted.
pub(crate) async fn keep<R: Refresher>(refresher: Arc<R>, status: Arc<Status>, first: Refreshed) {
    let (mut next_at, mut expires_at) = (first.next_at, first.expires_at);
    loop {
        tokio::time::sleep_until(next_at).await;
        let mut attempt = 0;
        loop {
            match refresh_and_write(refresher.as_ref(), false).await {
                Ok(refreshed) => {
                    (next_at, expires_at) = (refreshed.next_at, refreshed.expires_at);
                    status.set(slot(refresher.delivery(), expires_at));
                    if refreshed.changed
                        && let Some(action) = &refresher.delivery().on_change
                    {
                        fire(action).await;
                    }
                    break;
                }
                Err(error) => {
                    attempt += 1;
                    let wait = pgwarden_core::backoff(attempt, FIRST_BACKOFF, MAX_BACKOFF);
                    tracing::warn!(path = %refresher.delivery().path, %error, valid_for_s = expires_at.saturating_duration_since(Instant::now()).as_secs(), retry_in_ms = wait.as_millis() as u64, "refreshing the credential failed; the previous files stay");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Source;
    use crate::files::{Format, Output, OutputFile};
    use secrecy::SecretString;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails its second and third refreshes, then succeeds; every success is a new password
    /// `p<n>` (n counting successes).
    struct Flaky {
        delivery: Delivery,
        calls: AtomicUsize,
        successes: AtomicUsize,
    }

    impl Refresher for Flaky {
        fn delivery(&self) -> &Delivery {
            &self.delivery
        }

        async fn refresh(&self) -> Result<Refreshed, AgentError> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call == 1 || call == 2 {
                return Err(AgentError::from(format!("refresh {call} failed")));
            }
            let n = self.successes.fetch_add(1, Ordering::SeqCst);
            let now = Instant::now();
            Ok(Refreshed {
                credential: Credential {
                    lease_id: String::new(),
                    lease_duration: Duration::from_secs(60),
                    username: "app".into(),
                    password: SecretString::from(format!("p{n}")),
                    host: "db".into(),
                    port: 5432,
                    database: "appdb".into(),
                    hosts: Vec::new(),
                },
                expires_at: now + Duration::from_secs(60),
                next_at: now + Duration::from_secs(10),
                changed: true,
                version: Some(n.to_string()),
            })
        }
    }

    fn password_in(file: &std::path::Path) -> String {
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("PGPASSWORD=").map(str::to_string))
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn failed_refreshes_after_the_first_write_keep_the_files_then_replace_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.env");
        let flaky = Flaky {
            delivery: Delivery {
                path: "database/static-creds/app".into(),
                source: Source::Static,
                files: vec![OutputFile {
                    path: file.clone(),
                    output: Output::Format(Format::Env),
                }],
                on_change: None,
            },
            calls: AtomicUsize::new(0),
            successes: AtomicUsize::new(0),
        };
        let first = refresh_and_write(&flaky, true).await.unwrap();
        assert_eq!(password_in(&file), "p0");
        let flaky = Arc::new(flaky);
        let status = Arc::new(Status::default());
        let task = tokio::spawn(keep(flaky.clone(), status, first));
        // The refresh due at 10 s fails, and its retries 1 s later; meanwhile the files stay.
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
        assert_eq!(
            password_in(&file),
            "p0",
            "a failed refresh keeps the last files"
        );
        // The retries back off (1 to 1.5 s, then 2 to 3 s, with jitter) and the third attempt
        // replaces the files.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);
        assert_eq!(password_in(&file), "p1");
        task.abort();
    }
}
