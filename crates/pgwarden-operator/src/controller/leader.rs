//! One active operator among its replicas: the holder of a `coordination.k8s.io` Lease, as
//! Kubernetes' own controllers elect theirs. The holder renews it every third of its
//! duration; another replica takes it over only once it has not been renewed for a whole
//! duration, and a holder that cannot renew it for two thirds of that stops first.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use std::time::{Duration, Instant};

/// The Lease's name.
pub const LEASE_NAME: &str = "pgwarden-operator";

/// How long a Lease not renewed keeps others out.
const LEASE_DURATION: Duration = Duration::from_secs(15);

/// This replica's part in the election.
pub struct Leadership {
    api: Api<Lease>,
    identity: String,
}

impl Leadership {
    /// Competes for the Lease in `namespace` as `identity` (the pod's name).
    pub fn new(kube: kube::Client, namespace: &str, identity: String) -> Leadership {
        Leadership {
            api: Api::namespaced(kube, namespace),
            identity,
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_hold().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(error) => tracing::warn!(error = %error, "cannot read the leader Lease"),
            }
            tokio::time::sleep(LEASE_DURATION / 5).await;
        }
    }

    /// Keeps the Lease; returns once it is lost (held by another, or not renewed for two
    /// thirds of its duration, after which another replica may soon take over).
    pub async fn hold(&self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(LEASE_DURATION / 3).await;
            match self.try_hold().await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return,
                Err(error) => {
                    tracing::warn!(error = %error, "cannot renew the leader Lease");
                    if renewed.elapsed() > LEASE_DURATION * 2 / 3 {
                        return;
                    }
                }
            }
        }
    }

    /// Hands the Lease back (on shutdown), so another replica need not wait it out.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(error) = self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %error, "cannot release the leader Lease");
        }
    }

    /// Takes or renews the Lease if it is free, expired or ours; whether this replica holds
    /// it now. A concurrent change by another replica (a conflict) means it does not.
    async fn try_hold(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = i32::try_from(LEASE_DURATION.as_secs()).unwrap_or(i32::MAX);
        let outcome = match self.api.get_opt(LEASE_NAME).await? {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(LEASE_NAME.into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
                if !ours && !expired(spec, now) {
                    return Ok(false);
                }
                if !ours {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    tracing::info!(identity = self.identity, "taking the leader Lease");
                }
                spec.lease_duration_seconds = Some(seconds);
                spec.renew_time = Some(MicroTime(now));
                // Carries the resourceVersion read: a concurrent taker makes this a conflict.
                self.api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await
            }
        };
        match outcome {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }
}

/// Whether a Lease is free to take: no holder, or not renewed for its whole duration.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let (Some(_), Some(renewed)) = (&spec.holder_identity, &spec.renew_time) else {
        return true;
    };
    let duration = spec.lease_duration_seconds.unwrap_or(0).max(1);
    now.duration_since(renewed.0) > SignedDuration::from_secs(i64::from(duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_free_without_a_holder_or_once_its_duration_has_passed() {
        let now = Timestamp::now();
        let held = |seconds_ago: i64| LeaseSpec {
            holder_identity: Some("a".into()),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(seconds_ago))),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert!(!expired(&held(5), now));
        assert!(expired(&held(16), now));
        assert!(expired(&LeaseSpec::default(), now));
    }
}
