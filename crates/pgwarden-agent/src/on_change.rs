//! Telling the application its credential changed: a signal to a pid from a file, or a command.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use std::path::PathBuf;
use std::str::FromStr;

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

/// Runs the action; failures are logged, never fatal (the files are already written).
pub async fn fire(action: &Action) {
    match action {
        Action::Signal { pid_file, signal } => match signal_pid_file(pid_file, *signal).await {
            Ok(pid) => tracing::info!(pid, signal = %signal, "application signalled"),
            Err(error) => {
                tracing::warn!(pid_file = %pid_file.display(), %error, "cannot signal the application")
            }
        },
        Action::Command { program, args } => {
            match tokio::process::Command::new(program)
                .args(args)
                .status()
                .await
            {
                Ok(status) if status.success() => {
                    tracing::info!(%program, ?args, "on_change command ran")
                }
                Ok(status) => tracing::warn!(%program, ?args, %status, "on_change command failed"),
                Err(error) => {
                    tracing::warn!(%program, ?args, %error, "cannot run the on_change command")
                }
            }
        }
    }
}

/// Sends `signal` to the pid written in `pid_file`; returns the pid.
async fn signal_pid_file(pid_file: &std::path::Path, signal: Signal) -> Result<i32, String> {
    let text = tokio::fs::read_to_string(pid_file)
        .await
        .map_err(|e| e.to_string())?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{:?} is not a pid", text.trim()))?;
    kill(Pid::from_raw(pid), signal).map_err(|e| e.to_string())?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

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
