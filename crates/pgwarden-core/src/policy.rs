//! Declarative grants: which subjects may get which `<mount>/<role>`, for at most how long.

use crate::request::ApprovalRule;
use crate::{CoreError, Ttl, glob::any_match};
use serde::{Deserialize, Serialize};

/// The whole policy file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Grants, each independent; a request is allowed when any grant allows it.
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// One grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Subject globs: `system:serviceaccount:<ns>:<sa>`, `group:<g>`, `user:<u>`.
    pub subjects: Vec<String>,
    /// Role globs as `<mount>/<role>`.
    pub roles: Vec<String>,
    /// Caps leases below the role's own max TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<Ttl>,
    /// Credentials for these roles are issued only through an approved access request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_approval: bool,
    /// Subject globs that may approve or deny requests under this grant.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Distinct approvals a request needs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_approvals: Option<usize>,
}

impl Grant {
    /// The approval rule of a grant that requires approval.
    pub fn approval_rule(&self) -> Option<ApprovalRule> {
        self.requires_approval.then(|| ApprovalRule {
            approvers: self.approvers.clone(),
            min_approvals: self.min_approvals.unwrap_or(1),
        })
    }
}

/// Whether `subject` is one policy can name: `system:serviceaccount:…`, `group:…` or `user:…`,
/// after an auth mount's `<subject prefix>/` or not.
pub fn is_subject(subject: &str) -> bool {
    let unprefixed = match subject.split_once('/') {
        Some((prefix, rest)) if is_subject_prefix(prefix) => rest,
        _ => subject,
    };
    SUBJECT_KINDS
        .iter()
        .any(|kind| unprefixed.starts_with(kind) && unprefixed.len() > kind.len())
}

/// The longest subject prefix.
pub const MAX_SUBJECT_PREFIX: usize = 32;

/// Whether `prefix` may be an auth mount's subject prefix: 1 to [`MAX_SUBJECT_PREFIX`]
/// lowercase letters, digits or `-`.
pub fn is_subject_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_SUBJECT_PREFIX
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// The root token's subject.
const ROOT: &str = "root";

fn bad_subject(subjects: &[String]) -> Option<&String> {
    subjects.iter().find(|s| !is_subject(s))
}

/// Why a request is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Index of the grant that allows it (the most generous one when several do).
    pub grant: usize,
    /// The lease cap it sets, if any.
    pub max_ttl: Option<Ttl>,
}

const SUBJECT_KINDS: [&str; 3] = ["system:serviceaccount:", "group:", "user:"];

impl Policy {
    /// Checks every grant: subjects of a known kind, roles shaped `<mount>/<role>`.
    pub fn validate(&self) -> Result<(), CoreError> {
        for (index, grant) in self.grants.iter().enumerate() {
            let invalid = |reason: String| CoreError::InvalidPolicy {
                grant: index.saturating_add(1),
                reason,
            };
            if grant.subjects.is_empty() || grant.roles.is_empty() {
                return Err(invalid("needs at least one subject and one role".into()));
            }
            // `root`: the root token, which issues anything without policy; a grant names it
            // only for the access requests it makes (pgwarden operator's, on namespaces' behalf).
            if let Some(bad) = grant.subjects.iter().find(|s| *s != ROOT && !is_subject(s)) {
                return Err(invalid(format!(
                    "subject {bad:?} must be root or start with system:serviceaccount:, group: or user: (after a mount's subject_prefix/, if any)"
                )));
            }
            if let Some(bad) = bad_subject(&grant.approvers) {
                return Err(invalid(format!(
                    "approver {bad:?} must start with system:serviceaccount:, group: or user: (after a mount's subject_prefix/, if any)"
                )));
            }
            if grant.requires_approval && grant.approvers.is_empty() {
                return Err(invalid(
                    "requires_approval needs approvers: the subjects that may approve".into(),
                ));
            }
            if !grant.requires_approval
                && (!grant.approvers.is_empty() || grant.min_approvals.is_some())
            {
                return Err(invalid(
                    "approvers and min_approvals apply only with requires_approval: true".into(),
                ));
            }
            if grant.min_approvals == Some(0) {
                return Err(invalid("min_approvals must be at least 1".into()));
            }
            if let Some(bad) = grant.roles.iter().find(|r| {
                let (mount, role) = r.split_once('/').unwrap_or(("", ""));
                mount.is_empty() || role.is_empty()
            }) {
                return Err(invalid(format!(
                    "role {bad:?} must look like <mount>/<role>, e.g. database/appdb-readonly"
                )));
            }
            if grant.max_ttl.is_some_and(Ttl::is_zero) {
                return Err(invalid("max_ttl must be positive".into()));
            }
        }
        Ok(())
    }

