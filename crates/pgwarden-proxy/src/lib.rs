//! `pgwarden proxy`: a PostgreSQL wire-protocol proxy. Clients prove who they are with a token
//! as their password (or, as a sidecar, by being the pod); the proxy connects to the database
//! with fresh pgwarden credentials issued for that identity, pools those connections by
//! session or by transaction, and replaces the credentials before they expire.

mod cancel;
mod client;
pub mod config;
mod frame;
mod health;
mod identity;
mod login;
pub mod metrics;
mod pool;
pub mod proxy;
mod registry;
mod relay;
mod reply;
mod settings;
mod statements;
mod tls;
mod upstream;

pub use config::ProxyConfig;
pub use proxy::{Running, check_files, start};
