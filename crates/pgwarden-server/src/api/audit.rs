//! `pgwarden/audit`: read the audit log (root only).

use super::AppState;
use super::respond;
use crate::error::ServerError;
use axum::Json;
use pgwarden_core::wire::{AuditList, SecretResponse};
use pgwarden_store::AuditQuery;
use std::collections::HashMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Records returned when `limit` is not given.
const DEFAULT_LIMIT: usize = 100;
/// Most records one call returns.
const MAX_LIMIT: usize = 1000;

/// The query string as an [`AuditQuery`], naming the parameter that is wrong.
fn parse_query(query: &HashMap<String, String>) -> Result<AuditQuery, ServerError> {
    let number = |name: &str| -> Result<Option<u64>, ServerError> {
        query
            .get(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ServerError::BadRequest(format!("{name} must be a whole number, not {v:?}"))
                })
            })
            .transpose()
    };
    let since = query
        .get("since")
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
                ServerError::BadRequest(format!(
                    "since must be an RFC 3339 time such as 2026-11-25T08:00:00Z, not {v:?}"
                ))
            })
        })
        .transpose()?;
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        // Any whole number, however long, asks for at most MAX_LIMIT.
        Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
            v.parse::<usize>().unwrap_or(MAX_LIMIT).min(MAX_LIMIT)
        }
        Some(v) => {
            return Err(ServerError::BadRequest(format!(
                "limit must be a whole number, not {v:?}"
            )));
        }
    };
    Ok(AuditQuery {
        after: number("after")?.unwrap_or(0),
        since,
        actor: query.get("actor").cloned(),
        action: query.get("action").cloned(),
        limit,
    })
}

/// `GET pgwarden/audit?since=&actor=&action=&after=&limit=`: records oldest first.
pub async fn read(
    state: &AppState,
    query: &HashMap<String, String>,
) -> Result<Json<SecretResponse<AuditList>>, ServerError> {
    let records = state.store.audit_records(&parse_query(query)?).await?;
    Ok(respond::ok(AuditList { records }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn bad_parameters_are_named() {
        assert_eq!(
            parse_query(&query(&[("since", "yesterday")]))
                .unwrap_err()
                .to_string(),
            "since must be an RFC 3339 time such as 2026-11-25T08:00:00Z, not \"yesterday\""
        );
        assert_eq!(
            parse_query(&query(&[("after", "-1")]))
                .unwrap_err()
                .to_string(),
            "after must be a whole number, not \"-1\""
        );
        let q = parse_query(&query(&[
            ("limit", "99999999999999999999999"),
            ("actor", "root"),
        ]))
        .unwrap();
        assert_eq!(q.limit, MAX_LIMIT);
        assert_eq!(q.actor.as_deref(), Some("root"));
    }
}