    /// Grants naming any of `subjects` and `role` of `mount`, with their indexes.
    fn matching<'a>(
        &'a self,
        subjects: &'a [String],
        mount: &str,
        role: &str,
    ) -> impl Iterator<Item = (usize, &'a Grant)> + 'a {
        let wanted = format!("{mount}/{role}");
        self.grants.iter().enumerate().filter(move |(_, g)| {
            subjects.iter().any(|s| any_match(&g.subjects, s)) && any_match(&g.roles, &wanted)
        })
    }

    /// Whether any of `subjects` may get `role` of `mount` directly (without an approved
    /// request); the most generous grant wins.
    pub fn allows(&self, subjects: &[String], mount: &str, role: &str) -> Option<Allowed> {
        self.matching(subjects, mount, role)
            .filter(|(_, g)| !g.requires_approval)
            .map(|(grant, g)| Allowed {
                grant,
                max_ttl: g.max_ttl,
            })
            .max_by_key(|a| a.max_ttl.map_or(u64::MAX, Ttl::as_secs))
    }

    /// Whether any of `subjects` may read static role `name`'s password on `mount`. Only a
    /// grant naming the path under `<mount>/static-creds/` in so many words counts: a pattern
    /// like `database/*` grants dynamic roles, never static passwords. Approval grants never
    /// do (a static password lives until its next rotation; it cannot be lent for a while).
    pub fn allows_static(&self, subjects: &[String], mount: &str, name: &str) -> bool {
        let wanted = format!("{mount}/static-creds/{name}");
        let names_static = |pattern: &str| {
            pattern
                .split_once('/')
                .is_some_and(|(_, path)| path.starts_with("static-creds/"))
        };
        self.grants.iter().any(|g| {
            !g.requires_approval
                && subjects.iter().any(|s| any_match(&g.subjects, s))
                && g.roles
                    .iter()
                    .any(|p| names_static(p) && crate::glob::glob_match(p, &wanted))
        })
    }

    /// Whether any of `subjects` may get `role` of `mount` through an approved request, and
    /// under which rule; the most generous grant wins.
    pub fn allows_with_approval(
        &self,
        subjects: &[String],
        mount: &str,
        role: &str,
    ) -> Option<(Allowed, ApprovalRule)> {
        self.matching(subjects, mount, role)
            .filter_map(|(grant, g)| {
                let rule = g.approval_rule()?;
                Some((
                    Allowed {
                        grant,
                        max_ttl: g.max_ttl,
                    },
                    rule,
                ))
            })
            .max_by_key(|(a, _)| a.max_ttl.map_or(u64::MAX, Ttl::as_secs))
    }

    /// The grants that name `subject`, with their indexes.
    pub fn grants_for<'a>(
        &'a self,
        subject: &'a str,
    ) -> impl Iterator<Item = (usize, &'a Grant)> + 'a {
        self.grants
            .iter()
            .enumerate()
            .filter(move |(_, g)| any_match(&g.subjects, subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            grants: vec![
                Grant {
                    subjects: vec![
                        "system:serviceaccount:team-a:*".into(),
                        "group:team-a".into(),
                    ],
                    roles: vec![
                        "database/appdb-user".into(),
                        "database/appdb-readonly".into(),
                    ],
                    max_ttl: Some(Ttl::from_secs(8 * 3600)),
                    ..grant()
                },
                Grant {
                    subjects: vec!["group:dba".into()],
                    roles: vec!["database/*".into()],
                    max_ttl: None,
                    ..grant()
                },
                Grant {
                    subjects: vec!["group:team-a".into()],
                    roles: vec!["database/appdb-admin".into()],
                    max_ttl: Some(Ttl::from_secs(3600)),
                    requires_approval: true,
                    approvers: vec!["group:dba".into()],
                    min_approvals: Some(2),
                },
            ],
        }
    }

    fn grant() -> Grant {
        Grant {
            subjects: vec![],
            roles: vec![],
            max_ttl: None,
            requires_approval: false,
            approvers: vec![],
            min_approvals: None,
        }
    }

    #[test]
    fn static_passwords_need_a_grant_that_names_them() {
        let ops = subjects(&["group:ops"]);
        let p = Policy {
            grants: vec![
                Grant {
                    subjects: vec!["group:ops".into()],
                    roles: vec!["database/*".into(), "database/static-creds/legacy-*".into()],
                    ..grant()
                },
                Grant {
                    subjects: vec!["group:ops".into()],
                    roles: vec!["database/static-creds/approved".into()],
                    requires_approval: true,
                    approvers: vec!["group:dba".into()],
                    ..grant()
                },
            ],
        };
        assert!(p.allows_static(&ops, "database", "legacy-billing"));
        assert!(
            !p.allows_static(&ops, "database", "other"),
            "database/* grants dynamic roles only"
        );
        assert!(
            !p.allows_static(&ops, "database", "approved"),
            "no approval path"
        );
        assert!(!p.allows_static(&subjects(&["group:dev"]), "database", "legacy-billing"));
        assert!(!p.allows_static(&ops, "other", "legacy-billing"));
    }

    #[test]
    fn approval_grants_never_allow_directly() {
        let p = policy();
        let dev = subjects(&["user:ola", "group:team-a"]);
        assert_eq!(p.allows(&dev, "database", "appdb-admin"), None);
        let (allowed, rule) = p
            .allows_with_approval(&dev, "database", "appdb-admin")
            .unwrap();
        assert_eq!(allowed.grant, 2);
        assert_eq!(rule.min_approvals, 2);
        assert_eq!(rule.approvers, vec!["group:dba".to_string()]);
    }

    #[test]
    fn approval_settings_are_validated() {
        let mut p = policy();
        p.grants[2].approvers.clear();
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "policy grant 3: requires_approval needs approvers: the subjects that may approve"
        );
        let mut p = policy();
        p.grants[2].requires_approval = false;
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "policy grant 3: approvers and min_approvals apply only with requires_approval: true"
        );
        let mut p = policy();
        p.grants[2].min_approvals = Some(0);
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "policy grant 3: min_approvals must be at least 1"
        );
        let mut p = policy();
        p.grants[2].approvers.push("dba".into());
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "policy grant 3: approver \"dba\" must start with system:serviceaccount:, group: or user: (after a mount's subject_prefix/, if any)"
        );
    }

    #[test]
    fn subjects_may_carry_a_mount_prefix() {
        for subject in [
            "user:ola@example.com",
            "partner/user:ola@example.com",
            "eu-1/system:serviceaccount:team-a:*",
            "partner/group:dba",
            "user:a/b",
        ] {
            assert!(is_subject(subject), "{subject}");
        }
        for subject in [
            "partner/ola",
            "*/user:ola",
            "Partner/user:ola",
            "/user:ola",
            "a/b/user:ola",
            "partner/user:",
        ] {
            assert!(!is_subject(subject), "{subject}");
        }
    }

    fn subjects(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grants_match_subjects_and_roles_by_glob() {
        let p = policy();
        let app = subjects(&["system:serviceaccount:team-a:app"]);
        assert_eq!(
            p.allows(&app, "database", "appdb-user"),
            Some(Allowed {
                grant: 0,
                max_ttl: Some(Ttl::from_secs(28_800))
            })
        );
        assert_eq!(p.allows(&app, "database", "appdb-admin"), None);
        assert_eq!(
            p.allows(
                &subjects(&["system:serviceaccount:team-b:app"]),
                "database",
                "appdb-user"
            ),
            None
        );
        let dba = subjects(&["user:kari", "group:team-a", "group:dba"]);
        assert_eq!(
            p.allows(&dba, "database", "appdb-user"),
            Some(Allowed {
                grant: 1,
                max_ttl: None
            })
        );
        assert_eq!(
            p.grants_for("group:dba")
                .map(|(i, _)| i)
                .collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn validation_names_the_grant_and_the_fix() {
        let mut p = policy();
        p.grants[1].subjects.push("dba".into());
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "policy grant 2: subject \"dba\" must be root or start with system:serviceaccount:, group: or user: (after a mount's subject_prefix/, if any)"
        );
        let mut p = policy();
        p.grants[0].roles.push("appdb-admin".into());
        assert_eq!(
            p.validate().unwrap_err().to_string(),
            "policy grant 1: role \"appdb-admin\" must look like <mount>/<role>, e.g. database/appdb-readonly"
        );
        assert!(policy().validate().is_ok());
    }
}
