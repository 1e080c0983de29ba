//! The policy in force, loaded from its file and reloaded when the file changes. A broken file
//! is rejected with its line and reason, and the previous policy stays in force.

use arc_swap::ArcSwap;
use pgwarden_core::Policy;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How often the policy file is checked for changes.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why a policy cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file cannot be read.
    #[error("policy file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is malformed or has unknown fields (the message names the line).
    #[error("{}{source}", in_file(path))]
    Yaml {
        /// The file, when read from one.
        path: Option<String>,
        /// The parser's error.
        source: Box<serde_saphyr::Error>,
    },
    /// A grant is invalid.
    #[error("{}{source}", in_file(path))]
    Grant {
        /// The file, when read from one.
        path: Option<String>,
        /// What is wrong.
        source: pgwarden_core::CoreError,
    },
}

fn in_file(path: &Option<String>) -> String {
    path.as_ref()
        .map(|path| format!("policy file {path}: "))
        .unwrap_or_default()
}

impl PolicyError {
    /// The same error, naming the file it came from.
    fn in_file(self, file: &Path) -> PolicyError {
        let path = Some(file.display().to_string());
        match self {
            PolicyError::Yaml { source, .. } => PolicyError::Yaml { path, source },
            PolicyError::Grant { source, .. } => PolicyError::Grant { path, source },
            read @ PolicyError::Read { .. } => read,
        }
    }
}

/// Reads, parses and validates a policy file; the error names the file, line and reason.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|e| e.in_file(path))
}

/// Parses and validates policy YAML.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    let policy: Policy = if text.trim().is_empty() {
        Policy::default()
    } else {
        serde_saphyr::from_str(text).map_err(|source| PolicyError::Yaml {
            path: None,
            source: Box::new(source),
        })?
    };
    policy
        .validate()
        .map_err(|source| PolicyError::Grant { path: None, source })?;
    Ok(policy)
}

/// The policy in force.
pub struct PolicyHolder {
    current: ArcSwap<Policy>,
    path: Option<PathBuf>,
}

impl PolicyHolder {
    /// Loads the policy at `path` (none: an empty policy that grants nothing).
    pub fn load(path: Option<&Path>) -> Result<PolicyHolder, PolicyError> {
        let policy = path.map(load).transpose()?.unwrap_or_default();
        Ok(PolicyHolder {
            current: ArcSwap::from_pointee(policy),
            path: path.map(Path::to_path_buf),
        })
    }

    /// The policy in force now.
    pub fn get(&self) -> Arc<Policy> {
        self.current.load_full()
    }

    /// Re-reads the file when its contents change, until `shutdown` turns true; `on_reload`
    /// is told how each reload went: the number of grants now in force, or why the file was
    /// rejected.
    pub async fn watch(
        self: Arc<Self>,
        mut shutdown: watch::Receiver<bool>,
        on_reload: impl Fn(Result<usize, &PolicyError>) + Send,
    ) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let mut last_text = std::fs::read_to_string(&path).ok();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(RELOAD_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(text) => text,
                Err(error) => {
                    tracing::error!(path = %path.display(), %error, "policy file unreadable; the previous policy stays in force");
                    continue;
                }
            };
            if last_text.as_deref() == Some(text.as_str()) {
                continue;
            }
            match parse(&text) {
                Ok(policy) => {
                    let grants = policy.grants.len();
                    tracing::info!(path = %path.display(), grants, "policy reloaded");
                    self.current.store(Arc::new(policy));
                    on_reload(Ok(grants));
                }
                Err(reason) => {
                    tracing::error!(path = %path.display(), %reason, "policy rejected; the previous policy stays in force");
                    on_reload(Err(&reason));
                }
            }
            last_text = Some(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_carry_the_line() {
        let err = parse("grants:\n  - subjects: [\"group:dba\"]\n    roles: [\"database/*\"]\n    max_tll: 8h\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_tll") && err.contains("line 4"), "{err}");
        let err = parse("grants:\n  - subjects: [\"dba\"]\n    roles: [\"database/*\"]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "policy grant 1: subject \"dba\" must be root or start with system:serviceaccount:, group: or user: (after a mount's subject_prefix/, if any)"
        );
        assert_eq!(parse("").unwrap(), Policy::default());
    }
}
