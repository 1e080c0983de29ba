//! Access requests: create, decide, withdraw, hand out the credential, expire. Every change is
//! a compare-and-set on the request's version in the store, so two approvers (or an approval
//! and a withdrawal, on any replica) never both win; the credential issued on approval is
//! sealed into the request so each of its subjects can read it from any replica.

mod sweep;

use crate::audit::AuditLog;
use crate::broker::Broker;
use crate::error::ServerError;
use crate::policy::PolicyHolder;
use crate::seal::Sealer;
use pgwarden_core::request::ApprovalRule;
use pgwarden_core::wire::{DbCredential, RequestCreate};
use pgwarden_core::{
    AccessRequest, Approval, DecisionError, LeaseState, Owner, RequestState, RoleKind, Ttl, chain,
};
use pgwarden_store::{Store, StoredRequest};
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;
use time::OffsetDateTime;

/// How many times a decision is re-applied when another one changed the request first.
const MAX_RETRIES: usize = 8;
/// Longest reason accepted, in characters.
const MAX_REASON_CHARS: usize = 2000;
/// Most subjects a request may name.
const MAX_SUBJECTS: usize = 64;
/// Most requests one requester other than root (the operator asks for every namespace) may
/// have pending at once (concurrent asks may pass it by a few): a bound on what one identity
/// can make approvers and the state hold.
const MAX_PENDING_PER_REQUESTER: usize = 16;
/// Longest subject a request may name, in bytes (a service account's, prefixed, is at most
/// about 380).
const MAX_SUBJECT_BYTES: usize = 512;

/// Who is asking, as requests see it.
pub struct Asker {
    /// The caller's subject (`root` for the root token).
    pub subject: String,
    /// Every policy subject of the caller (its own and `group:<g>`, after its mount's prefix).
    pub subjects: Vec<String>,
    /// Short name for generated usernames.
    pub display_name: String,
    /// Whether this is the root token.
    pub root: bool,
}

/// A credential handed to a request's subject.
pub struct RequestCredential {
    /// The login.
    pub credential: DbCredential,
    /// Its lease.
    pub lease_id: String,
    /// Time left on the lease.
    pub ttl: Ttl,
}

/// The access-request service.
pub struct Requests {
    store: Arc<dyn Store>,
    broker: Arc<Broker>,
    policy: Arc<PolicyHolder>,
    sealer: Arc<Sealer>,
    audit: AuditLog,
    pending_ttl: Ttl,
    keep_finished: Ttl,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn not_found(id: &str) -> ServerError {
    ServerError::NotFound(format!("no access request {id:?}"))
}

fn refused(error: DecisionError) -> ServerError {
    match error {
        DecisionError::OwnRequest { .. }
        | DecisionError::Subject { .. }
        | DecisionError::NotApprover { .. } => ServerError::Forbidden(error.to_string()),
        DecisionError::AlreadyApproved { .. } | DecisionError::Final { .. } => {
            ServerError::Conflict(error.to_string())
        }
    }
}

/// A subject a request may name: one identity or group, no glob, no control character, and
/// nothing invisible that would make it look like another on the approvers' page (zero-width
/// characters, bidirectional overrides).
fn valid_subject(subject: &str) -> bool {
    pgwarden_core::policy::is_subject(subject)
        && !subject.contains('*')
        && !subject.chars().any(|c| c.is_control() || invisible(c))
}

/// Whether `c` is a format character that changes how text looks without being seen.
fn invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

impl Requests {
    /// The service over `store`, with `config`'s times: how long a request waits for a
    /// decision, and how long a finished one is kept.
    pub fn new(
        store: Arc<dyn Store>,
        broker: Arc<Broker>,
        policy: Arc<PolicyHolder>,
        sealer: Arc<Sealer>,
        audit: AuditLog,
        config: &crate::config::RequestsConfig,
    ) -> Requests {
        Requests {
            store,
            broker,
            policy,
            sealer,
            audit,
            pending_ttl: config.pending_ttl,
            keep_finished: config.keep_finished,
        }
    }

    /// The approval rule policy sets now for `request`'s requester and role.
    fn rule(&self, request: &AccessRequest) -> Option<(Option<Ttl>, ApprovalRule)> {
        self.policy
            .get()
            .allows_with_approval(&request.requester_subjects, &request.mount, &request.role)
            .map(|(allowed, rule)| (allowed.max_ttl, rule))
    }

