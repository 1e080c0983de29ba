//! `pgwarden proxy`: a PostgreSQL wire-protocol proxy. Clients prove who they are with a token
//! as their password (or, as a sidecar, by being the pod); the proxy connects to the database
//! with fresh pgwarden credentials issued for that identity, pools those connections by
//! session or by transaction, and replaces the credentials before they expire.

pub mod client;
pub mod config;
pub mod frame;
pub mod health;
pub mod identity;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod registry;
pub mod relay;
pub mod reply;
pub mod upstream;

pub use config::ProxyConfig;
pub use proxy::{Running, start};
