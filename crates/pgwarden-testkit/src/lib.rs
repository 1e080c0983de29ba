//! Test support for pgwarden: throwaway PostgreSQL clusters started from the installed server
//! binaries with `scram-sha-256` authentication. The `dev` command uses the same clusters.

mod cluster;
pub mod issuer;
pub mod tls;

pub use cluster::{APP_ADMIN, APP_ADMIN_PASSWORD, PgCluster, SUPERUSER, TestkitError};
