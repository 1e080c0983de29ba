//! Telling the application its credential changed: a signal to a pid from a file, or a command.

use crate::config::OnChange;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::str::FromStr;

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
pub async fn fire(action: &OnChange) {
    match action {
        OnChange::Signal { pid_file, signal } => {
            let result = async {
                let text = tokio::fs::read_to_string(pid_file)
                    .await
                    .map_err(|e| e.to_string())?;
                let pid: i32 = text
                    .trim()
                    .parse()
                    .map_err(|_| format!("{:?} is not a pid", text.trim()))?;
                kill(Pid::from_raw(pid), parse_signal(signal)?).map_err(|e| e.to_string())?;
                Ok::<_, String>(pid)
            }
            .await;
            match result {
                Ok(pid) => tracing::info!(pid, signal, "application signalled"),
                Err(error) => {
                    tracing::warn!(pid_file = %pid_file.display(), %error, "cannot signal the application")
                }
            }
        }
        OnChange::Command(argv) => match tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .status()
            .await
        {
            Ok(status) if status.success() => {
                tracing::info!(command = ?argv, "on_change command ran")
            }
            Ok(status) => tracing::warn!(command = ?argv, %status, "on_change command failed"),
            Err(error) => {
                tracing::warn!(command = ?argv, %error, "cannot run the on_change command")
            }
        },
    }
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
