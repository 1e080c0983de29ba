//! The commands for people talking to a running pgwarden, in Vault CLI style: `login`,
//! `creds`, `lease …`, `request …` and `audit …`. Each family has its own module; they share
//! the client settings ([`settings`]) and the output helpers ([`output`]).

pub mod audit;
pub mod creds;
pub mod lease;
pub mod login;
pub mod output;
pub mod request;
pub mod settings;

use pgwarden_client::ClientError;

/// A client error as the one line `main` prints after `error: `: the server's own message
/// when it answered with one.
pub fn message(error: ClientError) -> String {
    match error {
        ClientError::Api {
            message,
            status,
            what,
        } => {
            if message.is_empty() {
                format!("pgwarden answered {status} to {what}")
            } else {
                message
            }
        }
        other => other.to_string(),
    }
}
