//! The HTTP API's JSON shapes, shared by the server (which writes them) and the client (which
//! reads them). They follow Vault's: a response envelope around `data`, an `auth` block for
//! logins, `{"errors": [...]}` for failures.

use crate::Ttl;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use serde_with::formats::CommaSeparator;
use serde_with::{PickFirst, StringWithSeparator, serde_as};
use std::collections::BTreeMap;

/// Vault's response envelope: `data` plus, for a credential, its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretResponse<T> {
    /// A fresh id per response.
    pub request_id: String,
    /// The lease to renew or revoke; empty when there is none.
    #[serde(default)]
    pub lease_id: String,
    /// Whether the lease can be renewed.
    #[serde(default)]
    pub renewable: bool,
    /// Seconds the lease lasts from now; 0 without a lease.
    #[serde(default)]
    pub lease_duration: u64,
    /// The payload.
    pub data: T,
    /// Response wrapping, which pgwarden does not do: always null.
    #[serde(default)]
    pub wrap_info: Option<serde_json::Value>,
    /// Things the caller should know, e.g. that the max TTL cut a renewal short.
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
    /// The token block of a login or token renewal.
    #[serde(default)]
    pub auth: Option<AuthBlock>,
}

impl<T> SecretResponse<T> {
    /// An envelope around `data` without a lease.
    pub fn new(request_id: String, data: T) -> SecretResponse<T> {
        SecretResponse {
            request_id,
            lease_id: String::new(),
            renewable: false,
            lease_duration: 0,
            data,
            wrap_info: None,
            warnings: None,
            auth: None,
        }
    }

    /// Adds a renewable lease lasting `ttl`.
    pub fn with_lease(mut self, lease_id: &str, ttl: Ttl) -> SecretResponse<T> {
        self.lease_id = lease_id.to_string();
        self.renewable = true;
        self.lease_duration = ttl.as_secs();
        self
    }

    /// Adds a warning when there is one.
    pub fn with_warning(mut self, warning: Option<String>) -> SecretResponse<T> {
        self.warnings = warning.map(|w| vec![w]);
        self
    }
}

fn expose<S: Serializer>(secret: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(secret.expose_secret())
}

fn expose_optional<S: Serializer>(
    secret: &Option<SecretString>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => expose(secret, serializer),
        None => serializer.serialize_none(),
    }
}

fn default_host() -> String {
    "localhost".into()
}

fn default_port() -> u16 {
    5432
}

/// `data` of `GET <mount>/creds/<role>`: a database login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbCredential {
    /// The database user.
    pub username: String,
    /// Its password.
    #[serde(serialize_with = "expose")]
    pub password: SecretString,
    /// Database host (`localhost` when absent).
    #[serde(default = "default_host")]
    pub host: String,
    /// Database port (5432 when absent).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database name.
    #[serde(default)]
    pub database: String,
    /// Every `host:port` when the connection names several (primary and replicas), so clients
    /// can read from replicas with the same user; absent for one host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// `data` of `GET <mount>/static-roles/<name>`: Vault's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRoleInfo {
    /// The connection the user lives in.
    pub db_name: String,
    /// The database user.
    pub username: String,
    /// Statements that set the password; empty: pgwarden's own.
    pub rotation_statements: Vec<String>,
    /// Seconds between rotations, when rotated by period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period: Option<u64>,
    /// The cron schedule, when rotated by schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_schedule: Option<String>,
    /// When the password last changed (RFC 3339), absent before the first rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_vault_rotation: Option<String>,
    /// Always `password`.
    pub credential_type: String,
}

