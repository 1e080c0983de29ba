//! Test support for pgwarden: throwaway PostgreSQL clusters started from the installed server
//! binaries with `scram-sha-256` authentication. The `dev` command uses the same clusters. With
//! the cargo feature `server`, the module `broker` runs a pgwarden server in-process against one.

#[cfg(feature = "server")]
pub mod broker;
mod cluster;
pub mod cpu;
pub mod issuer;
pub mod kube_api;
pub mod partition;
pub mod pgbench;
pub mod rds;
pub mod tls;

pub use cluster::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster, SUPERUSER, TestkitError};
