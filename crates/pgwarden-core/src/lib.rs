//! Domain types of pgwarden with no I/O: TTLs, role and connection definitions, leases,
//! generated names and passwords, and the statement templates that carry them into SQL.

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

pub mod audit;
pub mod backoff;
pub mod connection;
pub mod error;
pub mod glob;
pub mod identity;
pub mod lease;
pub mod names;
pub mod policy;
pub mod request;
pub mod role;
pub mod static_role;
pub mod template;
pub mod token;
pub mod ttl;
pub mod wire;

pub use audit::{AuditEvent, AuditRecord, ChainBreak, ChainKey, ChainVerifier, Outcome};
pub use backoff::backoff;
pub use connection::{AdminAuth, ConnectionDef};
pub use error::{CoreError, chain};
pub use identity::Identity;
pub use lease::{Lease, LeaseState, Owner, Renewal, RevokeReason};
pub use policy::{Allowed, Grant, Policy};
pub use request::{AccessRequest, Approval, ApprovalRule, Decision, DecisionError, RequestState};
pub use role::{Preset, RoleDef, RoleKind, RoleSpec, Statements};
pub use token::TokenRecord;
pub use ttl::Ttl;