/// `data` of `GET <mount>/static-creds/<name>`: the current password of a static role.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaticCredential {
    /// The database user.
    pub username: String,
    /// Its current password.
    #[serde(serialize_with = "expose")]
    pub password: SecretString,
    /// When it was set (RFC 3339).
    pub last_vault_rotation: String,
    /// Seconds between rotations, when rotated by period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period: Option<u64>,
    /// The cron schedule, when rotated by schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_schedule: Option<String>,
    /// Seconds until the next rotation.
    pub ttl: u64,
    /// Database host, as in [`DbCredential`] (pgwarden's addition).
    #[serde(default = "default_host")]
    pub host: String,
    /// Database port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Database name.
    #[serde(default)]
    pub database: String,
    /// Every `host:port` when the connection names several; absent for one host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// `data` of `PUT sys/leases/lookup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseLookup {
    /// The lease id.
    pub id: String,
    /// When it was issued (RFC 3339).
    pub issue_time: String,
    /// When it expires unless renewed (RFC 3339).
    pub expire_time: String,
    /// When it was last renewed (RFC 3339).
    #[serde(default)]
    pub last_renewal: Option<String>,
    /// Whether it can still be renewed.
    pub renewable: bool,
    /// Seconds left.
    pub ttl: u64,
    /// `pending`, `active` or `revoking` (pgwarden's addition).
    pub state: String,
    /// While `revoking`: `requested`, `expired` or `rollback` (pgwarden's addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_reason: Option<String>,
    /// Failed attempts to drop its user (pgwarden's addition).
    #[serde(default)]
    pub revocation_attempts: u32,
    /// Why the last attempt failed (pgwarden's addition).
    #[serde(default)]
    pub last_error: Option<String>,
}

/// Vault's `auth` block: the token a login issued, or the one just renewed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthBlock {
    /// The token; absent on renewal.
    #[serde(serialize_with = "expose_optional")]
    pub client_token: Option<SecretString>,
    /// Its public handle.
    pub accessor: String,
    /// Always `["default"]`: pgwarden's policy is not Vault's.
    pub policies: Vec<String>,
    /// Same as `policies`.
    pub token_policies: Vec<String>,
    /// Facts about the login.
    pub metadata: BTreeMap<String, String>,
    /// Seconds the token lasts.
    pub lease_duration: u64,
    /// Whether it can be renewed.
    pub renewable: bool,
    /// The caller's subject.
    pub entity_id: String,
    /// Always `service`.
    pub token_type: String,
    /// Always true: tokens have no parent.
    pub orphan: bool,
}

/// `data` of `GET auth/token/lookup-self`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenLookup {
    /// The token's public handle (`root` for the root token).
    pub accessor: String,
    /// A short name for the caller.
    pub display_name: String,
    /// The caller's subject (absent for root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<String>,
    /// `["root"]` or `["default"]`.
    pub policies: Vec<String>,
    /// Facts about the login (absent for root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<BTreeMap<String, String>>,
    /// The login path (absent for root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// When the token was issued (absent for root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_time: Option<String>,
    /// When it expires (null for root).
    pub expire_time: Option<String>,
    /// Seconds left (0 for root, which does not expire).
    pub ttl: u64,
    /// Whether it can be renewed.
    pub renewable: bool,
    /// Always `service`.
    #[serde(rename = "type")]
    pub token_type: String,
    /// The groups policy matches the caller by (`group:<name>`), sorted; absent when none
    /// (and for root).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
}

/// `data` of a LIST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// The names found.
    pub keys: Vec<String>,
}

/// One user no lease names, in `data.orphans` of `GET sys/orphans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanUser {
    /// The database user.
    pub username: String,
    /// The connection it was found through (`<mount>/<name>`).
    pub connection: String,
    /// When the sweep first saw it (RFC 3339).
    pub first_seen: String,
    /// When it will be dropped, if dropping is on (RFC 3339).
    pub drop_at: Option<String>,
}

/// `data` of `GET sys/orphans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanList {
    /// Every user found.
    pub orphans: Vec<OrphanUser>,
}

/// `GET sys/health`, in Vault's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always true.
    pub initialized: bool,
    /// Always false: pgwarden has no seal.
    pub sealed: bool,
    /// Always false.
    pub standby: bool,
    /// Always false.
    pub performance_standby: bool,
    /// Always `disabled`.
    pub replication_performance_mode: String,
    /// Always `disabled`.
    pub replication_dr_mode: String,
    /// The server's clock, Unix seconds.
    pub server_time_utc: i64,
    /// pgwarden's version.
    pub version: String,
    /// Always `pgwarden`.
    pub cluster_name: String,
    /// Whether this replica leads (reaps expired leases); every replica serves every request.
    #[serde(default)]
    pub leader: bool,
}

