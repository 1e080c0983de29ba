//! Everything pgwarden does inside a target PostgreSQL: connect as the administrative user,
//! set up preset group roles, and create, renew and revoke dynamic users.

#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects,
        clippy::indexing_slicing
    )
)]

mod check;
mod error;
mod groups;
mod held;
mod iam;
mod passwords;
mod preset;
mod quote;
mod scram;
mod target;
mod tls;
mod users;

pub use check::{Finding, Severity, check_administrator};
pub use error::EngineError;
pub use groups::GROUP_MARK;
pub use quote::{quote_ident, quote_literal};
pub use scram::{NewPassword, PasswordPool};
pub use target::{Endpoint, Target};
pub use users::UncommittedUser;
