//! Epoch fencing (DESIGN.md §7): a storage node remembers, per volume, the highest epoch any of its
//! segments has installed, and refuses every request carrying a lower one. That is what makes an
//! old writer harmless once a new one has installed its epoch on a write quorum.

use std::collections::HashMap;
use std::sync::Mutex;

use logdb_types::Epoch;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{action} rejected: epoch {requested} < {seen} seen for volume {volume}")]
pub struct Fenced {
    pub action: &'static str,
    pub volume: String,
    pub requested: Epoch,
    pub seen: Epoch,
}

/// The highest epoch seen per volume on this node.
#[derive(Debug, Default)]
pub struct VolumeEpochs {
    seen: Mutex<HashMap<String, Epoch>>,
}

impl VolumeEpochs {
    pub fn seen(&self, volume: &str) -> Epoch {
        self.seen
            .lock()
            .expect("epochs lock")
            .get(volume)
            .copied()
            .unwrap_or_default()
    }

    /// Refuses `requested` when it is below the highest epoch seen for `volume`.
    pub fn check(
        &self,
        action: &'static str,
        volume: &str,
        requested: Epoch,
    ) -> Result<(), Fenced> {
        let seen = self.seen(volume);
        if requested < seen {
            return Err(Fenced {
                action,
                volume: volume.to_string(),
                requested,
                seen,
            });
        }
        Ok(())
    }

    /// Records that a segment of `volume` durably installed `epoch`.
    pub fn raise(&self, volume: &str, epoch: Epoch) {
        let mut seen = self.seen.lock().expect("epochs lock");
        let e = seen.entry(volume.to_string()).or_default();
        *e = (*e).max(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lower_epochs_are_refused_with_both_numbers() {
        let e = VolumeEpochs::default();
        e.check("write", "v1", Epoch(0)).unwrap();
        e.raise("v1", Epoch(7));
        e.raise("v1", Epoch(3));
        assert_eq!(e.seen("v1"), Epoch(7));
        e.check("write", "v1", Epoch(7)).unwrap();
        e.check("write", "v2", Epoch(1)).unwrap();
        let err = e.check("write", "v1", Epoch(6)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "write rejected: epoch 6 < 7 seen for volume v1"
        );
    }
}