/// Body of `PUT <mount>/config/<name>`, in Vault's shape; omitted fields keep their previous
/// value on update.
#[serde_as]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectionWrite {
    /// Must be `postgresql-database-plugin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_name: Option<String>,
    /// The URL, with optional `{{username}}`/`{{password}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_url: Option<String>,
    /// Administrative user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Administrative password.
    #[serde(
        default,
        serialize_with = "expose_optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub password: Option<SecretString>,
    /// Role globs: a list, or a comma-separated string as Vault accepts.
    #[serde_as(as = "Option<PickFirst<(_, StringWithSeparator<CommaSeparator, String>)>>")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_roles: Option<Vec<String>>,
    /// Connect before saving (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify_connection: Option<bool>,
}

/// `connection_details` of a connection read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionDetails {
    /// The URL, its password (if any) shown as `{{password}}`.
    pub connection_url: String,
    /// Administrative user.
    pub username: String,
}

/// `data` of `GET <mount>/config/<name>`: never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    /// Always `postgresql-database-plugin`.
    pub plugin_name: String,
    /// Where and as whom.
    pub connection_details: ConnectionDetails,
    /// Role globs this connection serves.
    pub allowed_roles: Vec<String>,
    /// Whether it is checked before saving and at start-up.
    pub verify_connection: bool,
    /// Always empty.
    pub password_policy: String,
    /// Always empty.
    pub root_credentials_rotate_statements: Vec<String>,
    /// `file` or `api` (pgwarden's addition).
    pub source: String,
}

/// Vault's error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong; empty for a LIST with nothing under it.
    pub errors: Vec<String>,
}

/// Body of `PUT sys/leases/renew`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewBody {
    /// The lease, unless the path names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// Requested extension; the role's default TTL when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub increment: Option<Ttl>,
}

/// Body of `PUT sys/leases/revoke`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// The lease, unless the path names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// `false` queues the revocation and answers 202 at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<bool>,
}

/// Body of `PUT sys/leases/lookup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupBody {
    /// The lease.
    pub lease_id: String,
}

/// Body of `POST auth/<mount>/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginBody {
    /// The login role.
    pub role: String,
    /// The service-account or OIDC token.
    #[serde(serialize_with = "expose")]
    pub jwt: SecretString,
}

/// Body of `POST auth/token/renew-self`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewSelfBody {
    /// Requested extension; the login role's TTL when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub increment: Option<Ttl>,
}

/// Body of `POST auth/token/revoke-accessor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeAccessorBody {
    /// The token's accessor.
    pub accessor: String,
}

/// Body of `POST pgwarden/requests`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestCreate {
    /// `<mount>/<role>`, e.g. `database/appdb-admin`.
    pub role: String,
    /// Why the credential is needed (shown to approvers).
    #[serde(default)]
    pub reason: String,
    /// How long the credential should live; the role's default TTL when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Ttl>,
    /// Who may read the credential once approved; the requester when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
}

/// Body of `POST pgwarden/requests/<id>/approve` and `…/deny`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why, recorded on the request.
    #[serde(default)]
    pub reason: String,
}

/// `data` of the request endpoints: an access request as callers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    /// `req-…`.
    pub id: String,
    /// `pending`, `approved`, `denied`, `withdrawn` or `expired`.
    pub state: crate::RequestState,
    /// The requester's subject.
    pub requester: String,
    /// `<mount>/<role>`.
    pub role: String,
    /// The requester's reason.
    pub reason: String,
    /// Seconds the credential lives once approved.
    pub ttl: Ttl,
    /// Who may read the credential.
    pub subjects: Vec<String>,
    /// When it was made (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created: time::OffsetDateTime,
    /// When it expires if still pending (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub expires: time::OffsetDateTime,
    /// Approvals the policy requires now.
    pub approvals_required: usize,
    /// Approvals so far.
    pub approvals: Vec<crate::Decision>,
    /// The denial, if denied.
    #[serde(default)]
    pub denial: Option<crate::Decision>,
    /// The withdrawal, if withdrawn.
    #[serde(default)]
    pub withdrawal: Option<crate::Decision>,
    /// The lease issued on approval.
    #[serde(default)]
    pub lease_id: Option<String>,
}

