//! Where the client commands find pgwarden and their token, as the Vault CLI does: flags,
//! then `PGWARDEN_*`, then `VAULT_*` environment variables, then defaults (for the token, the
//! file `login` wrote).

use crate::cli::output::Format;
use clap::Args;
use pgwarden_client::{Auth, Client};
use secrecy::{ExposeSecret, SecretString};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The address used when no flag or variable names one.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:8200";

/// The token file's name in the home directory.
const TOKEN_FILE_NAME: &str = ".pgwarden-token";

/// Where pgwarden is and the token to use: flags of every command that calls the broker.
#[derive(Args, Debug, Clone)]
pub struct BrokerArgs {
    /// pgwarden's address. Default: PGWARDEN_ADDR, else VAULT_ADDR, else http://127.0.0.1:8200.
    #[arg(long, global = true, value_name = "URL")]
    pub addr: Option<String>,
    /// The token to use. Default: PGWARDEN_TOKEN, else VAULT_TOKEN, else the file `pgwarden
    /// login` wrote (~/.pgwarden-token, or PGWARDEN_TOKEN_FILE). A token on the command line is
    /// visible to other local users in the process list: prefer the variable or the file.
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// A PEM file of the CA certificates to trust (only those) for an https address: for a
    /// pgwarden serving its API with a private CA's certificate (`http.tls`). Default:
    /// PGWARDEN_CACERT, else VAULT_CACERT (for an https address only), else the system's trusted
    /// roots.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// Flags every client command takes (also after its subcommand).
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Where pgwarden is and the token.
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Output: aligned text for people, or JSON (the answer's `data`) for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

impl ClientArgs {
    /// A client of the configured pgwarden with the configured token.
    pub fn client(&self) -> Result<Client, String> {
        self.broker.client()
    }

    /// A client of the configured pgwarden for logging in (no token needed).
    pub fn anonymous_client(&self) -> Result<Client, String> {
        self.broker.anonymous_client()
    }
}

/// The first of several environment variables that is set and not empty.
fn first_env(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .find(|value| !value.is_empty())
}

impl BrokerArgs {
    /// The address: `--addr`, PGWARDEN_ADDR, VAULT_ADDR or [`DEFAULT_ADDR`].
    pub fn address(&self) -> String {
        self.addr
            .clone()
            .or_else(|| first_env(&["PGWARDEN_ADDR", "VAULT_ADDR"]))
            .unwrap_or_else(|| DEFAULT_ADDR.to_string())
    }

    /// The token: `--token`, PGWARDEN_TOKEN, VAULT_TOKEN, or the token file.
    pub fn token(&self) -> Result<SecretString, String> {
        if let Some(token) = self
            .token
            .clone()
            .or_else(|| first_env(&["PGWARDEN_TOKEN", "VAULT_TOKEN"]))
        {
            return Ok(SecretString::from(token));
        }
        let path = token_file()?;
        if let Ok(meta) = std::fs::metadata(&path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                eprintln!(
                    "warning: the token file {} is readable by other users; chmod 600 it",
                    path.display()
                );
            }
        }
        match std::fs::read_to_string(&path) {
            Ok(text) if !text.trim().is_empty() => Ok(SecretString::from(text.trim())),
            Ok(_) => Err(format!(
                "the token file {} is empty; log in again with `pgwarden login`",
                path.display()
            )),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Err(format!(
                "no token: log in with `pgwarden login`, or set PGWARDEN_TOKEN \
                 (no token file at {})",
                path.display()
            )),
            Err(error) => Err(format!(
                "cannot read the token file {}: {error}",
                path.display()
            )),
        }
    }

    /// The CA file: `--ca-cert`, PGWARDEN_CACERT, or VAULT_CACERT for an https address (it
    /// may be there for another Vault), if any.
    fn ca_cert(&self, address: &str) -> Option<PathBuf> {
        let vault = address
            .starts_with("https://")
            .then(|| first_env(&["VAULT_CACERT"]));
        self.ca_cert
            .clone()
            .or_else(|| first_env(&["PGWARDEN_CACERT"]).map(PathBuf::from))
            .or_else(|| vault.flatten().map(PathBuf::from))
    }

    /// A client of the configured pgwarden acting with `auth`.
    fn client_with(&self, auth: Auth) -> Result<Client, String> {
        let address = self.address();
        Client::with_ca_file(&address, auth, self.ca_cert(&address).as_deref())
            .map_err(|e| e.to_string())
    }

    /// A client of the configured pgwarden with the configured token.
    pub fn client(&self) -> Result<Client, String> {
        self.client_with(Auth::Token(self.token()?))
    }

    /// A client of the configured pgwarden for logging in (no token needed).
    pub fn anonymous_client(&self) -> Result<Client, String> {
        self.client_with(Auth::Token(SecretString::from("")))
    }
}

/// Where `login` keeps the token: PGWARDEN_TOKEN_FILE, else `~/.pgwarden-token`.
pub fn token_file() -> Result<PathBuf, String> {
    if let Some(path) = first_env(&["PGWARDEN_TOKEN_FILE"]) {
        return Ok(PathBuf::from(path));
    }
    let home = first_env(&["HOME"]).ok_or_else(|| {
        "HOME is not set: set PGWARDEN_TOKEN_FILE to say where the token is kept".to_string()
    })?;
    Ok(Path::new(&home).join(TOKEN_FILE_NAME))
}

/// Writes `token` to `path` atomically: a new file created with mode 0600 beside it (never
/// readable by others, not even for a moment), synced, then renamed over `path`.
pub fn save_token(path: &Path, token: &SecretString) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| TOKEN_FILE_NAME.to_string());
    let cannot = |e: std::io::Error| format!("cannot write the token file {}: {e}", path.display());
    let mut attempt = 0u32;
    let (temp, mut file) = loop {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let temp = dir.join(format!(".{name}.{}.{nanos}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
        {
            Ok(file) => break (temp, file),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 10 => {
                attempt = attempt.saturating_add(1);
            }
            Err(e) => return Err(cannot(e)),
        }
    };
    let written = file
        .write_all(format!("{}\n", token.expose_secret()).as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(cannot(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_token_file_is_replaced_atomically_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "old\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        save_token(&path, &SecretString::from("pgw.new")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "pgw.new\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_missing_directory_is_one_clear_line() {
        let err = save_token(
            Path::new("/nonexistent-dir/token"),
            &SecretString::from("t"),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "cannot write the token file /nonexistent-dir/token: No such file or directory (os error 2)"
        );
    }
}
