//! Leases: one issued database user with its TTL arithmetic and lifecycle state.

use crate::{CoreError, RoleDef, Ttl, names::random_alphanumeric};
use std::time::Duration;
use time::OffsetDateTime;

/// Extra life given to the database's `VALID UNTIL` beyond the lease's end, as Vault does.
pub const VALID_UNTIL_SLACK: Duration = Duration::from_secs(5);

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Written before the user is created; rolled back if found at start-up.
    Pending,
    /// The user exists and is handed out.
    Active,
    /// Dropping the user has begun, for the reason given, and has not succeeded yet.
    Revoking(RevokeReason),
}

impl LeaseState {
    /// The state's name as stored and shown (every revocation is `revoking`).
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Pending => "pending",
            LeaseState::Active => "active",
            LeaseState::Revoking(_) => "revoking",
        }
    }

    /// The state named `text` with, for `revoking`, the stored `reason` (a revocation stored
    /// without one, by a version before reasons were kept, counts as requested); `None` if
    /// either is unknown, or a reason comes with another state.
    pub fn parse(text: &str, reason: Option<&str>) -> Option<Self> {
        Some(match (text, reason) {
            ("pending", None) => LeaseState::Pending,
            ("active", None) => LeaseState::Active,
            ("revoking", reason) => LeaseState::Revoking(match reason {
                None => RevokeReason::Requested,
                Some(reason) => RevokeReason::parse(reason)?,
            }),
            _ => return None,
        })
    }

    /// Why the user is being dropped, while it is.
    pub fn revoke_reason(self) -> Option<RevokeReason> {
        match self {
            LeaseState::Revoking(reason) => Some(reason),
            _ => None,
        }
    }
}

/// Why a lease's user is dropped: kept with the lease from the moment revocation begins, so
/// a retry (after a failure or a restart) runs the same statements and is counted the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeReason {
    /// Someone asked: a revoke call, a withdrawn request, a revoked token.
    Requested,
    /// The lease reached its end.
    Expired,
    /// Its issuance did not finish: the role's rollback statements undo it.
    Rollback,
}

impl RevokeReason {
    /// The reason's name as stored, counted in metrics and written in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            RevokeReason::Requested => "requested",
            RevokeReason::Expired => "expired",
            RevokeReason::Rollback => "rollback",
        }
    }

    /// The reason named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "requested" => RevokeReason::Requested,
            "expired" => RevokeReason::Expired,
            "rollback" => RevokeReason::Rollback,
            _ => return None,
        })
    }
}

/// Who a lease belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Short name used in generated usernames and logs (`root`, `kubernetes-team-a-app`).
    pub display_name: String,
    /// The policy subject; only callers with the same subject may renew, look up or revoke it.
    pub subject: String,
    /// The accessor of the token that asked; revoking that token revokes the lease.
    pub token_accessor: Option<String>,
}

impl Owner {
    /// The root token's identity.
    pub fn root() -> Owner {
        Owner {
            display_name: "root".into(),
            subject: "root".into(),
            token_accessor: None,
        }
    }
}

/// One issued database user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// `<mount>/creds/<role>/<random>`.
    pub id: String,
    /// The user's name in the target database.
    pub username: String,
    /// Who asked for it.
    pub owner: Owner,
    /// The mount it was issued from.
    pub mount: String,
    /// The role as it was when the lease was issued; revocation uses this snapshot.
    pub role: RoleDef,
    /// Lifecycle state.
    pub state: LeaseState,
    /// When it was issued.
    pub issued_at: OffsetDateTime,
    /// When it ends unless renewed.
    pub expires_at: OffsetDateTime,
    /// Hard end: issue time plus the role's max TTL.
    pub max_expires_at: OffsetDateTime,
    /// When it was last renewed.
    pub last_renewal: Option<OffsetDateTime>,
    /// Failed revocation attempts so far.
    pub revoke_attempts: u32,
    /// The last revocation error, for lookup and operators.
    pub last_error: Option<String>,
}

/// The outcome of a planned renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewal {
    /// The new end of the lease.
    pub expires_at: OffsetDateTime,
    /// Seconds from now to the new end.
    pub ttl: Ttl,
    /// The increment asked for, when it was cut short by the max TTL.
    pub capped_from: Option<Ttl>,
}

impl Lease {
    /// A new pending lease for `username` under `role`, issued `now` for `ttl` (capped by max TTL).
    pub fn new_pending(
        mount: &str,
        role: &RoleDef,
        username: String,
        owner: Owner,
        ttl: Ttl,
        now: OffsetDateTime,
    ) -> Lease {
        let max_expires_at = role.max_ttl.after(now);
        let ttl = if ttl.is_zero() { role.default_ttl } else { ttl };
        Lease {
            id: format!("{mount}/creds/{}/{}", role.name, random_alphanumeric(24)),
            username,
            owner,
            mount: mount.to_string(),
            role: role.clone(),
            state: LeaseState::Pending,
            issued_at: now,
            expires_at: ttl.after(now).min(max_expires_at),
            max_expires_at,
            last_renewal: None,
            revoke_attempts: 0,
            last_error: None,
        }
    }

    /// The TTL the lease was issued with: from issue to its current end.
    pub fn granted_ttl(&self) -> Ttl {
        Ttl::between(self.issued_at, self.expires_at)
    }

    /// Seconds left until the lease ends (zero once ended).
    pub fn remaining(&self, now: OffsetDateTime) -> Ttl {
        Ttl::between(now, self.expires_at)
    }