/// `data` of `GET pgwarden/requests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestList {
    /// Newest first.
    pub requests: Vec<RequestView>,
}

/// `data` of `GET pgwarden/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditList {
    /// Oldest first.
    pub records: Vec<crate::AuditRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::DeserializeOwned;
    use serde_json::{Value, json};

    /// Serializing and parsing back gives the same JSON.
    fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> Value {
        let json = serde_json::to_value(value).unwrap();
        let back: T = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        json
    }

    fn credential() -> DbCredential {
        DbCredential {
            username: "v-root-appdb".into(),
            password: SecretString::from("s3cret"),
            host: "db".into(),
            port: 5433,
            database: "appdb".into(),
            hosts: Vec::new(),
        }
    }

    #[test]
    fn a_credential_response_round_trips_in_vaults_shape() {
        let response = SecretResponse::new("r1".into(), credential())
            .with_lease("database/creds/ro/abc", Ttl::from_secs(3600));
        assert_eq!(
            round_trip(&response),
            json!({
                "request_id": "r1", "lease_id": "database/creds/ro/abc", "renewable": true,
                "lease_duration": 3600, "wrap_info": null, "warnings": null, "auth": null,
                "data": {"username": "v-root-appdb", "password": "s3cret", "host": "db",
                         "port": 5433, "database": "appdb"},
            })
        );
    }

    #[test]
    fn a_credential_without_endpoint_fields_gets_the_defaults() {
        let parsed: DbCredential =
            serde_json::from_value(json!({"username": "u", "password": "p"})).unwrap();
        assert_eq!(
            (parsed.host.as_str(), parsed.port, parsed.database.as_str()),
            ("localhost", 5432, "")
        );
    }

    #[test]
    fn lookups_and_lists_round_trip() {
        round_trip(&SecretResponse::new(
            "r".into(),
            LeaseLookup {
                id: "database/creds/ro/abc".into(),
                issue_time: "2026-01-01T00:00:00Z".into(),
                expire_time: "2026-01-01T01:00:00Z".into(),
                last_renewal: None,
                renewable: true,
                ttl: 3599,
                state: "active".into(),
                revocation_reason: None,
                revocation_attempts: 0,
                last_error: None,
            },
        ));
        round_trip(&KeyList {
            keys: vec!["a".into(), "b/".into()],
        });
        round_trip(&OrphanList {
            orphans: vec![OrphanUser {
                username: "v-x".into(),
                connection: "database/appdb".into(),
                first_seen: "2026-01-01T00:00:00Z".into(),
                drop_at: None,
            }],
        });
        round_trip(&ErrorBody {
            errors: vec!["permission denied".into()],
        });
    }

    #[test]
    fn root_and_login_token_lookups_differ_in_shape() {
        let root = TokenLookup {
            accessor: "root".into(),
            display_name: "root".into(),
            entity_id: None,
            policies: vec!["root".into()],
            meta: None,
            path: None,
            issue_time: None,
            expire_time: None,
            ttl: 0,
            renewable: false,
            token_type: "service".into(),
            groups: Vec::new(),
        };
        assert_eq!(
            round_trip(&root),
            json!({"accessor": "root", "display_name": "root", "policies": ["root"], "ttl": 0,
                   "expire_time": null, "renewable": false, "type": "service"})
        );
        let login = TokenLookup {
            entity_id: Some("user:ola".into()),
            meta: Some(BTreeMap::from([("role".into(), "dev".into())])),
            path: Some("auth/oidc/login".into()),
            issue_time: Some("2026-01-01T00:00:00Z".into()),
            expire_time: Some("2026-01-01T01:00:00Z".into()),
            groups: vec!["dba".into()],
            ..root
        };
        let json = round_trip(&login);
        assert_eq!(json["meta"]["role"], "dev");
        assert_eq!(json["groups"], json!(["dba"]));
        assert_eq!(json["path"], "auth/oidc/login");
    }

    #[test]
    fn a_login_response_carries_the_token_and_renewal_omits_it() {
        let block = AuthBlock {
            client_token: Some(SecretString::from("pgw.t")),
            accessor: "acc".into(),
            policies: vec!["default".into()],
            token_policies: vec!["default".into()],
            metadata: BTreeMap::new(),
            lease_duration: 600,
            renewable: true,
            entity_id: "user:ola".into(),
            token_type: "service".into(),
            orphan: true,
        };
        let mut response = SecretResponse::new("r".into(), ());
        response.auth = Some(block);
        let json = round_trip(&response);
        assert_eq!(json["auth"]["client_token"], "pgw.t");
        assert_eq!(json["data"], Value::Null);
        response.auth.as_mut().unwrap().client_token = None;
        assert_eq!(round_trip(&response)["auth"]["client_token"], Value::Null);
    }

    #[test]
    fn request_bodies_round_trip_and_refuse_unknown_fields() {
        let renew = RenewBody {
            lease_id: Some("l".into()),
            increment: Some(Ttl::from_secs(60)),
        };
        assert_eq!(
            round_trip(&renew),
            json!({"lease_id": "l", "increment": 60})
        );
        let parsed: RenewBody = serde_json::from_value(json!({"increment": "1h"})).unwrap();
        assert_eq!(parsed.increment, Some(Ttl::from_secs(3600)));
        round_trip(&RevokeBody {
            lease_id: Some("l".into()),
            sync: Some(false),
        });
        round_trip(&LookupBody {
            lease_id: "l".into(),
        });
        round_trip(&RenewSelfBody {
            increment: Some(Ttl::from_secs(5)),
        });
        round_trip(&RevokeAccessorBody {
            accessor: "a".into(),
        });
        let login = round_trip(&LoginBody {
            role: "app".into(),
            jwt: SecretString::from("ey.j.w"),
        });
        assert_eq!(login, json!({"role": "app", "jwt": "ey.j.w"}));
        let err = serde_json::from_value::<RevokeBody>(json!({"lease": "l"})).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown field `lease`"),
            "{err}"
        );
    }

    /// What hvac (Vault's Python client) and Vault itself send and expect parses as is.
    #[test]
    fn vault_shaped_json_parses() {
        let vault = json!({
            "request_id": "6a1c…", "lease_id": "database/creds/ro/x", "renewable": true,
            "lease_duration": 3600, "wrap_info": null, "warnings": null, "auth": null,
            "mount_type": "database",
            "data": {"username": "v-token-ro-x", "password": "A1a-x"}
        });
        let parsed: SecretResponse<DbCredential> = serde_json::from_value(vault).unwrap();
        assert_eq!(parsed.data.username, "v-token-ro-x");
        assert_eq!(parsed.data.password.expose_secret(), "A1a-x");
        let login = json!({
            "request_id": "r", "lease_id": "", "renewable": false, "lease_duration": 0,
            "data": null, "wrap_info": null, "warnings": null,
            "auth": {"client_token": "hvs.x", "accessor": "a", "policies": ["default"],
                     "token_policies": ["default"], "metadata": {"role": "app"},
                     "lease_duration": 3600, "renewable": true, "entity_id": "e",
                     "token_type": "service", "orphan": true, "mfa_requirement": null}
        });
        let parsed: SecretResponse<()> = serde_json::from_value(login).unwrap();
        let token = parsed.auth.unwrap().client_token.unwrap();
        assert_eq!(token.expose_secret(), "hvs.x");
        // hvac's renew sends `increment` as a number or a duration string.
        for increment in [json!(3600), json!("1h")] {
            let body: RenewBody =
                serde_json::from_value(json!({"lease_id": "l", "increment": increment})).unwrap();
            assert_eq!(body.increment, Some(Ttl::from_secs(3600)));
        }
    }
}
