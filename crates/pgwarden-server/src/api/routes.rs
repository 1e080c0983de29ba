//! Maps a method and a `/v1/…` path to the operation it names, without doing anything.

/// Vault's four kinds of request (`PUT` and `POST` are the same; `LIST` may be `GET ?list=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// GET
    Read,
    /// PUT or POST
    Write,
    /// DELETE
    Delete,
    /// LIST, or GET with `list=true`
    List,
}

/// An operation of the API, with the names it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'a> {
    /// `auth/token/lookup-self`
    TokenLookupSelf,
    /// `auth/token/renew-self`
    TokenRenewSelf,
    /// `auth/token/revoke-self`
    TokenRevokeSelf,
    /// `auth/token/revoke-accessor`
    TokenRevokeAccessor,
    /// `auth/<mount>/login`
    Login {
        /// The auth mount.
        mount: &'a str,
    },
    /// `sys/leases/renew[/<id>]`
    Renew(Option<String>),
    /// `sys/leases/revoke[/<id>]`
    Revoke(Option<String>),
    /// `sys/leases/revoke-prefix/<prefix>`
    RevokePrefix(String),
    /// `sys/leases/lookup` (the id in the body)
    Lookup,
    /// `LIST sys/leases/lookup/<prefix>`
    ListLeases(String),
    /// `sys/orphans`: users no lease names (pgwarden's own path).
    Orphans,
    /// `pgwarden/requests`: make (write) or list (read) access requests.
    Requests,
    /// `pgwarden/requests/<id>`: read or withdraw (delete) one.
    Request(&'a str),
    /// `pgwarden/requests/<id>/approve` or `…/deny`.
    Decide {
        /// The request.
        id: &'a str,
        /// Approve, else deny.
        approve: bool,
    },
    /// `pgwarden/requests/<id>/creds`: the approved credential.
    RequestCreds(&'a str),
    /// `pgwarden/audit`: the audit log.
    Audit,
    /// `<mount>/creds/<role>`
    Creds {
        /// The mount.
        mount: &'a str,
        /// The role.
        role: &'a str,
    },
    /// `<mount>/config[/<name>]`
    Config {
        /// The mount.
        mount: &'a str,
        /// The connection, absent for LIST.
        name: Option<&'a str>,
    },
    /// `<mount>/roles[/<name>]`
    Role {
        /// The mount.
        mount: &'a str,
        /// The role, absent for LIST.
        name: Option<&'a str>,
    },
    /// `<mount>/static-roles[/<name>]`
    StaticRole {
        /// The mount.
        mount: &'a str,
        /// The static role, absent for LIST.
        name: Option<&'a str>,
    },
    /// `<mount>/static-creds/<name>`: a static role's current password.
    StaticCreds {
        /// The mount.
        mount: &'a str,
        /// The static role.
        name: &'a str,
    },
    /// `<mount>/rotate-role/<name>`: rotate a static role's password now.
    RotateRole {
        /// The mount.
        mount: &'a str,
        /// The static role.
        name: &'a str,
    },
    /// `<mount>/rotate-root/<connection>`: a new administrative password only pgwarden knows.
    RotateRoot {
        /// The mount.
        mount: &'a str,
        /// The connection.
        name: &'a str,
    },
    /// `<kv-mount>/<path>`: a Vault KV v1 read of the `settings:` section.
    Kv {
        /// The KV mount.
        mount: &'a str,
        /// The path below it.
        path: String,
    },
    /// Nothing here.
    Unknown,
}

/// Who may call a route, decided from the path alone, before anything is looked up (so a
/// caller without the right cannot learn whether a lease, role or setting exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access<'a> {
    /// No token needed: login.
    Anyone,
    /// Any live token; ownership of a lease is checked by the handler.
    AnyToken,
    /// The root token only.
    Root,
    /// A token whose policy grants `<mount>/static-creds/<name>` by that path.
    StaticCreds {
        /// The mount.
        mount: &'a str,
        /// The static role.
        name: &'a str,
    },
    /// A token whose policy grants `<mount>/<path>`.
    Policy {
        /// The mount.
        mount: &'a str,
        /// The path below it.
        path: &'a str,
    },
}

