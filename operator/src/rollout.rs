//! Renewed certificates reach the storage pods one StatefulSet at a time. A renewal changes an
//! annotation of the pod template, and a changed template restarts the set's pods; the six
//! sets hold the six copies of every protection group (pod k of each set), so if all six
//! rolled together, pod k of every set could be down at once — a whole PG. Here the new value
//! goes to one set at a time, and only while every set is settled (all its pods updated and
//! ready); the others keep what they run with until their turn. Pure: the controller reads the
//! sets and applies what this decides.

/// What the controller saw of an existing storage set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetSeen {
    /// The value of the annotation on its pod template.
    pub annotation: Option<String>,
    /// Every pod is updated to the current template and ready.
    pub settled: bool,
}

/// The annotation value each set (`None`: not created yet) is to carry, for `new`.
pub fn annotations(sets: &[Option<SetSeen>], new: &str) -> Vec<String> {
    let all_settled = sets.iter().flatten().all(|s| s.settled);
    let mut turn_taken = false;
    sets.iter()
        .map(|set| match set {
            // A new set starts with the new certificate; one that has it keeps it.
            None => new.to_string(),
            Some(s) if s.annotation.as_deref() == Some(new) => new.to_string(),
            Some(s) => {
                if all_settled && !turn_taken {
                    turn_taken = true;
                    new.to_string()
                } else {
                    s.annotation.clone().unwrap_or_default()
                }
            }
        })
        .collect()
}

/// Whether a StatefulSet's pods all run its current template and are ready.
pub fn settled(set: &k8s_openapi::api::apps::v1::StatefulSet) -> bool {
    let want = set.spec.replicas.unwrap_or(1);
    let Some(st) = &set.status else {
        return false;
    };
    let observed = st.observed_generation.unwrap_or(0) >= set.metadata.generation.unwrap_or(0);
    let same_revision = st.current_revision.is_some() && st.current_revision == st.update_revision;
    observed
        && same_revision
        && st.updated_replicas.unwrap_or(0) == want
        && st.ready_replicas.unwrap_or(0) == want
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(a: &str, settled: bool) -> Option<SetSeen> {
        Some(SetSeen {
            annotation: Some(a.into()),
            settled,
        })
    }

    #[test]
    fn a_renewal_rolls_one_set_at_a_time_and_only_while_all_are_settled() {
        // A new volume: every set starts with the certificate.
        assert_eq!(annotations(&[None, None, None], "2"), ["2", "2", "2"]);
        // A renewal: the first set only.
        let old = [seen("1", true), seen("1", true), seen("1", true)];
        assert_eq!(annotations(&old, "2"), ["2", "1", "1"]);
        // While the first set rolls, nothing else moves.
        let rolling = [seen("2", false), seen("1", true), seen("1", true)];
        assert_eq!(annotations(&rolling, "2"), ["2", "1", "1"]);
        // Once it has settled, the next one.
        let next = [seen("2", true), seen("1", true), seen("1", true)];
        assert_eq!(annotations(&next, "2"), ["2", "2", "1"]);
        // A set that is unsettled for another reason holds the renewal back too.
        let busy = [seen("2", true), seen("1", true), seen("1", false)];
        assert_eq!(annotations(&busy, "2"), ["2", "1", "1"]);
        // A set that never had the annotation gets it in its turn, not with the others.
        let bare = [
            Some(SetSeen {
                annotation: None,
                settled: true,
            }),
            None,
        ];
        assert_eq!(annotations(&bare, "2"), ["2", "2"]);
    }
}
