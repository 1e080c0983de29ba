//! Who a caller is, once a credential has been checked.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A verified caller: a Kubernetes service account or a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The policy subject: `system:serviceaccount:<namespace>:<name>` or `user:<name>`, after
    /// the mount's subject prefix if it has one (`partner/user:<name>`).
    pub subject: String,
    /// Groups the caller belongs to (matched by policy as `group:<name>`, after the subject
    /// prefix).
    pub groups: Vec<String>,
    /// A short name for generated usernames and logs, e.g. `kubernetes-team-a-app`.
    pub display_name: String,
    /// Facts about the login shown by token lookup (role, namespace, service account…).
    pub metadata: BTreeMap<String, String>,
    /// What the auth mount puts before each of this caller's policy subjects (`eu/`), so
    /// that callers of two mounts never share one; `subject` carries it already.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject_prefix: String,
}

impl Identity {
    /// The subject of a Kubernetes service account.
    pub fn service_account_subject(namespace: &str, name: &str) -> String {
        format!("system:serviceaccount:{namespace}:{name}")
    }

    /// This identity as an auth mount with subject prefix `prefix` (`eu/`, or empty) names
    /// it: the prefix before its subject, and remembered for its groups'.
    pub fn under_prefix(self, prefix: &str) -> Identity {
        Identity {
            subject: format!("{prefix}{}", self.subject),
            subject_prefix: prefix.to_string(),
            ..self
        }
    }

    /// Every subject string policy grants can match: the caller's own and `group:<g>` per
    /// group (each after the mount's subject prefix).
    pub fn policy_subjects(&self) -> Vec<String> {
        let prefix = &self.subject_prefix;
        std::iter::once(self.subject.clone())
            .chain(self.groups.iter().map(|g| format!("{prefix}group:{g}")))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_become_group_subjects() {
        let id = Identity {
            subject: "user:ola@example.com".into(),
            groups: vec!["dba".into(), "team-a".into()],
            display_name: "jwt-ola".into(),
            metadata: BTreeMap::new(),
            subject_prefix: String::new(),
        };
        assert_eq!(
            id.policy_subjects(),
            vec!["user:ola@example.com", "group:dba", "group:team-a"]
        );
        let scoped = id.under_prefix("eu/");
        assert_eq!(scoped.subject, "eu/user:ola@example.com");
        assert_eq!(
            scoped.policy_subjects(),
            vec!["eu/user:ola@example.com", "eu/group:dba", "eu/group:team-a"]
        );
        assert_eq!(
            Identity::service_account_subject("ns", "sa"),
            "system:serviceaccount:ns:sa"
        );
    }
}
