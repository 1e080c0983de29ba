//! The pgwarden sidecar agent: logs in, fetches credentials, writes them to files atomically
//! (mode 0600) in the formats applications read, keeps them fresh with the client crate's
//! renewal rules (for RDS IAM, signs a fresh auth token every 10 minutes; for a static role,
//! reads its password again after each rotation), tells the application when they change, and
//! reports on a health endpoint how long they remain valid.

mod config;
mod files;
mod health;
mod on_change;
mod rds;
mod refresh;
mod run;
mod static_creds;

pub use config::{
    Agent, AgentConfig, AuthConfig, CredentialConfig, Delivery, FileConfig, RdsConfig, Source,
};
pub use files::{Format, Output, OutputFile, Template};
pub use on_change::{Action, OnChange};
pub use run::{AgentError, Mode, run};
