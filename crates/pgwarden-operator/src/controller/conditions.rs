//! Status conditions as Kubernetes conventions want them: one per type, with the generation
//! observed and a transition time that changes only when the status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition to record.
pub struct Observed<'a> {
    /// `Ready`, `Approved`, `Denied`, `LeaseRenewed`.
    pub type_: &'a str,
    /// Whether it holds.
    pub status: bool,
    /// A `PascalCase` reason.
    pub reason: &'a str,
    /// What a person reads.
    pub message: String,
}

/// `conditions` with `observed` set (replacing one of its type), for `generation`.
pub fn with(
    conditions: &[Condition],
    observed: Observed<'_>,
    generation: Option<i64>,
) -> Vec<Condition> {
    let status = if observed.status { "True" } else { "False" };
    let previous = conditions.iter().find(|c| c.type_ == observed.type_);
    let last_transition_time = match previous {
        Some(previous) if previous.status == status => previous.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let condition = Condition {
        type_: observed.type_.to_string(),
        status: status.to_string(),
        reason: observed.reason.to_string(),
        message: observed.message,
        last_transition_time,
        observed_generation: generation,
    };
    // In place, so the order (and the object) changes only when a condition does.
    let mut all = conditions.to_vec();
    match all.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing) => *existing = condition,
        None => all.push(condition),
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(status: bool, reason: &str) -> Observed<'_> {
        Observed {
            type_: "Ready",
            status,
            reason,
            message: reason.to_string(),
        }
    }

    #[test]
    fn the_transition_time_moves_only_when_the_status_changes() {
        let first = with(&[], ready(false, "Waiting"), Some(1));
        let same = with(&first, ready(false, "StillWaiting"), Some(2));
        assert_eq!(same.len(), 1);
        assert_eq!(same[0].last_transition_time, first[0].last_transition_time);
        assert_eq!(same[0].reason, "StillWaiting");
        assert_eq!(same[0].observed_generation, Some(2));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let flipped = with(&same, ready(true, "Done"), Some(2));
        assert_ne!(
            flipped[0].last_transition_time,
            first[0].last_transition_time
        );
        assert_eq!(flipped[0].status, "True");
    }
}
