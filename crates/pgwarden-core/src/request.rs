//! Access requests: someone asks for a role that policy grants only with approval, approvers
//! decide, and the credential is issued once enough of them approve. The rules of deciding
//! live here, free of I/O; the server stores the result with a compare-and-set on `version`.

use crate::names::random_alphanumeric;
use crate::{Ttl, glob::any_match};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Prefix of every request id.
pub const REQUEST_ID_PREFIX: &str = "req-";

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    /// Waiting for approvers.
    Pending,
    /// Approved: the credential was issued.
    Approved,
    /// Denied by an approver.
    Denied,
    /// Withdrawn (its credential, if any, revoked).
    Withdrawn,
    /// Not decided before it expired.
    Expired,
}

impl RequestState {
    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Withdrawn => "withdrawn",
            RequestState::Expired => "expired",
        }
    }

    /// The state named `text`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "pending" => RequestState::Pending,
            "approved" => RequestState::Approved,
            "denied" => RequestState::Denied,
            "withdrawn" => RequestState::Withdrawn,
            "expired" => RequestState::Expired,
            _ => return None,
        })
    }
}

/// One approver's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The approver's subject.
    pub approver: String,
    /// Why, as the approver wrote it.
    pub reason: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// An access request as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRequest {
    /// `req-<20 alphanumerics>`.
    pub id: String,
    /// Bumped by every change; the store's compare-and-set key.
    pub version: u64,
    /// Lifecycle state as stored (see [`AccessRequest::state_at`] for expiry).
    pub state: RequestState,
    /// The requester's subject.
    pub requester: String,
    /// Every policy subject of the requester when asking (its own and `group:<g>`), so
    /// policy is checked for the requester, not for whoever approves.
    pub requester_subjects: Vec<String>,
    /// The requester's short name, used in the generated username.
    pub requester_display: String,
    /// The mount of the role.
    pub mount: String,
    /// The role.
    pub role: String,
    /// Why the requester needs it.
    pub reason: String,
    /// How long the credential should live.
    pub ttl: Ttl,
    /// Subjects that may read the credential once approved (globs, like policy subjects).
    pub subjects: Vec<String>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it expires if still pending.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Approvals so far, in order.
    pub approvals: Vec<Decision>,
    /// The denial, if denied.
    pub denial: Option<Decision>,
    /// Who withdrew it, and when.
    pub withdrawal: Option<Decision>,
    /// The lease issued on approval.
    pub lease_id: Option<String>,
}

/// Why a decision on a request is refused; each message names the request and what stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    /// The requester tried to decide their own request.
    #[error("{who} made request {id} and may not decide it; another approver must")]
    OwnRequest {
        /// The request.
        id: String,
        /// The caller.
        who: String,
    },
    /// The caller may read the credential it would approve (a subject of the request).
    #[error(
        "{who} is a subject of request {id} (may read its credential) and may not decide it; another approver must"
    )]
    Subject {
        /// The request.
        id: String,
        /// The caller.
        who: String,
    },
    /// The caller is not among the approvers policy names.
    #[error("{who} is not an approver of request {id}")]
    NotApprover {
        /// The request.
        id: String,
        /// The caller.
        who: String,
    },
    /// The caller already approved it.
    #[error(
        "{who} already approved request {id}; it needs {missing} more approval(s) from other approvers"
    )]
    AlreadyApproved {
        /// The request.
        id: String,
        /// The caller.
        who: String,
        /// Approvals still missing.
        missing: usize,
    },
    /// The request was decided already (or withdrawn, or expired): decisions are final.
    #[error("request {id} is already {what}")]
    Final {
        /// The request.
        id: String,
        /// The existing outcome, e.g. `approved (by user:kari at 2026-…)`.
        what: String,
    },
}

/// What an approval did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    /// Counted; this many more are needed.
    Counted {
        /// Approvals still missing.
        missing: usize,
    },
    /// That was the last one needed: issue the credential.
    Complete,
}

/// The approval rule policy sets for a request's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRule {
    /// Subject globs allowed to approve.
    pub approvers: Vec<String>,
    /// Distinct approvals needed.
    pub min_approvals: usize,
}

