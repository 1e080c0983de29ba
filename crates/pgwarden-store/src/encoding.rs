//! How both backends lay a lease or token out in columns: the column lists, timestamps as
//! whole milliseconds since the Unix epoch (`*_ms` columns), and JSON columns.

use crate::StoreError;
use time::OffsetDateTime;

/// Every column of a lease row.
pub(crate) const LEASE_COLUMNS: &str = "id, username, owner, mount, role_json, state, \
     issued_at_ms, expires_at_ms, max_expires_at_ms, last_renewal_ms, revoke_attempts, \
     last_error, subject, token_accessor";
/// Every column of a token row.
pub(crate) const TOKEN_COLUMNS: &str = "accessor, hash, identity_json, mount, role, \
     issued_at_ms, expires_at_ms, max_expires_at_ms, ttl_secs";

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
