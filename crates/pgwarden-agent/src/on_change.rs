//! Telling the application its credential changed: a signal to a pid from a file, or a command.

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// What to do when a credential changes, as configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum OnChange {
    /// Send a signal to the process whose pid is in a file.
    Signal {
        /// The pid file.
        pid_file: PathBuf,
        /// The signal's name, e.g. `SIGHUP`.
        signal: String,
    },
    /// Run a command (argv).
    Command(Vec<String>),
}

/// An [`OnChange`] checked at load: the signal parsed, the command split into program and
/// arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `signal` to the pid in `pid_file`.
    Signal {
        /// The pid file, read at each change (the application may restart).
        pid_file: PathBuf,
        /// The signal.
        signal: Signal,
    },
    /// Run `program` with `args`.
    Command {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

impl OnChange {
    /// Checks the action of credential `credential`.
    pub fn resolve(&self, credential: &str) -> Result<Action, String> {
        match self {
            OnChange::Signal { pid_file, signal } => Ok(Action::Signal {
                pid_file: pid_file.clone(),
                signal: parse_signal(signal)?,
            }),
            OnChange::Command(argv) => match argv.split_first() {
                Some((program, args)) => Ok(Action::Command {
                    program: program.clone(),
                    args: args.to_vec(),
                }),
                None => Err(format!(
                    "credential {credential:?}: on_change.command is empty"
                )),
            },
        }
    }
}

/// The signal named `name` (`SIGHUP` or `HUP`).
pub fn parse_signal(name: &str) -> Result<Signal, String> {
    let full = if name.starts_with("SIG") {
        name.to_string()
    } else {
        format!("SIG{name}")
    };
    Signal::from_str(&full).map_err(|_| format!("unknown signal {name:?}"))
}

/// Longest an `on_change` command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the action; failures are logged, never fatal (the files are already written).
pub async fn fire(action: &Action) {
    fire_within(action, COMMAND_TIMEOUT).await;
}

/// [`fire`], a command killed after `limit`.
async fn fire_within(action: &Action, limit: Duration) {
    match action {
        Action::Signal { pid_file, signal } => match signal_pid_file(pid_file, *signal).await {
            Ok(pid) => tracing::info!(pid, signal = %signal, "application signalled"),
            Err(error) => {
                tracing::warn!(pid_file = %pid_file.display(), %error, "cannot signal the application")
            }
        },
        Action::Command { program, args } => {
            // In a process group of its own, so that what it starts goes with it.
            let child = tokio::process::Command::new(program)
                .args(args)
                .process_group(0)
                .kill_on_drop(true)
                .spawn();
            let ran = match child {
                // A command that hangs would hold up every later write of the credential:
                // its group is killed after `limit`.
                Ok(mut child) => match tokio::time::timeout(limit, child.wait()).await {
                    Ok(waited) => waited.map_err(|e| e.to_string()),
                    Err(_) => {
                        if let Some(group) = child.id().and_then(|id| i32::try_from(id).ok()) {
                            let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
                        }
                        Err(format!("still running after {limit:?}; killed"))
                    }
                },
                Err(error) => Err(format!("cannot run it: {error}")),
            };
            match ran {
                Ok(status) if status.success() => {
                    tracing::info!(%program, ?args, "on_change command ran")
                }
                Ok(status) => tracing::warn!(%program, ?args, %status, "on_change command failed"),
                Err(error) => tracing::warn!(%program, ?args, %error, "on_change command failed"),
            }
        }
    }
}

/// Sends `signal` to the pid written in `pid_file`; returns the pid.
async fn signal_pid_file(pid_file: &std::path::Path, signal: Signal) -> Result<i32, String> {
    let text = tokio::fs::read_to_string(pid_file)
        .await
        .map_err(|e| e.to_string())?;
    // 0 and negative numbers name process groups (-1: every process): never a pid here.
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid > 0)
        .ok_or_else(|| format!("{:?} is not a pid", text.trim()))?;
    kill(Pid::from_raw(pid), signal).map_err(|e| e.to_string())?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hung_command_is_killed_after_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let action = Action::Command {
            program: "sh".into(),
            // A command that starts another and waits for it.
            args: vec![
                "-c".into(),
                format!("sleep 60 & echo $! > {}; wait", pid_file.display()),
            ],
        };
        let started = std::time::Instant::now();
        fire_within(&action, Duration::from_secs(2)).await;
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // What it started was killed too: gone, or a zombie until reaped.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = state.rsplit(") ").next().and_then(|s| s.chars().next());
            if matches!(state, None | Some('Z')) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{pid} still runs: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_pid_file_naming_a_group_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pid");
        for text in ["0", "-1", "-42"] {
            std::fs::write(&file, text).unwrap();
            assert_eq!(
                signal_pid_file(&file, Signal::SIGHUP).await,
                Err(format!("{text:?} is not a pid"))
            );
        }
    }

    #[test]
    fn signals_by_either_name() {
        assert_eq!(parse_signal("SIGHUP").unwrap(), Signal::SIGHUP);
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(
            parse_signal("SIGNOPE").unwrap_err(),
            "unknown signal \"SIGNOPE\""
        );
    }
}