    /// The rule to decide `request` by; a request policy no longer covers can only have been
    /// decided (409 naming how) or be refused (403).
    fn decision_rule(
        &self,
        stored: &StoredRequest,
    ) -> Result<(Option<Ttl>, ApprovalRule), ServerError> {
        match self.rule(&stored.request) {
            Some(rule) => Ok(rule),
            None => {
                stored.request.ensure_pending(now()).map_err(refused)?;
                Err(no_longer(stored))
            }
        }
    }

    /// Approvals policy requires now for `request` (0 when it no longer allows it at all).
    pub fn approvals_required(&self, request: &AccessRequest) -> usize {
        self.rule(request)
            .map_or(0, |(_, rule)| rule.min_approvals.max(1))
    }

    /// Makes a pending request for the role named in `body`.
    pub async fn create(
        &self,
        asker: &Asker,
        body: RequestCreate,
    ) -> Result<AccessRequest, ServerError> {
        let (mount, role) = body
            .role
            .split_once('/')
            .filter(|(m, r)| !m.is_empty() && !r.is_empty() && !r.contains('/'))
            .ok_or_else(|| {
                ServerError::BadRequest(format!(
                    "role {:?} must look like <mount>/<role>, e.g. database/appdb-admin",
                    body.role
                ))
            })?;
        check_reason(&body.reason)?;
        if body.subjects.len() > MAX_SUBJECTS {
            return Err(ServerError::BadRequest(format!(
                "a request may name at most {MAX_SUBJECTS} subjects"
            )));
        }
        if let Some(long) = body.subjects.iter().find(|s| s.len() > MAX_SUBJECT_BYTES) {
            return Err(ServerError::BadRequest(format!(
                "a subject of {} bytes is too long: at most {MAX_SUBJECT_BYTES}",
                long.len()
            )));
        }
        if let Some(bad) = body.subjects.iter().find(|s| !valid_subject(s)) {
            return Err(ServerError::BadRequest(format!(
                "subject {bad:?} must name one identity or group: system:serviceaccount:<ns>:<name>, \
                 group:<name> or user:<name>, without * or invisible characters"
            )));
        }
        let Some((allowed, _)) =
            self.policy
                .get()
                .allows_with_approval(&asker.subjects, mount, role)
        else {
            return Err(ServerError::Forbidden(format!(
                "no policy grant lets {} request {}: ask for a role a grant with \
                 requires_approval: true names for you",
                asker.subject, body.role
            )));
        };
        let definition = self.broker.catalog().role(mount, role)?;
        if definition.kind == RoleKind::Identity {
            return Err(ServerError::BadRequest(format!(
                "role {:?} gives each caller the database role named after its own identity, \
                 so an access request cannot issue it; ask for a preset or templated role",
                body.role
            )));
        }
        let cap = allowed
            .max_ttl
            .map_or(definition.max_ttl, |cap| cap.min(definition.max_ttl));
        let ttl = match body.ttl {
            Some(ttl) if ttl.is_zero() => {
                return Err(ServerError::BadRequest("ttl must be positive".into()));
            }
            Some(ttl) => ttl.min(cap),
            None => definition.default_ttl.min(cap),
        };
        let created_at = now();
        if !asker.root {
            self.refuse_too_many_pending(asker, created_at).await?;
        }
        let subjects = if body.subjects.is_empty() {
            vec![asker.subject.clone()]
        } else {
            body.subjects
        };
        let request = AccessRequest {
            id: AccessRequest::generate_id(),
            version: 0,
            state: RequestState::Pending,
            requester: asker.subject.clone(),
            requester_subjects: asker.subjects.clone(),
            requester_display: asker.display_name.clone(),
            mount: mount.into(),
            role: role.into(),
            reason: body.reason,
            ttl,
            subjects,
            created_at,
            expires_at: self.pending_ttl.after(created_at),
            approvals: Vec::new(),
            denial: None,
            withdrawal: None,
            lease_id: None,
        };
        self.store
            .insert_request(&StoredRequest {
                request: request.clone(),
                sealed_credential: None,
            })
            .await?;
        Ok(request)
    }

    /// Whether `asker` may see `request`: root, its requester, its subjects, its approvers.
    fn visible(&self, asker: &Asker, request: &AccessRequest) -> bool {
        asker.root
            || asker.subject == request.requester
            || request.readable_by(&asker.subjects)
            || self.rule(request).is_some_and(|(_, rule)| {
                asker
                    .subjects
                    .iter()
                    .any(|s| pgwarden_core::glob::any_match(&rule.approvers, s))
            })
    }

