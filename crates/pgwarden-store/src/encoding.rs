//! How both backends lay a lease or token out in columns: the column lists, timestamps as
//! whole milliseconds since the Unix epoch (`*_ms` columns), JSON columns, and a lease's state
//! with its revocation reason.

use crate::StoreError;
use pgwarden_core::{LeaseState, RevokeReason};
use time::OffsetDateTime;

/// Every column of a lease row.
pub(crate) const LEASE_COLUMNS: &str = "id, username, owner, mount, role_json, state, \
     issued_at_ms, expires_at_ms, max_expires_at_ms, last_renewal_ms, revoke_attempts, \
     last_error, subject, token_accessor, revoke_reason";
/// Every column of a token row.
pub(crate) const TOKEN_COLUMNS: &str = "accessor, hash, identity_json, mount, role, \
     issued_at_ms, expires_at_ms, max_expires_at_ms, ttl_secs";

/// Every column of a request row.
pub(crate) const REQUEST_COLUMNS: &str =
    "id, version, state, created_at_ms, request_json, sealed_credential";
/// Every column of a static role row.
pub(crate) const STATIC_ROLE_COLUMNS: &str = "mount, name, version, role_json, sealed_password, \
     sealed_pending, last_rotation_ms, next_rotation_ms, from_file";
/// Every column of an audit row.
pub(crate) const AUDIT_COLUMNS: &str =
    "seq, time_ms, actor, action, object, outcome, request_id, detail, prev_hash, hash";

/// The state of a lease row, from its `state` and `revoke_reason` columns; for a corrupt one,
/// what is stored there.
pub(crate) fn lease_state(name: &str, reason: Option<&str>) -> Result<LeaseState, String> {
    LeaseState::parse(name, reason).ok_or_else(|| match reason {
        Some(reason) => format!("{name} ({reason})"),
        None => name.to_string(),
    })
}

/// What a lease's `revoke_reason` column holds in `state`.
pub(crate) fn revoke_reason(state: LeaseState) -> Option<&'static str> {
    state.revoke_reason().map(RevokeReason::as_str)
}

/// `t` as whole milliseconds since the Unix epoch (saturating).
pub(crate) fn millis(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
        .saturating_mul(1000)
        .saturating_add(i64::from(t.millisecond()))
}

/// The point in time `ms` milliseconds after the Unix epoch; out of range is corrupt.
pub(crate) fn from_millis(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms).saturating_mul(1_000_000)).map_err(
        |e| StoreError::Corrupt {
            what: "timestamp",
            reason: e.to_string(),
        },
    )
}

/// `value` as JSON for a column.
pub(crate) fn to_json(
    what: &'static str,
    value: &impl serde::Serialize,
) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { what, source })
}

/// Reads a row's columns by name, whatever the backend.
pub(crate) trait Columns {
    /// An integer column.
    fn int(&self, name: &str) -> Result<i64, StoreError>;
    /// A text column.
    fn text(&self, name: &str) -> Result<String, StoreError>;
    /// A nullable binary column.
    fn bytes(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// A nullable integer column.
    fn opt_int(&self, name: &str) -> Result<Option<i64>, StoreError>;
    /// A boolean column.
    fn flag(&self, name: &str) -> Result<bool, StoreError>;
}

/// A static role row (all of [`STATIC_ROLE_COLUMNS`]).
pub(crate) fn static_role_from(row: &impl Columns) -> Result<crate::StoredStaticRole, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "static role",
        reason,
    };
    let version = row.int("version")?;
    Ok(crate::StoredStaticRole {
        mount: row.text("mount")?,
        def: serde_json::from_str(&row.text("role_json")?).map_err(|e| corrupt(e.to_string()))?,
        version: u64::try_from(version).map_err(|_| corrupt(format!("version {version}")))?,
        sealed_password: row.bytes("sealed_password")?,
        sealed_pending: row.bytes("sealed_pending")?,
        last_rotation: row
            .opt_int("last_rotation_ms")?
            .map(from_millis)
            .transpose()?,
        next_rotation: from_millis(row.int("next_rotation_ms")?)?,
        from_file: row.flag("from_file")?,
    })
}

/// A request row (all of [`REQUEST_COLUMNS`]): its JSON, with the version its column holds
/// (the one compare-and-set works on).
pub(crate) fn request_from(row: &impl Columns) -> Result<crate::StoredRequest, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "access request",
        reason,
    };
    let mut request: pgwarden_core::AccessRequest =
        serde_json::from_str(&row.text("request_json")?).map_err(|e| corrupt(e.to_string()))?;
    let version = row.int("version")?;
    request.version = u64::try_from(version).map_err(|_| corrupt(format!("version {version}")))?;
    Ok(crate::StoredRequest {
        request,
        sealed_credential: row.bytes("sealed_credential")?,
    })
}

/// A version as a column value (saturating).
pub(crate) fn version_column(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// An audit row (all of [`AUDIT_COLUMNS`]).
pub(crate) fn audit_from(row: &impl Columns) -> Result<pgwarden_core::AuditRecord, StoreError> {
    let seq = row.int("seq")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "audit record",
        reason: format!("record {seq}: {reason}"),
    };
    let outcome = row.text("outcome")?;
    Ok(pgwarden_core::AuditRecord {
        seq: u64::try_from(seq).map_err(|_| corrupt("a negative sequence number".into()))?,
        event: pgwarden_core::AuditEvent {
            time: from_millis(row.int("time_ms")?)?,
            actor: row.text("actor")?,
            action: row.text("action")?,
            object: row.text("object")?,
            outcome: pgwarden_core::Outcome::parse(&outcome)
                .ok_or_else(|| corrupt(format!("outcome {outcome:?}")))?,
            request_id: row.text("request_id")?,
            detail: row.text("detail")?,
        },
        prev_hash: row.text("prev_hash")?,
        hash: row.text("hash")?,
    })
}

/// The statement that marks `revoking` the leases of the token whose accessor is the
/// parameter `param`, in the leases table `table` (a rollback for one still pending, a
/// requested revocation otherwise), leaving those already being revoked as they are.
pub(crate) fn mark_token_leases(table: &str, param: &str) -> String {
    use pgwarden_core::{LeaseState, RevokeReason};
    let (pending, revoking) = (
        LeaseState::Pending.as_str(),
        LeaseState::Revoking(RevokeReason::Requested).as_str(),
    );
    format!(
        "UPDATE {table} SET state = '{revoking}', revoke_reason = CASE state WHEN '{pending}' \
         THEN '{rollback}' ELSE '{requested}' END WHERE token_accessor = {param} \
         AND state <> '{revoking}'",
        rollback = RevokeReason::Rollback.as_str(),
        requested = RevokeReason::Requested.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn timestamps_round_trip_to_the_millisecond_and_saturate() {
        let t = datetime!(2026-11-22 10:00:00.123 UTC);
        assert_eq!(millis(t), 1_795_341_600_123); // Python: datetime(…).timestamp() * 1000
        assert_eq!(from_millis(millis(t)).unwrap(), t);
        assert!(matches!(
            from_millis(i64::MAX),
            Err(StoreError::Corrupt {
                what: "timestamp",
                ..
            })
        ));
    }
}