fn format_time(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

impl AccessRequest {
    /// A fresh id.
    pub fn generate_id() -> String {
        format!("{REQUEST_ID_PREFIX}{}", random_alphanumeric(20))
    }

    /// `<mount>/<role>`.
    pub fn role_path(&self) -> String {
        format!("{}/{}", self.mount, self.role)
    }

    /// The state at `now`: a pending request past its expiry is expired even before the
    /// store says so.
    pub fn state_at(&self, now: OffsetDateTime) -> RequestState {
        if self.state == RequestState::Pending && now >= self.expires_at {
            RequestState::Expired
        } else {
            self.state
        }
    }

    /// Whether the credential issued on approval may still be live at `now`.
    pub fn credential_may_be_live(&self, now: OffsetDateTime) -> bool {
        self.lease_id.is_some() && self.credential_end().is_some_and(|end| now < end)
    }

    /// The latest a credential issued on approval can live to: it is issued right after the
    /// last approval and cannot outlive the approved TTL (a minute's slack covers the issuance
    /// itself). `None` before any approval.
    fn credential_end(&self) -> Option<OffsetDateTime> {
        let approved = self.approvals.last()?.at;
        Some(Ttl::from_secs(self.ttl.as_secs().saturating_add(60)).after(approved))
    }

    /// When this request stopped mattering: its denial, withdrawal or expiry, and not before
    /// the credential issued on approval can have ended. `None` while it is pending.
    pub fn finished_at(&self) -> Option<OffsetDateTime> {
        let decided = match self.state {
            RequestState::Pending => return None,
            RequestState::Denied => self.denial.as_ref().map(|d| d.at),
            RequestState::Withdrawn => self.withdrawal.as_ref().map(|d| d.at),
            RequestState::Expired => Some(self.expires_at),
            RequestState::Approved => self.approvals.last().map(|d| d.at),
        }
        .unwrap_or(self.created_at);
        Some(
            self.credential_end()
                .map_or(decided, |end| end.max(decided)),
        )
    }

    /// Whether any of `subjects` (a caller's policy subjects) may read the credential: a
    /// request's subjects are exact identities or groups, never globs.
    pub fn readable_by(&self, subjects: &[String]) -> bool {
        subjects.iter().any(|s| self.subjects.contains(s))
    }

    /// What has been decided, for the message that refuses a further decision.
    fn outcome(&self, now: OffsetDateTime) -> String {
        let by = |d: &Decision| format!("(by {} at {})", d.approver, format_time(d.at));
        match self.state_at(now) {
            RequestState::Approved => {
                let by: Vec<String> = self.approvals.iter().map(by).collect();
                format!("approved {}", by.join(", "))
            }
            RequestState::Denied => match &self.denial {
                Some(d) => format!("denied {}", by(d)),
                None => "denied".into(),
            },
            RequestState::Withdrawn => match &self.withdrawal {
                Some(d) => format!("withdrawn {}", by(d)),
                None => "withdrawn".into(),
            },
            RequestState::Expired => {
                format!("expired (at {})", format_time(self.expires_at))
            }
            RequestState::Pending => "pending".into(),
        }
    }

    /// Refuses a decision by `who` (with policy subjects `who_subjects`) unless `who` is not
    /// the requester nor a subject, `rule` names `who` as an approver, and the request is
    /// pending (checked last, so only an approver learns how it was decided).
    fn check_decider(
        &self,
        who: &str,
        who_subjects: &[String],
        rule: &ApprovalRule,
        now: OffsetDateTime,
    ) -> Result<(), DecisionError> {
        let (id, who) = (self.id.clone(), who.to_string());
        if who == self.requester {
            return Err(DecisionError::OwnRequest { id, who });
        }
        if !who_subjects.iter().any(|s| any_match(&rule.approvers, s)) {
            return Err(DecisionError::NotApprover { id, who });
        }
        if who_subjects.iter().any(|s| self.subjects.contains(s)) {
            return Err(DecisionError::Subject { id, who });
        }
        self.ensure_pending(now)
    }

    /// Refuses any change but a withdrawal once the request is decided, withdrawn or expired,
    /// naming how it ended.
    pub fn ensure_pending(&self, now: OffsetDateTime) -> Result<(), DecisionError> {
        if self.state_at(now) == RequestState::Pending {
            return Ok(());
        }
        Err(DecisionError::Final {
            id: self.id.clone(),
            what: self.outcome(now),
        })
    }

    /// Records `who`'s approval; the request becomes approved when `rule.min_approvals`
    /// distinct approvers have approved.
    pub fn approve(
        &mut self,
        who: &str,
        who_subjects: &[String],
        rule: &ApprovalRule,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Approval, DecisionError> {
        self.check_decider(who, who_subjects, rule, now)?;
        let needed = rule.min_approvals.max(1);
        if self.approvals.iter().any(|d| d.approver == who) {
            if self.approvals.len() >= needed {
                // Policy now needs fewer approvals than were given: this completes it.
                self.state = RequestState::Approved;
                self.version = self.version.saturating_add(1);
                return Ok(Approval::Complete);
            }
            return Err(DecisionError::AlreadyApproved {
                id: self.id.clone(),
                who: who.into(),
                missing: needed.saturating_sub(self.approvals.len()),
            });
        }
        self.approvals.push(Decision {
            approver: who.into(),
            reason: reason.into(),
            at: now,
        });
        self.version = self.version.saturating_add(1);
        let missing = needed.saturating_sub(self.approvals.len());
        if missing == 0 {
            self.state = RequestState::Approved;
            Ok(Approval::Complete)
        } else {
            Ok(Approval::Counted { missing })
        }
    }

    /// Records `who`'s denial: one approver's denial ends the request.
    pub fn deny(
        &mut self,
        who: &str,
        who_subjects: &[String],
        rule: &ApprovalRule,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<(), DecisionError> {
        self.check_decider(who, who_subjects, rule, now)?;
        self.denial = Some(Decision {
            approver: who.into(),
            reason: reason.into(),
            at: now,
        });
        self.state = RequestState::Denied;
        self.version = self.version.saturating_add(1);
        Ok(())
    }

    /// Marks the request withdrawn by `who`; refused once it is denied, withdrawn or expired.
    pub fn withdraw(&mut self, who: &str, now: OffsetDateTime) -> Result<(), DecisionError> {
        match self.state_at(now) {
            RequestState::Pending | RequestState::Approved => {
                self.withdrawal = Some(Decision {
                    approver: who.into(),
                    reason: String::new(),
                    at: now,
                });
                self.state = RequestState::Withdrawn;
                self.version = self.version.saturating_add(1);
                Ok(())
            }
            _ => Err(DecisionError::Final {
                id: self.id.clone(),
                what: self.outcome(now),
            }),
        }
    }

    /// Marks a pending request past its expiry as expired; false when it is not one.
    pub fn expire(&mut self, now: OffsetDateTime) -> bool {
        let expired = self.state == RequestState::Pending && self.state_at(now) != self.state;
        if expired {
            self.state = RequestState::Expired;
            self.version = self.version.saturating_add(1);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-11-25 12:00 UTC);

    fn request() -> AccessRequest {
        AccessRequest {
            id: "req-1".into(),
            version: 0,
            state: RequestState::Pending,
            requester: "user:ola".into(),
            requester_subjects: vec!["user:ola".into(), "group:dev".into()],
            requester_display: "oidc-ola".into(),
            mount: "database".into(),
            role: "appdb-admin".into(),
            reason: "incident 42".into(),
            ttl: Ttl::from_secs(3600),
            subjects: vec!["user:ola".into(), "group:oncall".into()],
            created_at: NOW,
            expires_at: datetime!(2026-11-25 13:00 UTC),
            approvals: vec![],
            denial: None,
            withdrawal: None,
            lease_id: None,
        }
    }

    fn rule(min: usize) -> ApprovalRule {
        ApprovalRule {
            approvers: vec!["group:dba".into(), "user:ola".into()],
            min_approvals: min,
        }
    }

    fn who(subject: &str) -> Vec<String> {
        vec![subject.into(), "group:dba".into()]
    }

    #[test]
    fn two_of_many_approvals_complete_the_request() {
        let mut r = request();
        assert_eq!(
            r.approve("user:kari", &who("user:kari"), &rule(2), "ok", NOW),
            Ok(Approval::Counted { missing: 1 })
        );
        assert_eq!(
            r.approve("user:kari", &who("user:kari"), &rule(2), "again", NOW)
                .unwrap_err()
                .to_string(),
            "user:kari already approved request req-1; it needs 1 more approval(s) from other approvers"
        );
        assert_eq!(
            r.approve("user:per", &who("user:per"), &rule(2), "ok", NOW),
            Ok(Approval::Complete)
        );
        assert_eq!(r.state, RequestState::Approved);
        assert_eq!(r.version, 2);
        assert_eq!(
            r.deny("user:eva", &who("user:eva"), &rule(2), "no", NOW)
                .unwrap_err()
                .to_string(),
            "request req-1 is already approved (by user:kari at 2026-11-25T12:00:00Z), \
             (by user:per at 2026-11-25T12:00:00Z)"
        );
    }

    #[test]
    fn the_requester_and_strangers_cannot_decide() {
        let mut r = request();
        assert_eq!(
            r.approve("user:ola", &who("user:ola"), &rule(1), "me", NOW)
                .unwrap_err()
                .to_string(),
            "user:ola made request req-1 and may not decide it; another approver must"
        );
        assert_eq!(
            r.deny("user:x", &["user:x".to_string()], &rule(1), "", NOW)
                .unwrap_err()
                .to_string(),
            "user:x is not an approver of request req-1"
        );
        assert_eq!(r.version, 0, "refusals change nothing");
    }

    #[test]
    fn a_denial_is_final_and_names_who() {
        let mut r = request();
        r.deny("user:kari", &who("user:kari"), &rule(1), "no", NOW)
            .unwrap();
        assert_eq!(
            r.approve("user:per", &who("user:per"), &rule(1), "", NOW)
                .unwrap_err()
                .to_string(),
            "request req-1 is already denied (by user:kari at 2026-11-25T12:00:00Z)"
        );
        assert!(r.withdraw("user:ola", NOW).is_err());
    }

    #[test]
    fn pending_requests_expire() {
        let mut r = request();
        let later = datetime!(2026-11-25 13:00 UTC);
        assert_eq!(r.state_at(later), RequestState::Expired);
        assert_eq!(
            r.approve("user:kari", &who("user:kari"), &rule(1), "", later)
                .unwrap_err()
                .to_string(),
            "request req-1 is already expired (at 2026-11-25T13:00:00Z)"
        );
        assert!(!r.expire(NOW));
        assert!(r.expire(later));
        assert_eq!(r.state, RequestState::Expired);
    }

    #[test]
    fn subjects_read_exactly_and_may_not_approve() {
        let mut r = request();
        assert!(r.readable_by(&["user:x".into(), "group:oncall".into()]));
        assert!(!r.readable_by(&["user:x".into(), "group:dev".into()]));
        r.subjects.push("user:*".into());
        assert!(!r.readable_by(&["user:x".into()]), "no globs");
        // An approver who would receive the credential cannot approve it.
        let oncall_dba = vec![
            "user:eva".to_string(),
            "group:dba".into(),
            "group:oncall".into(),
        ];
        assert_eq!(
            r.approve("user:eva", &oncall_dba, &rule(1), "", NOW)
                .unwrap_err()
                .to_string(),
            "user:eva is a subject of request req-1 (may read its credential) and may not decide it; another approver must"
        );
    }

    #[test]
    fn a_credential_can_live_only_for_its_approved_time() {
        let mut r = request();
        r.approve("user:kari", &who("user:kari"), &rule(1), "ok", NOW)
            .unwrap();
        assert!(!r.credential_may_be_live(NOW), "no lease yet");
        r.lease_id = Some("database/creds/appdb-admin/x".into());
        assert!(r.credential_may_be_live(datetime!(2026-11-25 13:00 UTC)));
        assert!(!r.credential_may_be_live(datetime!(2026-11-25 13:01 UTC)));
    }

    #[test]
    fn a_lowered_requirement_completes_on_a_repeated_approval() {
        let mut r = request();
        r.approve("user:kari", &who("user:kari"), &rule(2), "ok", NOW)
            .unwrap();
        assert_eq!(
            r.approve("user:kari", &who("user:kari"), &rule(1), "again", NOW),
            Ok(Approval::Complete)
        );
        assert_eq!(r.state, RequestState::Approved);
        assert_eq!(r.approvals.len(), 1);
    }
}
