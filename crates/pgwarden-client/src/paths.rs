//! Every API path the client calls, in one place (relative to `/v1/`).

use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};

/// Characters escaped in a path made of segments (`/` is kept: lease ids and prefixes are
/// paths themselves).
const PATH: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Characters escaped in one path segment (an id): also `/`.
const SEGMENT: &AsciiSet = &PATH.add(b'/');

/// `text` escaped for use inside a path, slashes kept.
fn escaped(text: &str) -> String {
    utf8_percent_encode(text, PATH).to_string()
}

/// `?k=v&…` of the pairs whose value is set, each value escaped; empty without any.
pub(crate) fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(key, value)| {
            value
                .as_ref()
                .map(|v| format!("{key}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// `auth/<mount>/login`.
pub(crate) fn login(mount: &str) -> String {
    format!("auth/{}/login", escaped(mount))
}

/// `auth/token/lookup-self`.
pub(crate) const LOOKUP_SELF: &str = "auth/token/lookup-self";

/// `<mount>/creds/<role>` from `<mount>/<role>` (the role is the last segment).
pub(crate) fn creds(mount_role: &str) -> Option<String> {
    let (mount, role) = mount_role.trim_matches('/').rsplit_once('/')?;
    (!mount.is_empty() && !role.is_empty())
        .then(|| format!("{}/creds/{}", escaped(mount), escaped(role)))
}

/// `sys/leases/renew`.
pub(crate) const RENEW: &str = "sys/leases/renew";
/// `sys/leases/revoke`.
pub(crate) const REVOKE: &str = "sys/leases/revoke";
/// `sys/leases/lookup`.
pub(crate) const LOOKUP: &str = "sys/leases/lookup";

/// `sys/leases/lookup/<prefix>?list=true`: the keys directly under `prefix`.
pub(crate) fn list_leases(prefix: &str) -> String {
    format!("sys/leases/lookup/{}?list=true", escaped(prefix))
}

/// `pgwarden/requests`.
pub(crate) const REQUESTS: &str = "pgwarden/requests";

/// `pgwarden/requests/<id>`.
pub(crate) fn request(id: &str) -> String {
    format!("pgwarden/requests/{}", utf8_percent_encode(id, SEGMENT))
}

/// `pgwarden/requests/<id>/<action>` (`approve`, `deny`, `creds`).
pub(crate) fn request_action(id: &str, action: &str) -> String {
    format!("{}/{action}", request(id))
}

/// `pgwarden/audit`.
pub(crate) const AUDIT: &str = "pgwarden/audit";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_paths_split_at_the_last_slash() {
        assert_eq!(
            creds("database/appdb-user").as_deref(),
            Some("database/creds/appdb-user")
        );
        assert_eq!(creds("team/db/ro").as_deref(), Some("team/db/creds/ro"));
        assert_eq!(creds("appdb-user"), None);
        assert_eq!(creds("database/"), None);
    }

    #[test]
    fn queries_escape_values_and_skip_unset_ones() {
        assert_eq!(query(&[("a", None)]), "");
        assert_eq!(
            query(&[
                ("since", Some("2026-01-01T00:00:00+01:00".into())),
                ("actor", None),
                ("after", Some("7".into())),
            ]),
            "?since=2026%2D01%2D01T00%3A00%3A00%2B01%3A00&after=7"
        );
        assert_eq!(request("req-a/b"), "pgwarden/requests/req-a%2Fb");
        assert_eq!(
            list_leases("database/creds/"),
            "sys/leases/lookup/database/creds/?list=true"
        );
    }
}