    /// The lease's new end after renewing by `increment` at `now` (zero means the role's
    /// default TTL), never past the max TTL.
    pub fn plan_renewal(&self, increment: Ttl, now: OffsetDateTime) -> Result<Renewal, CoreError> {
        if now >= self.max_expires_at {
            return Err(CoreError::PastMaxTtl {
                lease_id: self.id.clone(),
            });
        }
        Ok(extend(
            now,
            increment,
            self.role.default_ttl,
            self.max_expires_at,
        ))
    }
}

impl Renewal {
    /// Vault's warning when the max TTL cut the renewal short, else nothing.
    pub fn warning(&self) -> Option<String> {
        self.capped_from.map(|asked| {
            format!(
                "TTL of \"{asked}\" exceeded the effective max_ttl of \"{}\"; TTL value is capped accordingly",
                self.ttl
            )
        })
    }
}

/// A new end `increment` after `now` (zero: `default`), never past `max_end`. Shared by leases
/// and tokens; the caller checks that `now` is before `max_end`.
pub fn extend(
    now: OffsetDateTime,
    increment: Ttl,
    default: Ttl,
    max_end: OffsetDateTime,
) -> Renewal {
    let increment = if increment.is_zero() {
        default
    } else {
        increment
    };
    let wanted = increment.after(now);
    let (expires_at, capped_from) = if wanted > max_end {
        (max_end, Some(increment))
    } else {
        (wanted, None)
    };
    Renewal {
        expires_at,
        ttl: Ttl::between(now, expires_at),
        capped_from,
    }
}

/// The `VALID UNTIL` text for a lease ending at `expires_at`: five seconds later, in UTC with an
/// explicit offset, e.g. `2026-11-22 10:00:05+00`.
pub fn valid_until(expires_at: OffsetDateTime) -> String {
    let at = Ttl::from_secs(VALID_UNTIL_SLACK.as_secs())
        .after(expires_at)
        .to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}+00",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RoleSpec;
    use time::macros::datetime;

    #[test]
    fn states_and_reasons_read_back_as_stored() {
        let reasons = [
            RevokeReason::Requested,
            RevokeReason::Expired,
            RevokeReason::Rollback,
        ];
        for reason in reasons {
            let state = LeaseState::Revoking(reason);
            assert_eq!(
                LeaseState::parse(state.as_str(), Some(reason.as_str())),
                Some(state)
            );
            assert_eq!(state.revoke_reason(), Some(reason));
        }
        for state in [LeaseState::Pending, LeaseState::Active] {
            assert_eq!(LeaseState::parse(state.as_str(), None), Some(state));
            assert_eq!(state.revoke_reason(), None);
        }
        // Stored before reasons were kept.
        assert_eq!(
            LeaseState::parse("revoking", None),
            Some(LeaseState::Revoking(RevokeReason::Requested))
        );
        assert_eq!(LeaseState::parse("revoking", Some("bored")), None);
        assert_eq!(LeaseState::parse("active", Some("expired")), None);
        assert_eq!(LeaseState::parse("gone", None), None);
    }

    fn role() -> RoleDef {
        RoleSpec {
            db_name: Some("appdb".into()),
            preset: Some(crate::Preset::Readonly),
            default_ttl: Some(Ttl::from_secs(60)),
            max_ttl: Some(Ttl::from_secs(300)),
            ..RoleSpec::default()
        }
        .into_def("ro")
        .unwrap()
    }

    const T0: OffsetDateTime = datetime!(2026-11-22 10:00:00 UTC);

    #[test]
    fn new_lease_uses_default_ttl_and_vault_id_shape() {
        let lease = Lease::new_pending(
            "database",
            &role(),
            "u".into(),
            Owner::root(),
            Ttl::default(),
            T0,
        );
        assert_eq!(lease.expires_at, T0 + Duration::from_secs(60));
        assert_eq!(lease.max_expires_at, T0 + Duration::from_secs(300));
        let (prefix, random) = lease.id.rsplit_once('/').unwrap();
        assert_eq!(prefix, "database/creds/ro");
        assert_eq!(random.len(), 24);
    }

    #[test]
    fn renewal_is_capped_at_max_ttl() {
        let lease = Lease::new_pending(
            "database",
            &role(),
            "u".into(),
            Owner::root(),
            Ttl::default(),
            T0,
        );
        let now = T0 + Duration::from_secs(200);
        let plain = lease.plan_renewal(Ttl::from_secs(50), now).unwrap();
        assert_eq!((plain.ttl.as_secs(), plain.capped_from), (50, None));
        let capped = lease.plan_renewal(Ttl::from_secs(3600), now).unwrap();
        assert_eq!(capped.expires_at, lease.max_expires_at);
        assert_eq!(capped.ttl.as_secs(), 100);
        assert_eq!(capped.capped_from, Some(Ttl::from_secs(3600)));
        let default = lease.plan_renewal(Ttl::default(), now).unwrap();
        assert_eq!(default.ttl.as_secs(), 60);
    }

    #[test]
    fn renewal_past_max_ttl_is_refused() {
        let lease = Lease::new_pending(
            "database",
            &role(),
            "u".into(),
            Owner::root(),
            Ttl::default(),
            T0,
        );
        let err = lease
            .plan_renewal(Ttl::from_secs(10), T0 + Duration::from_secs(300))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("lease {:?} is past the max TTL, cannot renew", lease.id)
        );
    }

    #[test]
    fn valid_until_adds_slack_and_an_explicit_offset() {
        assert_eq!(valid_until(T0), "2026-11-22 10:00:05+00");
    }
}