    /// Refuses a new request from `asker` when it has [`MAX_PENDING_PER_REQUESTER`] pending
    /// at `at`.
    async fn refuse_too_many_pending(
        &self,
        asker: &Asker,
        at: OffsetDateTime,
    ) -> Result<(), ServerError> {
        let pending = self
            .store
            .all_requests()
            .await?
            .iter()
            .filter(|r| {
                r.request.requester == asker.subject
                    && r.request.state_at(at) == RequestState::Pending
            })
            .count();
        if pending >= MAX_PENDING_PER_REQUESTER {
            return Err(ServerError::Conflict(format!(
                "{} has {pending} requests pending, the most one may have: withdraw one or \
                 wait for decisions",
                asker.subject
            )));
        }
        Ok(())
    }

    /// The requests `asker` may see, newest first, in `state` if given.
    pub async fn list(
        &self,
        asker: &Asker,
        state: Option<RequestState>,
    ) -> Result<Vec<AccessRequest>, ServerError> {
        let at = now();
        Ok(self
            .store
            .all_requests()
            .await?
            .into_iter()
            .map(|stored| shown_at(stored.request, at))
            .filter(|r| state.is_none_or(|s| r.state == s) && self.visible(asker, r))
            .collect())
    }

    /// One request, if `asker` may see it.
    pub async fn get(&self, asker: &Asker, id: &str) -> Result<AccessRequest, ServerError> {
        let stored = self.load(id).await?;
        if !self.visible(asker, &stored.request) {
            return Err(ServerError::PermissionDenied);
        }
        Ok(shown_at(stored.request, now()))
    }