impl<'a> Route<'a> {
    /// Who may call this route; nobody may call `Unknown`.
    pub fn access(&self) -> Access<'_> {
        match self {
            Route::Login { .. } => Access::Anyone,
            Route::TokenLookupSelf
            | Route::TokenRenewSelf
            | Route::TokenRevokeSelf
            | Route::Renew(_)
            | Route::Revoke(_)
            | Route::Lookup
            | Route::Requests
            | Route::Request(_)
            | Route::Decide { .. }
            | Route::RequestCreds(_) => Access::AnyToken,
            Route::Creds { mount, role } => Access::Policy { mount, path: role },
            Route::StaticCreds { mount, name } => Access::StaticCreds { mount, name },
            Route::Kv { mount, path } => Access::Policy { mount, path },
            Route::TokenRevokeAccessor
            | Route::RevokePrefix(_)
            | Route::ListLeases(_)
            | Route::Orphans
            | Route::Audit
            | Route::Config { .. }
            | Route::Role { .. }
            | Route::StaticRole { .. }
            | Route::RotateRole { .. }
            | Route::RotateRoot { .. }
            | Route::Unknown => Access::Root,
        }
    }

    /// The audit log's name for `op` on this route, e.g. `creds.issue`, `request.approve`.
    pub fn action(&self, op: Op) -> &'static str {
        let by_op = |read, write, delete, list| match op {
            Op::Read => read,
            Op::Write => write,
            Op::Delete => delete,
            Op::List => list,
        };
        match self {
            Route::TokenLookupSelf => "token.lookup",
            Route::TokenRenewSelf => "token.renew",
            Route::TokenRevokeSelf => "token.revoke",
            Route::TokenRevokeAccessor => "token.revoke-accessor",
            Route::Login { .. } => "auth.login",
            Route::Renew(_) => "lease.renew",
            Route::Revoke(_) => "lease.revoke",
            Route::RevokePrefix(_) => "lease.revoke-prefix",
            Route::Lookup => "lease.lookup",
            Route::ListLeases(_) => "lease.list",
            Route::Orphans => "orphans.list",
            Route::Requests => by_op(
                "request.list",
                "request.create",
                "request.other",
                "request.list",
            ),
            Route::Request(_) => by_op(
                "request.read",
                "request.other",
                "request.withdraw",
                "request.other",
            ),
            Route::Decide { approve: true, .. } => "request.approve",
            Route::Decide { approve: false, .. } => "request.deny",
            Route::RequestCreds(_) => "request.creds",
            Route::Audit => "audit.read",
            Route::Creds { .. } => "creds.issue",
            Route::Config { .. } => by_op(
                "config.read",
                "config.write",
                "config.delete",
                "config.list",
            ),
            Route::Role { .. } => by_op("role.read", "role.write", "role.delete", "role.list"),
            Route::StaticRole { .. } => by_op(
                "static-role.read",
                "static-role.write",
                "static-role.delete",
                "static-role.list",
            ),
            Route::StaticCreds { .. } => "static-creds.read",
            Route::RotateRole { .. } => "static-role.rotate",
            Route::RotateRoot { .. } => "config.rotate-root",
            Route::Kv { .. } => "kv.read",
            Route::Unknown => "unknown",
        }
    }
}

fn tail(parts: &[&str]) -> Option<String> {
    let joined = parts.join("/");
    (!joined.is_empty()).then_some(joined)
}

