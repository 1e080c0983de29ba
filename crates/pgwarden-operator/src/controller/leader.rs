//! One active operator among its replicas: the holder of a `coordination.k8s.io` Lease, as
//! Kubernetes' own controllers elect theirs. The holder renews it every third of its
//! duration; another replica takes it over only once it has seen the record unchanged for a
//! whole duration by its own monotonic clock (no comparison of clocks across machines, as
//! client-go does), and a holder that cannot renew it for two thirds of that, counted from
//! before its last successful attempt was sent, stops first. Every call has a deadline.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
#[cfg(test)]
use k8s_openapi::jiff::SignedDuration;
use k8s_openapi::jiff::Timestamp;
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
    /// The other holder's record as last seen (holder and renew time), and since when.
    observed: parking_lot::Mutex<Option<(String, Instant)>>,
}

impl Leadership {
    /// Competes for the Lease in `namespace` as `identity` (the pod's name).
    pub fn new(kube: kube::Client, namespace: &str, identity: String) -> Leadership {
        Leadership {
            api: Api::namespaced(kube, namespace),
            identity,
            observed: parking_lot::Mutex::new(None),
        }
    }

    /// Waits until this replica holds the Lease; returns when the winning attempt was sent.
    pub async fn acquire(&self) -> Instant {
        loop {
            let sent = Instant::now();
            match self.try_hold().await {
                Ok(true) => return sent,
                Ok(false) => {}
                Err(error) => tracing::warn!(error = %error, "cannot read the leader Lease"),
            }
            tokio::time::sleep(LEASE_DURATION / 5).await;
        }
    }

    /// Keeps the Lease; returns once it is lost (held by another, or not renewed for two
    /// thirds of its duration, after which another replica may soon take over). `since`: when
    /// the attempt that acquired it was sent.
    pub async fn hold(&self, since: Instant) {
        let mut renewed = since;
        loop {
            tokio::time::sleep(LEASE_DURATION / 3).await;
            let sent = Instant::now();
            match self.try_hold().await {
                Ok(true) => renewed = sent,
                Ok(false) => return,
                Err(error) => tracing::warn!(error = %error, "cannot renew the leader Lease"),
            }
            if renewed.elapsed() > LEASE_DURATION * 2 / 3 {
                return;
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
    async fn try_hold(&self) -> Result<bool, String> {
        // Within a third of the duration, or it counts as failed: a hung call must not let
        // this replica believe it leads after another took over.
        match tokio::time::timeout(LEASE_DURATION / 3, self.try_hold_once()).await {
            Ok(outcome) => outcome.map_err(|e| e.to_string()),
            Err(_) => Err("the API server did not answer in time".into()),
        }
    }

    async fn try_hold_once(&self) -> Result<bool, kube::Error> {
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
                if !ours && !self.abandoned(spec) {
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

impl Leadership {
    /// Whether another replica's Lease is free to take: it has no holder, or this replica has
    /// seen the same record (holder and renew time) for a whole duration.
    fn abandoned(&self, spec: &LeaseSpec) -> bool {
        let Some(holder) = &spec.holder_identity else {
            return true;
        };
        let record = format!(
            "{holder} {}",
            spec.renew_time
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default()
        );
        let seconds = spec.lease_duration_seconds.unwrap_or(0).max(1);
        let duration = Duration::from_secs(u64::try_from(seconds).unwrap_or(1));
        let mut observed = self.observed.lock();
        match &*observed {
            Some((seen, since)) if *seen == record => since.elapsed() > duration,
            _ => {
                *observed = Some((record, Instant::now()));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: Option<&str>, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(1),
            ..LeaseSpec::default()
        }
    }

    #[tokio::test]
    async fn a_lease_is_free_without_a_holder_or_once_seen_unchanged_for_its_duration() {
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let kube = kube::Client::try_from(config).unwrap();
        let me = Leadership::new(kube, "ns", "me".into());
        assert!(me.abandoned(&held_by(None, Timestamp::now())));
        // A record seen for the first time is fresh, whatever its clock says.
        let old = Timestamp::now() - SignedDuration::from_secs(3600);
        assert!(!me.abandoned(&held_by(Some("a"), old)));
        assert!(!me.abandoned(&held_by(Some("a"), old)));
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(me.abandoned(&held_by(Some("a"), old)));
        // Renewed meanwhile: fresh again.
        assert!(!me.abandoned(&held_by(Some("a"), Timestamp::now())));
    }
}
