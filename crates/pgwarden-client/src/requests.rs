//! Access requests (`pgwarden/requests…`) and the audit log (`pgwarden/audit`).

use crate::api::{body, parse};
use crate::{Client, ClientError, paths};
use pgwarden_core::wire::{
    AuditList, DbCredential, DecisionBody, RequestCreate, RequestList, RequestView, SecretResponse,
};
use pgwarden_core::{AuditRecord, RequestState};
use reqwest::Method;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Which audit records to read: every filter that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Records of this actor (a subject, `root`, `pgwarden`).
    pub actor: Option<String>,
    /// Records of this action (`creds.issue`, `request.approve`…).
    pub action: Option<String>,
    /// Records after this sequence number.
    pub after: Option<u64>,
    /// At most this many records.
    pub limit: Option<u32>,
}

impl Client {
    /// Asks for a credential that approvers must allow first; the new request, pending.
    pub async fn create_request(
        &self,
        request: &RequestCreate,
    ) -> Result<RequestView, ClientError> {
        let what = format!("request {}", request.role);
        let answer = self
            .call(Method::POST, paths::REQUESTS, Some(body(request)), &what)
            .await?;
        Ok(parse::<SecretResponse<RequestView>>(answer, &what)?.data)
    }

    /// The requests the caller made, may decide, or is a subject of (root: all), newest
    /// first; only those in `state` when given.
    pub async fn list_requests(
        &self,
        state: Option<RequestState>,
    ) -> Result<Vec<RequestView>, ClientError> {
        let what = "list requests".to_string();
        let path = format!(
            "{}{}",
            paths::REQUESTS,
            paths::query(&[("state", state.map(|s| s.as_str().to_string()))])
        );
        let answer = self.call(Method::GET, &path, None, &what).await?;
        Ok(parse::<SecretResponse<RequestList>>(answer, &what)?
            .data
            .requests)
    }

    /// One request.
    pub async fn get_request(&self, id: &str) -> Result<RequestView, ClientError> {
        let what = format!("show {id}");
        let answer = self
            .call(Method::GET, &paths::request(id), None, &what)
            .await?;
        Ok(parse::<SecretResponse<RequestView>>(answer, &what)?.data)
    }

    /// Approves a request; it is approved once enough approvers did.
    pub async fn approve_request(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<RequestView, ClientError> {
        self.decide(id, "approve", reason).await
    }

    /// Denies a request.
    pub async fn deny_request(&self, id: &str, reason: &str) -> Result<RequestView, ClientError> {
        self.decide(id, "deny", reason).await
    }

    async fn decide(
        &self,
        id: &str,
        action: &str,
        reason: &str,
    ) -> Result<RequestView, ClientError> {
        let what = format!("{action} {id}");
        let decision = DecisionBody {
            reason: reason.to_string(),
        };
        let answer = self
            .call(
                Method::POST,
                &paths::request_action(id, action),
                Some(body(&decision)),
                &what,
            )
            .await?;
        Ok(parse::<SecretResponse<RequestView>>(answer, &what)?.data)
    }

    /// Withdraws a request, revoking its credential at once.
    pub async fn withdraw_request(&self, id: &str) -> Result<RequestView, ClientError> {
        let what = format!("withdraw {id}");
        let answer = self
            .call(Method::DELETE, &paths::request(id), None, &what)
            .await?;
        Ok(parse::<SecretResponse<RequestView>>(answer, &what)?.data)
    }

    /// The credential of an approved request (for its subjects), with its lease.
    pub async fn request_credential(
        &self,
        id: &str,
    ) -> Result<SecretResponse<DbCredential>, ClientError> {
        let what = format!("credential of {id}");
        let answer = self
            .call(
                Method::GET,
                &paths::request_action(id, "creds"),
                None,
                &what,
            )
            .await?;
        parse(answer, &what)
    }

    /// Audit records matching `query`, oldest first (root only).
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, ClientError> {
        let what = "read the audit log".to_string();
        let since = match query.since {
            Some(since) => Some(since.format(&Rfc3339).map_err(|e| ClientError::Usage {
                reason: format!("--since cannot be written as RFC 3339: {e}"),
            })?),
            None => None,
        };
        let path = format!(
            "{}{}",
            paths::AUDIT,
            paths::query(&[
                ("since", since),
                ("actor", query.actor.clone()),
                ("action", query.action.clone()),
                ("after", query.after.map(|n| n.to_string())),
                ("limit", query.limit.map(|n| n.to_string())),
            ])
        );
        let answer = self.call(Method::GET, &path, None, &what).await?;
        Ok(parse::<SecretResponse<AuditList>>(answer, &what)?
            .data
            .records)
    }
}