    async fn load(&self, id: &str) -> Result<StoredRequest, ServerError> {
        self.store
            .get_request(id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Records `asker`'s approval; the last approval needed issues the credential.
    pub async fn approve(
        &self,
        asker: &Asker,
        id: &str,
        reason: &str,
    ) -> Result<AccessRequest, ServerError> {
        check_reason(reason)?;
        for _ in 0..MAX_RETRIES {
            let mut stored = self.load(id).await?;
            let from = stored.request.version;
            let (cap, rule) = self.decision_rule(&stored)?;
            let at = now();
            let approval = stored
                .request
                .approve(&asker.subject, &asker.subjects, &rule, reason, at)
                .map_err(refused)?;
            if approval == Approval::Complete {
                self.attach_credential(&mut stored, cap).await?;
            }
            let saved = self.store.update_request(&stored, from).await;
            if matches!(saved, Ok(true)) {
                return Ok(stored.request);
            }
            // Changed meanwhile (another decision, a withdrawal), or not saved: undo the
            // credential no request names, then decide again or fail.
            if let Some(lease_id) = &stored.request.lease_id {
                self.revoke_quietly(lease_id).await;
            }
            saved?;
        }
        Err(busy(id))
    }

    /// Issues the approved request's credential and seals it into `stored`.
    async fn attach_credential(
        &self,
        stored: &mut StoredRequest,
        cap: Option<Ttl>,
    ) -> Result<(), ServerError> {
        let request = &stored.request;
        let ttl = cap.map_or(request.ttl, |cap| cap.min(request.ttl));
        let owner = Owner {
            display_name: request.requester_display.clone(),
            subject: request.requester.clone(),
            token_accessor: None,
        };
        let issued = self
            .broker
            .issue_approved(&request.mount, &request.role, owner, ttl)
            .await?;
        let (lease, credential) = issued.into_credential();
        let sealed = serde_json::to_string(&credential)
            .map_err(|e| ServerError::Internal(format!("encoding a credential: {e}")))
            .map(SecretString::from)
            .and_then(|json| {
                self.sealer
                    .seal(&json, &request.id)
                    .map_err(|e| ServerError::Internal(e.to_string()))
            });
        match sealed {
            Ok(sealed) => {
                stored.sealed_credential = Some(sealed);
                stored.request.lease_id = Some(lease.id);
                Ok(())
            }
            Err(error) => {
                self.revoke_quietly(&lease.id).await;
                Err(error)
            }
        }
    }

    /// Records `asker`'s denial, which ends the request.
    pub async fn deny(
        &self,
        asker: &Asker,
        id: &str,
        reason: &str,
    ) -> Result<AccessRequest, ServerError> {
        check_reason(reason)?;
        for _ in 0..MAX_RETRIES {
            let mut stored = self.load(id).await?;
            let from = stored.request.version;
            let (_, rule) = self.decision_rule(&stored)?;
            stored
                .request
                .deny(&asker.subject, &asker.subjects, &rule, reason, now())
                .map_err(refused)?;
            if self.store.update_request(&stored, from).await? {
                return Ok(stored.request);
            }
        }
        Err(busy(id))
    }

    /// Withdraws a request (its requester, or root) and revokes its credential first, so no
    /// crash or lost answer can leave a withdrawn request's user alive. Returns the request
    /// and, when the revocation failed (the reaper retries it), why.
    pub async fn withdraw(
        &self,
        asker: &Asker,
        id: &str,
    ) -> Result<(AccessRequest, Option<String>), ServerError> {
        for _ in 0..MAX_RETRIES {
            let mut stored = self.load(id).await?;
            if !asker.root && asker.subject != stored.request.requester {
                if !self.visible(asker, &stored.request) {
                    return Err(ServerError::PermissionDenied);
                }
                return Err(ServerError::Forbidden(format!(
                    "only the requester ({}) or root may withdraw request {id}",
                    stored.request.requester
                )));
            }
            let from = stored.request.version;
            stored
                .request
                .withdraw(&asker.subject, now())
                .map_err(refused)?;
            let failure = match &stored.request.lease_id {
                Some(lease_id) => self.revoke(lease_id).await.err(),
                None => None,
            };
            stored.sealed_credential = None;
            if self.store.update_request(&stored, from).await? {
                return Ok((stored.request, failure));
            }
        }
        Err(busy(id))
    }

    /// The credential of an approved request, for one of its subjects (or root).
    pub async fn credential(
        &self,
        asker: &Asker,
        id: &str,
    ) -> Result<RequestCredential, ServerError> {
        let stored = self.load(id).await?;
        let request = shown_at(stored.request, now());
        if !self.visible(asker, &request) {
            return Err(ServerError::PermissionDenied);
        }
        if !asker.root && !request.readable_by(&asker.subjects) {
            return Err(ServerError::Forbidden(format!(
                "{} is not a subject of request {id}: only {} may read its credential",
                asker.subject,
                request.subjects.join(", ")
            )));
        }
        if request.state != RequestState::Approved {
            let missing = self
                .approvals_required(&request)
                .saturating_sub(request.approvals.len());
            return Err(ServerError::Conflict(match request.state {
                RequestState::Pending => {
                    format!("request {id} is pending: it needs {missing} more approval(s)")
                }
                state => format!("request {id} is {}: it has no credential", state.as_str()),
            }));
        }
        let ended = || {
            ServerError::Conflict(format!(
                "the credential of request {id} has ended (its lease expired or was revoked); \
                 make a new request"
            ))
        };
        let (Some(lease_id), Some(sealed)) = (&request.lease_id, &stored.sealed_credential) else {
            return Err(ended());
        };
        let lease = self.store.get_lease(lease_id).await?.ok_or_else(ended)?;
        if lease.state != LeaseState::Active || lease.remaining(now()).is_zero() {
            return Err(ended());
        }
        let json = self
            .sealer
            .open(sealed, id)
            .map_err(|e| ServerError::Internal(e.to_string()))?;
        let credential: DbCredential = serde_json::from_str(json.expose_secret())
            .map_err(|e| ServerError::Internal(format!("a stored credential is corrupt: {e}")))?;
        Ok(RequestCredential {
            credential,
            lease_id: lease.id.clone(),
            ttl: lease.remaining(now()),
        })
    }

    /// Revokes a request's lease now; when that fails, makes sure it is queued (durably
    /// marked revoking) so the reaper retries it, and says so.
    async fn revoke(&self, lease_id: &str) -> Result<(), String> {
        match self.broker.revoke(lease_id, None).await {
            Ok(()) => Ok(()),
            // Already gone (expired and reaped): nothing left to revoke.
            Err(ServerError::BadRequest(_)) => Ok(()),
            Err(error) => {
                let queued = self.broker.revoke_later(lease_id).await;
                tracing::error!(lease_id, error = %chain(&error), queued = queued.is_ok(), "revoking a request's lease failed; it is retried");
                Err(format!(
                    "revoking the request's lease failed and is being retried: {error}"
                ))
            }
        }
    }

    async fn revoke_quietly(&self, lease_id: &str) {
        let _ = self.revoke(lease_id).await;
    }
}

/// `request` as of `at`: a pending one past its expiry shows as expired.
fn shown_at(mut request: AccessRequest, at: OffsetDateTime) -> AccessRequest {
    request.state = request.state_at(at);
    request
}

fn check_reason(reason: &str) -> Result<(), ServerError> {
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(ServerError::BadRequest(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    Ok(())
}

fn no_longer(stored: &StoredRequest) -> ServerError {
    ServerError::Forbidden(format!(
        "policy no longer lets {} request {} with approval; request {} cannot be decided",
        stored.request.requester,
        stored.request.role_path(),
        stored.request.id
    ))
}

fn busy(id: &str) -> ServerError {
    ServerError::Unavailable(format!(
        "request {id} kept changing while this decision was applied; try again"
    ))
}
