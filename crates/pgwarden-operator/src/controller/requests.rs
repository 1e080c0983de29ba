//! `DatabaseAccessRequest` → a broker access request, decided there (`pgwarden request
//! approve|deny`, the approval page) by the policy's approvers, never by its requester. Once
//! approved: the credential in a Secret owned by the request, readable only by its subjects;
//! the lease renewed while the request lives, a new user when the max TTL ends the old one;
//! deleting the request revokes the lease before the Secret goes.
//!
//! Every step is safe to repeat after a crash or a restart: the broker request is found again
//! by a marker in its reason, and the Secret's lease annotation is the durable record of which
//! credential is in use (status is brought in line with it, never the other way round), so a
//! restart re-adopts the leases it finds and rotates nothing.

use super::conditions::{self, Observed};
use super::secret;
use super::{Context, OperatorError};
use crate::{
    DatabaseAccessRequest, DatabaseAccessRequestStatus, LeaseStatus, PendingLease, SubjectKind,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::Event;
use kube::{Api, Resource, ResourceExt};
use pgwarden_client::{ClientError, Credential};
use pgwarden_core::wire::{RequestCreate, RequestView};
use pgwarden_core::{RequestState, Ttl};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Reconciles one `DatabaseAccessRequest`.
pub async fn reconcile(
    request: Arc<DatabaseAccessRequest>,
    context: Arc<Context>,
) -> Result<Action, OperatorError> {
    let context = context.as_ref();
    super::finalized(request, context, |event, namespace, api| async move {
        let handler = Handler {
            context,
            namespace: &namespace,
            api: &api,
        };
        match event {
            Event::Apply(request) => handler.apply(&request).await,
            Event::Cleanup(request) => handler.cleanup(&request).await,
        }
    })
    .await
}

/// The marker in a broker request's reason that ties it to `request` (found again after a
/// crash between creating it and recording its id).
fn marker(request: &DatabaseAccessRequest, namespace: &str) -> String {
    format!(
        "[DatabaseAccessRequest {namespace}/{} {}]",
        request.name_any(),
        request.uid().unwrap_or_default()
    )
}

/// The broker's name of a request subject, after its auth mount's prefix.
fn broker_subject(
    subject: &crate::Subject,
    namespace: &str,
    prefixes: &super::SubjectPrefixes,
) -> String {
    match subject.kind {
        SubjectKind::ServiceAccount => format!(
            "{}system:serviceaccount:{}:{}",
            prefixes.service_accounts,
            subject.namespace.as_deref().unwrap_or(namespace),
            subject.name
        ),
        SubjectKind::User => format!("{}user:{}", prefixes.people, subject.name),
        SubjectKind::Group => format!("{}group:{}", prefixes.people, subject.name),
    }
}

/// The `Approved` and `Denied` conditions that say what the broker decided.
fn decision(view: &RequestView) -> [Observed<'static>; 2] {
    let id = &view.id;
    let condition = |type_, status, reason, message| Observed {
        type_,
        status,
        reason,
        message,
    };
    match view.state {
        RequestState::Pending => {
            let missing = view.approvals_required.saturating_sub(view.approvals.len());
            let waiting = format!(
                "waiting for {missing} approval(s) of broker request {id} \
                 (`pgwarden request approve {id}` or the approval page)"
            );
            [
                condition("Approved", false, "Pending", waiting.clone()),
                condition("Denied", false, "Pending", waiting),
            ]
        }
        RequestState::Approved => {
            let by: Vec<&str> = view.approvals.iter().map(|a| a.approver.as_str()).collect();
            let message = format!("approved by {}", by.join(", "));
            [
                condition("Approved", true, "Approved", message.clone()),
                condition("Denied", false, "Approved", message),
            ]
        }
        RequestState::Denied | RequestState::Withdrawn | RequestState::Expired => {
            let (reason, message) = match view.state {
                RequestState::Denied => (
                    "Denied",
                    view.denial.as_ref().map_or_else(
                        || format!("broker request {id} was denied"),
                        |denial| format!("denied by {}: {}", denial.approver, denial.reason),
                    ),
                ),
                RequestState::Withdrawn => {
                    ("Withdrawn", format!("broker request {id} was withdrawn"))
                }
                _ => (
                    "Expired",
                    format!("broker request {id} expired before anyone decided it"),
                ),
            };
            [
                condition("Approved", false, reason, message.clone()),
                condition("Denied", true, reason, message),
            ]
        }
    }
}

/// Whether the broker's answer means the thing is already gone (revoked, withdrawn, decided).
fn already_gone(error: &ClientError) -> bool {
    matches!(
        error,
        ClientError::Api {
            status: 400 | 404 | 409,
            ..
        }
    )
}

/// What a credential written to the Secret does to the one before it.
#[derive(Clone, Copy)]
enum Change<'a> {
    /// There was none.
    First,
    /// It replaces lease `.0`, revoked once the new one is recorded.
    Replaces(&'a str),
    /// It succeeds lease `.0`, which ends on its own (max TTL reached, or lapsed).
    Succeeds(&'a str),
}

struct Handler<'a> {
    context: &'a Context,
    namespace: &'a str,
    api: &'a Api<DatabaseAccessRequest>,
}

impl Handler<'_> {
    /// Looks again after `due` (the renewal point), or sooner: at the approved request's
    /// recheck interval, so that a withdrawal in pgwarden is seen.
    fn recheck(&self, due: Duration) -> Action {
        Action::requeue(due.min(self.context.settings.recheck))
    }

    /// `<mount>/k8s.<ns>.<roleRef>`: the broker role `request` asks for.
    fn role_path(&self, request: &DatabaseAccessRequest) -> String {
        format!(
            "{}/{}",
            self.context.settings.mount,
            super::broker_name(self.namespace, &request.spec.role_ref.name)
        )
    }

    fn broker(&self) -> &pgwarden_client::Client {
        &self.context.settings.broker
    }

    fn prefixes(&self) -> &super::SubjectPrefixes {
        &self.context.settings.subject_prefixes
    }

    async fn apply(&self, cached: &DatabaseAccessRequest) -> Result<Action, OperatorError> {
        // The informer's copy may not show the status this operator wrote a moment ago (a
        // Secret write wakes it at once): decide on the API server's.
        let request = &self.api.get(&cached.name_any()).await?;
        let status = request.status.clone().unwrap_or_default();
        let id = match &status.request_id {
            Some(id) => id.clone(),
            None => {
                let id = self.ask(request).await?;
                self.patch_status(request, json!({ "requestId": id }))
                    .await?;
                id
            }
        };
        let view = match self.broker().get_request(&id).await {
            Ok(view) => view,
            // The broker is unreachable while a credential is live: a lease that cannot be
            // kept fresh is reported (event, condition, metric) and retried before it lapses.
            Err(error) if error.is_transient() => match &status.lease {
                Some(lease) => {
                    let lease = lease.id.clone();
                    return Err(self
                        .renewal_failed(request, &status, &lease, None, error)
                        .await);
                }
                None => return Err(error.into()),
            },
            Err(error) => return Err(error.into()),
        };
        // The decision is the broker's, always: conditions written by anyone else (a forged
        // `Approved`) are overwritten, and only a broker approval issues a credential.
        let [approved, denied] = decision(&view);
        let conditions = conditions::with(
            &conditions::with(&status.conditions, approved, request.metadata.generation),
            denied,
            request.metadata.generation,
        );
        if conditions != status.conditions {
            self.patch_status(request, json!({ "conditions": conditions }))
                .await?;
        }
        match view.state {
            RequestState::Pending => Ok(Action::requeue(self.context.settings.poll)),
            RequestState::Approved => self.keep_credential(request, &status, &view).await,
            // Withdrawn (or expired) in pgwarden after it was approved: no credential of it
            // may outlive that.
            _ => {
                self.retract(request, &status).await?;
                Ok(Action::await_change())
            }
        }
    }

    /// Revokes every lease of the request and empties its Secret.
    async fn retract(
        &self,
        request: &DatabaseAccessRequest,
        status: &DatabaseAccessRequestStatus,
    ) -> Result<(), OperatorError> {
        if status.lease.is_none()
            && status.pending_lease.is_none()
            && status.former_leases.is_empty()
        {
            return Ok(());
        }
        self.revoke_all(request, status).await?;
        secret::empty_secret(&self.context.kube, request, self.namespace).await?;
        self.patch_status(
            request,
            json!({ "lease": null, "pendingLease": null, "formerLeases": null }),
        )
        .await?;
        self.event(
            request,
            EventType::Warning,
            "Retracted",
            "the broker request is no longer approved: its leases are revoked and the Secret emptied".into(),
        )
        .await;
        Ok(())
    }

    /// The broker request made for `request` before a crash kept its id from the status.
    async fn find(&self, request: &DatabaseAccessRequest) -> Result<Option<String>, OperatorError> {
        let marker = marker(request, self.namespace);
        let existing = self.broker().list_requests(None).await?;
        let role = self.role_path(request);
        // Only the operator's own request for this role (anyone can write a reason).
        Ok(existing
            .into_iter()
            .find(|r| {
                r.reason.ends_with(&marker)
                    && r.requester == "root"
                    && r.role == role
                    && r.state != RequestState::Withdrawn
            })
            .map(|r| r.id))
    }

    /// Makes the broker request (or finds the one made before a crash); returns its id.
    async fn ask(&self, request: &DatabaseAccessRequest) -> Result<String, OperatorError> {
        if let Some(found) = self.find(request).await? {
            return Ok(found);
        }
        let marker = marker(request, self.namespace);
        let ttl = match &request.spec.ttl {
            None => None,
            Some(text) => Some(
                text.parse::<Ttl>()
                    .map_err(|e| OperatorError::Invalid(format!("spec.ttl {text:?}: {e}")))?,
            ),
        };
        let role = self.role_path(request);
        let reason = match &request.spec.reason {
            Some(reason) if !reason.is_empty() => format!("{reason} {marker}"),
            _ => marker,
        };
        let body = RequestCreate {
            role,
            reason,
            ttl,
            subjects: request
                .spec
                .subjects
                .iter()
                .map(|s| broker_subject(s, self.namespace, self.prefixes()))
                .collect(),
        };
        Ok(self.broker().create_request(&body).await?.id)
    }

    /// Brings the Secret, its lease and the status in line, and the lease fresh. Only what
    /// the status records (which only the operator can write) is trusted: the Secret's lease
    /// annotation is compared with it, never adopted on its own word.
    async fn keep_credential(
        &self,
        request: &DatabaseAccessRequest,
        status: &DatabaseAccessRequestStatus,
        view: &RequestView,
    ) -> Result<Action, OperatorError> {
        let subjects: Vec<String> = request
            .spec
            .subjects
            .iter()
            .map(|s| broker_subject(s, self.namespace, self.prefixes()))
            .collect();
        let role = self.role_path(request);
        if view.requester != "root" || view.role != role {
            return Err(OperatorError::Invalid(format!(
                "broker request {} is {}'s request for {}, not the operator's for {role}",
                view.id, view.requester, view.role
            )));
        }
        if subjects != view.subjects {
            return Err(OperatorError::Invalid(format!(
                "spec.subjects no longer match the subjects of broker request {} ({}): \
                 make a new request",
                view.id,
                view.subjects.join(", ")
            )));
        }
        if status
            .conditions
            .iter()
            .any(|c| c.type_ == "LeaseRenewed" && c.reason == REVOKED)
        {
            // Revoked by hand in pgwarden: that decision stands until the request is made anew
            // (and retracting again finishes what a failure may have cut short).
            self.retract(request, status).await?;
            return Ok(Action::await_change());
        }
        let secrets: Api<Secret> = Api::namespaced(self.context.kube.clone(), self.namespace);
        let secret = secrets.get_opt(&secret::secret_name(request)).await?;
        if let Some(existing) = &secret {
            // Someone else's Secret of that name: never written into, nothing issued for it.
            secret::ensure_owned(request, existing)?;
        }
        let in_secret = secret.as_ref().and_then(secret::lease_of);
        if let Some(pending) = &status.pending_lease {
            if in_secret.as_deref() == Some(pending.id.as_str()) {
                // A crash came after the Secret was written: finish the change.
                return self.finish(request, status, pending).await;
            }
            // The Secret was never written with it: nobody has that credential. Counted as a
            // failure, so that a Secret that cannot be written backs off rather than issuing
            // and revoking users in a loop.
            self.revoke(request, &pending.id).await?;
            self.patch_status(request, json!({ "pendingLease": null }))
                .await?;
            return Err(OperatorError::Invalid(format!(
                "lease {} was issued but never reached Secret {}; revoked it, trying again",
                pending.id,
                secret::secret_name(request)
            )));
        }
        match &status.lease {
            // First time: the credential the approval issued.
            None => {
                let credential = match self.broker().request_credential(&view.id).await {
                    Ok(answer) => Credential::from(answer),
                    // Revoked in pgwarden before it could have ended (before this operator
                    // first read it): not replaced, as any lease revoked by hand.
                    Err(error) if already_gone(&error) && approval_still_running(view) => {
                        let lease = view
                            .lease_id
                            .clone()
                            .unwrap_or_else(|| format!("of broker request {}", view.id));
                        return self.honour_revocation(request, status, &lease).await;
                    }
                    // Ended at its TTL (the operator was away that long): the approval stands.
                    Err(error) if already_gone(&error) => self.issue(view).await?,
                    Err(error) => return Err(error.into()),
                };
                let duration = view.ttl.as_secs();
                self.install(request, status, &credential, duration, Change::First)
                    .await
            }
            Some(lease) if in_secret.as_deref() == Some(lease.id.as_str()) => {
                // (Re-)creates the subjects' Role and RoleBinding if they went missing.
                secret::grant_read(&self.context.kube, request, self.namespace).await?;
                self.keep_fresh(request, status, view, lease).await
            }
            // The Secret was deleted, or its annotation changed: a fresh credential in it,
            // then the old lease revoked, so none is left orphaned.
            Some(lease) => {
                let gone =
                    matches!(self.broker().lookup(&lease.id).await, Err(e) if already_gone(&e));
                if gone && revoked_early(lease) {
                    return self.honour_revocation(request, status, &lease.id).await;
                }
                let event = (EventType::Normal, "SecretRecreated");
                self.reissue(
                    request,
                    status,
                    view,
                    Change::Replaces(&lease.id),
                    event,
                    |new| {
                        format!(
                            "the credential Secret was missing or altered; wrote a new credential \
                         (lease {new}) and revoked lease {}",
                            lease.id
                        )
                    },
                )
                .await
            }
        }
    }

    /// Issues a new credential for the role the broker request was approved for (the
    /// approval stands while the request lives).
    async fn issue(&self, view: &RequestView) -> Result<Credential, OperatorError> {
        Ok(Credential::from(self.broker().issue(&view.role).await?))
    }

    /// Issues a new credential, puts it in force in place of the one `change` names, then
    /// publishes `event` with the note `describe` makes of the new lease's id.
    async fn reissue(
        &self,
        request: &DatabaseAccessRequest,
        status: &DatabaseAccessRequestStatus,
        view: &RequestView,
        change: Change<'_>,
        (type_, reason): (EventType, &str),
        describe: impl FnOnce(&str) -> String,
    ) -> Result<Action, OperatorError> {
        let credential = self.issue(view).await?;
        let duration = credential.lease_duration.as_secs();
        let action = self
            .install(request, status, &credential, duration, change)
            .await?;
        self.event(request, type_, reason, describe(&credential.lease_id))
            .await;
        Ok(action)
    }

    /// Puts `credential` in force: records it as pending (revoking it if even that fails),
    /// writes the Secret, then [`Handler::finish`]es.
    async fn install(
        &self,
        request: &DatabaseAccessRequest,
        status: &DatabaseAccessRequestStatus,
        credential: &Credential,
        duration: u64,
        change: Change<'_>,
    ) -> Result<Action, OperatorError> {
        let pending = PendingLease {
            id: credential.lease_id.clone(),
            duration,
            expire_time: expiry_in(credential.lease_duration.as_secs()),
            previous: match change {
                Change::First => None,
                Change::Replaces(old) | Change::Succeeds(old) => Some(old.to_string()),
            },
            revoke_previous: matches!(change, Change::Replaces(_)),
        };
        if let Err(error) = self
            .patch_status(request, json!({ "pendingLease": pending }))
            .await
        {
            self.revoke(request, &pending.id).await?;
            return Err(error);
        }
        secret::write_secret(&self.context.kube, request, self.namespace, credential).await?;
        self.context.metrics.issued();
        self.finish(request, status, &pending).await
    }

    /// Makes the pending lease (now in the Secret) the one in force: restarts the workloads
    /// that opted in, records it with the previous one among the former leases, then revokes
    /// the previous one if it is replaced (else it ends on its own).
    async fn finish(
        &self,
        request: &DatabaseAccessRequest,
        status: &DatabaseAccessRequestStatus,
        pending: &PendingLease,
    ) -> Result<Action, OperatorError> {
        secret::grant_read(&self.context.kube, request, self.namespace).await?;
        let name = secret::secret_name(request);
        if pending.previous.is_some() {
            let restarted =
                super::restart::restart_opted_in(&self.context.kube, self.namespace, &name).await?;
            if !restarted.is_empty() {
                let note = format!(
                    "new user in Secret {name}: restarted {}",
                    restarted.join(", ")
                );
                self.event(request, EventType::Normal, "Restarted", note)
                    .await;
            }
        }
        let lease = LeaseStatus {
            id: pending.id.clone(),
            duration: pending.duration,
            renewable: true,
            expire_time: Some(pending.expire_time.clone()),
        };
        // The previous lease stays on record (revoked with the request) until it is gone:
        // revoked now, or ending on its own after its grace period.
        let mut former = self.still_alive(&status.former_leases).await?;
        if let Some(previous) = &pending.previous
            && !former.contains(previous)
        {
            former.push(previous.clone());
        }
        self.patch_status(
            request,
            json!({ "lease": lease, "pendingLease": null, "formerLeases": former,
                    "secretRef": { "name": name } }),
        )
        .await?;
        if let (Some(previous), true) = (&pending.previous, pending.revoke_previous) {
            self.revoke(request, previous).await?;
            former.retain(|l| l != previous);
            self.patch_status(request, json!({ "formerLeases": former }))
                .await?;
        }
        Ok(self.recheck(renew_in(pending.duration, pending.duration)))
    }

    /// Renews the lease when a third of its time is left; when the max TTL leaves too little,
    /// writes a new user's credential instead (the old lease ends on its own at its max TTL,
    /// which gives the workloads that time to pick up the new Secret).
    async fn keep_fresh(
        &self,
        request: &DatabaseAccessRequest,
        status: &DatabaseAccessRequestStatus,
        view: &RequestView,
        recorded: &LeaseStatus,
    ) -> Result<Action, OperatorError> {
        let lease = recorded.id.as_str();
        let duration = recorded.duration.max(1);
        let left = match self.broker().lookup(lease).await {
            Ok(info) => info.ttl.as_secs(),
            Err(error) if already_gone(&error) => {
                if revoked_early(recorded) {
                    return self.honour_revocation(request, status, lease).await;
                }
                0
            }
            Err(error) => {
                return Err(self
                    .renewal_failed(request, status, lease, None, error)
                    .await);
            }
        };
        if left == 0 {
            let event = (EventType::Warning, "LeaseLapsed");
            return self
                .reissue(
                    request,
                    status,
                    view,
                    Change::Succeeds(lease),
                    event,
                    |new| format!("lease {lease} had ended; wrote a new credential (lease {new})"),
                )
                .await;
        }
        if left > duration / 3 {
            return Ok(self.recheck(renew_in(left, duration)));
        }
        let renewed = self
            .broker()
            .renew_lease(lease, Some(Ttl::from_secs(duration)))
            .await;
        let renewed = match renewed {
            Ok(answer) => answer.lease_duration,
            Err(error) => {
                return Err(self
                    .renewal_failed(request, status, lease, Some(left), error)
                    .await);
            }
        };
        self.context.metrics.renewed();
        let ok = Observed {
            type_: "LeaseRenewed",
            status: true,
            reason: "Renewed",
            message: format!("lease {lease} has {renewed} s left"),
        };
        let all = conditions::with(&status.conditions, ok, request.metadata.generation);
        let mut lease_now = recorded.clone();
        lease_now.expire_time = Some(expiry_in(renewed));
        self.patch_status(request, json!({ "conditions": all, "lease": lease_now }))
            .await?;
        if renewed > duration / 3 {
            return Ok(self.recheck(renew_in(renewed, duration)));
        }
        // The max TTL cut the renewal short: a new user now, the old one lives out its time.
        let event = (EventType::Normal, "Rotated");
        self.reissue(request, status, view, Change::Succeeds(lease), event, |new| {
            format!("lease {lease} reaches its max TTL in {renewed} s; wrote a new user's credential (lease {new})")
        })
        .await
    }

    /// `lease` was revoked in pgwarden before its end (by an administrator): no new
    /// credential replaces it; the request's other leases go too, the Secret is emptied, and
    /// the `LeaseRenewed` condition says so (reason `RevokedInPgwarden`).
    async fn honour_revocation(
        &self,
        request: &DatabaseAccessRequest,
        status: &DatabaseAccessRequestStatus,
        lease: &str,
    ) -> Result<Action, OperatorError> {
        let message = format!(
            "lease {lease} was revoked in pgwarden before its end: it is not replaced; \
             delete and re-create the request for a new credential"
        );
        let revoked = Observed {
            type_: "LeaseRenewed",
            status: false,
            reason: REVOKED,
            message: message.clone(),
        };
        let all = conditions::with(&status.conditions, revoked, request.metadata.generation);
        // The condition first: it is what stops any later reconciliation from issuing.
        self.patch_status(request, json!({ "conditions": all }))
            .await?;
        self.retract(request, status).await?;
        self.event(request, EventType::Warning, REVOKED, message)
            .await;
        Ok(Action::await_change())
    }

    /// Reports that `lease` could not be looked up or renewed (`left` seconds before it
    /// lapses, if known): a Warning event, the `LeaseRenewed` condition false, the metric;
    /// returns the error that retries it with backoff, always before the lease would lapse.
    async fn renewal_failed(
        &self,
        request: &DatabaseAccessRequest,
        status: &DatabaseAccessRequestStatus,
        lease: &str,
        left: Option<u64>,
        error: ClientError,
    ) -> OperatorError {
        self.context.metrics.renewal_failed();
        let failures = self.context.metrics.failed(&super::key_of(request));
        // The same words each time it fails the same way: the status changes once, not at
        // every retry (each status change wakes the controller again).
        let message = format!("renewing lease {lease} failed: {error}");
        tracing::warn!(lease, failures, left, "{message}");
        self.event(request, EventType::Warning, "RenewFailed", message.clone())
            .await;
        let failed = Observed {
            type_: "LeaseRenewed",
            status: false,
            reason: "RenewFailed",
            message: message.clone(),
        };
        let all = conditions::with(&status.conditions, failed, request.metadata.generation);
        if let Err(error) = self
            .patch_status(request, json!({ "conditions": all }))
            .await
        {
            tracing::warn!(error = %error, "cannot record the failed renewal in the status");
        }
        // Unknown: assume the renewal point, a third of the lease's duration.
        let duration = status.lease.as_ref().map_or(0, |l| l.duration);
        OperatorError::RenewalFailed {
            message,
            retry_in: retry_renewal_in(failures, left.unwrap_or(duration / 3)),
        }
    }

    /// Revokes `lease`; one already gone is fine.
    async fn revoke(
        &self,
        request: &DatabaseAccessRequest,
        lease: &str,
    ) -> Result<(), OperatorError> {
        match self.broker().revoke(lease).await {
            Ok(()) => Ok(()),
            Err(error) if already_gone(&error) => Ok(()),
            Err(error) => {
                self.event(
                    request,
                    EventType::Warning,
                    "RevokeFailed",
                    format!("revoking lease {lease} failed (retried): {error}"),
                )
                .await;
                Err(error.into())
            }
        }
    }

    /// The request is being deleted: revoke every lease it has (in force, pending, former),
    /// then withdraw the broker request (found by its marker if a crash kept its id from the
    /// status); only then may the finalizer go (and the Secret with the request).
    async fn cleanup(&self, cached: &DatabaseAccessRequest) -> Result<Action, OperatorError> {
        let request = &self.api.get(&cached.name_any()).await?;
        let status = request.status.clone().unwrap_or_default();
        self.revoke_all(request, &status).await?;
        let id = match &status.request_id {
            Some(id) => Some(id.clone()),
            None => self.find(request).await?,
        };
        if let Some(id) = id {
            match self.broker().withdraw_request(&id).await {
                Ok(_) => {}
                Err(error) if already_gone(&error) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Action::await_change())
    }

    /// Those of `leases` pgwarden still knows.
    async fn still_alive(&self, leases: &[String]) -> Result<Vec<String>, OperatorError> {
        let mut alive = Vec::new();
        for lease in leases {
            match self.broker().lookup(lease).await {
                Ok(_) => alive.push(lease.clone()),
                Err(error) if already_gone(&error) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(alive)
    }

    /// Revokes every lease the status records.
    async fn revoke_all(
        &self,
        request: &DatabaseAccessRequest,
        status: &DatabaseAccessRequestStatus,
    ) -> Result<(), OperatorError> {
        let leases = status
            .lease
            .iter()
            .map(|l| l.id.clone())
            .chain(status.pending_lease.iter().map(|p| p.id.clone()))
            .chain(status.former_leases.iter().cloned());
        for lease in leases {
            self.revoke(request, &lease).await?;
        }
        Ok(())
    }

    /// Merges `fields` into the request's status.
    async fn patch_status(
        &self,
        request: &DatabaseAccessRequest,
        fields: serde_json::Value,
    ) -> Result<(), OperatorError> {
        self.api
            .patch_status(
                &request.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": fields })),
            )
            .await?;
        Ok(())
    }

    /// Publishes a Kubernetes Event about the request (a failure to publish is only logged).
    async fn event(
        &self,
        request: &DatabaseAccessRequest,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        tracing::info!(
            request = request.name_any(),
            namespace = self.namespace,
            reason,
            note,
            "event"
        );
        let event = KubeEvent {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = self
            .context
            .recorder
            .publish(&event, &request.object_ref(&()))
            .await
        {
            tracing::warn!(error = %error, "cannot publish an event");
        }
    }
}

/// The `LeaseRenewed` reason of a lease revoked by hand in pgwarden.
const REVOKED: &str = "RevokedInPgwarden";

/// How much earlier than its recorded end a lease must be gone to count as revoked (the
/// reaper drops an expired lease within about a second).
const EARLY: SignedDuration = SignedDuration::from_secs(3);

/// RFC 3339 time `seconds` from now.
fn expiry_in(seconds: u64) -> String {
    let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
    Timestamp::now()
        .checked_add(SignedDuration::from_secs(seconds))
        .unwrap_or(Timestamp::MAX)
        .to_string()
}

/// Whether the credential `view`'s approval issued would still run (its approved TTL from the
/// last approval, less [`EARLY`]), so that its being gone means it was revoked. A policy grant
/// whose `max_ttl` cut that TTL short is not known here: such a credential, gone at its
/// shorter end, is taken for revoked too (not replaced: failing closed).
fn approval_still_running(view: &RequestView) -> bool {
    let early = time::Duration::seconds(EARLY.as_secs());
    view.approvals
        .iter()
        .map(|approval| approval.at)
        .max()
        .and_then(|at| at.checked_add(time::Duration::seconds(view.ttl.as_secs().try_into().ok()?)))
        .is_some_and(|end| time::OffsetDateTime::now_utc() < end - early)
}

/// Whether `lease`, found gone, should still have been alive: revoked, not lapsed.
fn revoked_early(lease: &LeaseStatus) -> bool {
    lease
        .expire_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_some_and(|end| Timestamp::now() < end - EARLY)
}

/// When to try a failed renewal again: 5 s doubling per failure in a row, but within half
/// the time the lease has left (at least a second).
fn retry_renewal_in(failures: u32, left: u64) -> Duration {
    let backoff = 5u64.saturating_mul(1 << failures.saturating_sub(1).min(6));
    Duration::from_secs(backoff.min(left / 2).max(1))
}

/// How long until a lease with `left` of `duration` seconds should be renewed (when a third
/// of its time is left), at least a second.
fn renew_in(left: u64, duration: u64) -> Duration {
    Duration::from_secs(left.saturating_sub(duration / 3).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_renewed_when_a_third_of_their_time_is_left() {
        assert_eq!(renew_in(3600, 3600), Duration::from_secs(2400));
        assert_eq!(renew_in(1000, 3600), Duration::from_secs(1));
        assert_eq!(renew_in(0, 0), Duration::from_secs(1));
    }

    #[test]
    fn failed_renewals_are_retried_with_backoff_before_the_lease_lapses() {
        assert_eq!(retry_renewal_in(1, 3600), Duration::from_secs(5));
        assert_eq!(retry_renewal_in(3, 3600), Duration::from_secs(20));
        assert_eq!(retry_renewal_in(30, 3600), Duration::from_secs(320));
        assert_eq!(retry_renewal_in(3, 9), Duration::from_secs(4));
        assert_eq!(retry_renewal_in(1, 1), Duration::from_secs(1));
    }

    #[test]
    fn subjects_get_the_brokers_names() {
        let subject = |kind, namespace: Option<&str>| crate::Subject {
            kind,
            name: "x".into(),
            namespace: namespace.map(str::to_string),
        };
        let none = super::super::SubjectPrefixes::default();
        assert_eq!(
            broker_subject(&subject(SubjectKind::ServiceAccount, None), "team-a", &none),
            "system:serviceaccount:team-a:x"
        );
        assert_eq!(
            broker_subject(
                &subject(SubjectKind::ServiceAccount, Some("b")),
                "team-a",
                &none
            ),
            "system:serviceaccount:b:x"
        );
        assert_eq!(
            broker_subject(&subject(SubjectKind::User, None), "a", &none),
            "user:x"
        );
        assert_eq!(
            broker_subject(&subject(SubjectKind::Group, None), "a", &none),
            "group:x"
        );
        let prefixed = super::super::SubjectPrefixes {
            service_accounts: "eu/".into(),
            people: "corp/".into(),
        };
        assert_eq!(
            broker_subject(
                &subject(SubjectKind::ServiceAccount, None),
                "team-a",
                &prefixed
            ),
            "eu/system:serviceaccount:team-a:x"
        );
        assert_eq!(
            broker_subject(&subject(SubjectKind::User, None), "a", &prefixed),
            "corp/user:x"
        );
        assert_eq!(
            broker_subject(&subject(SubjectKind::Group, None), "a", &prefixed),
            "corp/group:x"
        );
    }
}