/// The route for `path` (the part after `/v1/`, already percent-decoded).
pub fn parse(path: &str) -> Route<'_> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let nonempty = |s: &&str| !s.is_empty();
    match parts.as_slice() {
        ["auth", "token", "lookup-self"] => Route::TokenLookupSelf,
        ["auth", "token", "renew-self"] => Route::TokenRenewSelf,
        ["auth", "token", "revoke-self"] => Route::TokenRevokeSelf,
        ["auth", "token", "revoke-accessor"] => Route::TokenRevokeAccessor,
        ["auth", mount, "login"] if nonempty(mount) => Route::Login { mount },
        ["sys", "leases", "renew", rest @ ..] | ["sys", "renew", rest @ ..] => {
            Route::Renew(tail(rest))
        }
        ["sys", "leases", "revoke", rest @ ..] | ["sys", "revoke", rest @ ..] => {
            Route::Revoke(tail(rest))
        }
        ["sys", "leases", "revoke-prefix", rest @ ..] | ["sys", "revoke-prefix", rest @ ..] => {
            match tail(rest) {
                Some(prefix) => Route::RevokePrefix(prefix),
                None => Route::Unknown,
            }
        }
        ["sys", "leases", "lookup"] => Route::Lookup,
        ["sys", "orphans"] => Route::Orphans,
        ["sys", "leases", "lookup", rest @ ..] => Route::ListLeases(rest.join("/")),
        ["sys", ..] | ["auth", ..] => Route::Unknown,
        ["pgwarden", "requests"] | ["pgwarden", "requests", ""] => Route::Requests,
        ["pgwarden", "requests", id] => Route::Request(id),
        ["pgwarden", "requests", id, "approve"] if nonempty(id) => {
            Route::Decide { id, approve: true }
        }
        ["pgwarden", "requests", id, "deny"] if nonempty(id) => {
            Route::Decide { id, approve: false }
        }
        ["pgwarden", "requests", id, "creds"] if nonempty(id) => Route::RequestCreds(id),
        ["pgwarden", "audit"] => Route::Audit,
        ["pgwarden", ..] => Route::Unknown,
        [mount, "creds", role] if nonempty(mount) && nonempty(role) => Route::Creds { mount, role },
        [mount, "config"] | [mount, "config", ""] if nonempty(mount) => {
            Route::Config { mount, name: None }
        }
        [mount, "config", name] if nonempty(mount) => Route::Config {
            mount,
            name: Some(name),
        },
        [mount, "roles"] | [mount, "roles", ""] if nonempty(mount) => {
            Route::Role { mount, name: None }
        }
        [mount, "roles", name] if nonempty(mount) => Route::Role {
            mount,
            name: Some(name),
        },
        [mount, "static-roles"] | [mount, "static-roles", ""] if nonempty(mount) => {
            Route::StaticRole { mount, name: None }
        }
        [mount, "static-roles", name] if nonempty(mount) => Route::StaticRole {
            mount,
            name: Some(name),
        },
        [mount, "static-creds", name] if nonempty(mount) && nonempty(name) => {
            Route::StaticCreds { mount, name }
        }
        [mount, "rotate-role", name] if nonempty(mount) && nonempty(name) => {
            Route::RotateRole { mount, name }
        }
        [mount, "rotate-root", name] if nonempty(mount) && nonempty(name) => {
            Route::RotateRoot { mount, name }
        }
        [mount, rest @ ..] if nonempty(mount) && !rest.is_empty() && rest.iter().all(nonempty) => {
            Route::Kv {
                mount,
                path: rest.join("/"),
            }
        }
        _ => Route::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vault_paths() {
        assert_eq!(
            parse("sys/health"),
            Route::Unknown,
            "served by its own unauthenticated route"
        );
        assert_eq!(
            parse("database/creds/appdb-readonly"),
            Route::Creds {
                mount: "database",
                role: "appdb-readonly"
            }
        );
        assert_eq!(parse("sys/leases/renew"), Route::Renew(None));
        assert_eq!(
            parse("sys/leases/revoke/database/creds/r/abc"),
            Route::Revoke(Some("database/creds/r/abc".into()))
        );
        assert_eq!(
            parse("sys/leases/revoke-prefix/database/creds"),
            Route::RevokePrefix("database/creds".into())
        );
        assert_eq!(
            parse("sys/leases/lookup/database/creds/"),
            Route::ListLeases("database/creds/".into())
        );
        assert_eq!(
            parse("database/roles/"),
            Route::Role {
                mount: "database",
                name: None
            }
        );
        assert_eq!(
            parse("database/roles/a\"; DROP TABLE t; --"),
            Route::Role {
                mount: "database",
                name: Some("a\"; DROP TABLE t; --")
            }
        );
        assert_eq!(
            parse("database/config"),
            Route::Config {
                mount: "database",
                name: None
            }
        );
        assert_eq!(parse("database/creds/"), Route::Unknown);
        assert_eq!(
            parse("/database/static-creds/legacy"),
            Route::StaticCreds {
                mount: "database",
                name: "legacy"
            }
        );
        assert_eq!(
            parse("database/static-roles/"),
            Route::StaticRole {
                mount: "database",
                name: None
            }
        );
        assert_eq!(
            parse("database/rotate-role/legacy"),
            Route::RotateRole {
                mount: "database",
                name: "legacy"
            }
        );
        assert_eq!(parse("sys/mounts"), Route::Unknown);
        assert_eq!(
            parse("auth/kubernetes/login"),
            Route::Login {
                mount: "kubernetes"
            }
        );
        assert_eq!(parse("auth/token/revoke-self"), Route::TokenRevokeSelf);
        assert_eq!(
            parse("kv/team-a/appdb"),
            Route::Kv {
                mount: "kv",
                path: "team-a/appdb".into()
            }
        );
        assert_eq!(parse("kv"), Route::Unknown);
        assert_eq!(parse("pgwarden/requests"), Route::Requests);
        assert_eq!(parse("pgwarden/requests/req-1"), Route::Request("req-1"));
        assert_eq!(
            parse("pgwarden/requests/req-1/deny"),
            Route::Decide {
                id: "req-1",
                approve: false
            }
        );
        assert_eq!(
            parse("pgwarden/requests/req-1/creds"),
            Route::RequestCreds("req-1")
        );
        assert_eq!(parse("pgwarden/requests/req-1/other"), Route::Unknown);
        assert_eq!(parse("pgwarden/audit"), Route::Audit);
        assert_eq!(Route::Audit.access(), Access::Root);
        assert_eq!(Route::Requests.action(Op::Write), "request.create");
    }
}
