//! How big a storage pod's PVC must be to hold its segment for the whole retention window.
//!
//! A storage pod holds one segment of one protection group: the pages (at most the segment's
//! size, as images at the horizon), the history of the retention window (the log plus its
//! index and images: at most twice the redo it received — docs/BENCHMARKS.md measures 1.8×),
//! and the free-space reserve the node keeps back from its logs (2% of the disk, 4 MiB..1 GiB;
//! below it writes are refused until space returns). The horizon moves in checkpoint steps of
//! an eighth of the window, so up to 9/8 of the window is retained at once.
//!
//! With `spec.writeRate` (redo bytes per second one PG must sustain) the PVC is sized from it;
//! without, it is the segment plus a quarter (at least 1 GiB) and the status says what write rate
//! that holds for the window. Pure functions: the controller and the tests call them alike.

use crate::units::human_bytes;

/// Storage keeps at most this many bytes of history per byte of redo.
pub const HISTORY_PER_REDO: u64 = 2;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// What a storage PVC holds, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvcPlan {
    pub segment: u64,
    pub history: u64,
    pub reserve: u64,
    /// The redo rate per PG the history holds for the window (bytes/s).
    pub rate: u64,
    /// Whether `rate` was asked for (`spec.writeRate`) or is what the default size allows.
    pub stated: bool,
    /// The retention window it was planned for, in seconds.
    pub retention_secs: u64,
}

impl PvcPlan {
    /// The PVC request: everything, rounded up to a whole MiB.
    pub fn bytes(&self) -> u64 {
        self.segment
            .saturating_add(self.history)
            .saturating_add(self.reserve)
            .div_ceil(MIB)
            .saturating_mul(MIB)
    }
}

/// The window's history at `rate` redo bytes per second: 9/8 of the window, twice the redo.
fn history_for(rate: u64, retention_secs: u64) -> u64 {
    let window = retention_secs + retention_secs.div_ceil(8);
    rate.saturating_mul(window).saturating_mul(HISTORY_PER_REDO)
}

/// The storage node's default reserve on a disk of `total` bytes.
fn reserve_for(total: u64) -> u64 {
    logdb_storage::disk_space::auto_reserve(total)
}

/// The PVC of one storage pod for segments of `segment` bytes, `retention_secs` of history and,
/// if stated, `write_rate` redo bytes per second per PG.
pub fn pvc_plan(segment: u64, retention_secs: u64, write_rate: Option<u64>) -> PvcPlan {
    match write_rate {
        Some(rate) => {
            let history = history_for(rate, retention_secs);
            // The reserve is 2% of the whole disk: of segment + history + reserve.
            let reserve = reserve_for(segment.saturating_add(history).saturating_mul(50) / 49);
            PvcPlan {
                segment,
                history,
                reserve,
                rate,
                stated: true,
                retention_secs,
            }
        }
        None => {
            let total = segment + (segment / 4).max(GIB);
            let reserve = reserve_for(total);
            PvcPlan {
                segment,
                history: total - segment - reserve,
                reserve,
                rate: rate_held(total, segment, retention_secs),
                stated: false,
                retention_secs,
            }
        }
    }
}

/// The redo rate per PG (bytes/s) a PVC of `pvc` bytes holds for the window.
pub fn rate_held(pvc: u64, segment: u64, retention_secs: u64) -> u64 {
    let history = pvc.saturating_sub(segment).saturating_sub(reserve_for(pvc));
    history / history_for(1, retention_secs).max(1)
}

/// The `RetentionSized` condition: (the PVCs hold the window, reason, message), for PVCs of
/// `actual` bytes (sized when the volume was created: a StatefulSet's claims never change) and
/// what the spec asks for now (`plan`; the retention may have changed since).
pub fn retention_condition(
    plan: &PvcPlan,
    actual: u64,
    retention: &str,
) -> (bool, &'static str, String) {
    let have = human_bytes(actual);
    let held = human_bytes(rate_held(actual, plan.segment, plan.retention_secs));
    if !plan.stated {
        return (
            false,
            "NoWriteRateStated",
            format!(
                "storage PVCs of {have} hold the {retention} retention window only up to {held}/s \
                 of redo per protection group; set spec.writeRate to size them for the load (a \
                 storage node whose disk fills refuses writes until space returns)"
            ),
        );
    }
    if actual < plan.bytes() {
        return (
            false,
            "RetentionDoesNotFit",
            format!(
                "the {retention} retention window at {}/s of redo per protection group needs \
                 storage PVCs of {}, but they are {have} (they hold {held}/s): expand them \
                 through a storage class that allows it, or shorten spec.retention (a storage \
                 node whose disk fills refuses writes until space returns)",
                human_bytes(plan.rate),
                human_bytes(plan.bytes())
            ),
        );
    }
    (
        true,
        "SizedForWriteRate",
        format!(
            "storage PVCs of {have} hold a segment of {}, the {retention} retention window at \
             {}/s of redo per protection group ({} of history) and a {} free-space reserve",
            human_bytes(plan.segment),
            human_bytes(plan.rate),
            human_bytes(plan.history),
            human_bytes(plan.reserve)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stated_rate_sizes_the_pvc_for_the_window() {
        // 10 GiB segments, 24 h, 1 MiB/s: 2 x 27 h of redo = 2 x 97,200 MiB of history.
        let p = pvc_plan(10 * GIB, 86_400, Some(MIB));
        assert_eq!(p.history, 2 * 97_200 * MIB);
        assert_eq!(p.reserve, GIB, "2% of ~200 GiB, capped at 1 GiB");
        assert_eq!(p.bytes(), 10 * GIB + 2 * 97_200 * MIB + GIB);
        let (ok, reason, msg) = retention_condition(&p, p.bytes(), "24h");
        assert!(ok, "{reason}: {msg}");
        assert!(msg.contains("1.0 MiB/s"), "{msg}");
    }

    #[test]
    fn a_window_grown_past_the_pvcs_is_reported() {
        // Created for 24 h; the retention became 7 d: the PVCs stay as they were made.
        let made = pvc_plan(10 * GIB, 86_400, Some(MIB)).bytes();
        let now = pvc_plan(10 * GIB, 7 * 86_400, Some(MIB));
        let (ok, reason, msg) = retention_condition(&now, made, "7d");
        assert!(!ok);
        assert_eq!(reason, "RetentionDoesNotFit");
        assert!(msg.contains("shorten spec.retention"), "{msg}");
        // What the old PVCs hold over 7 d: about a seventh of the rate.
        let held = rate_held(made, 10 * GIB, 7 * 86_400);
        assert!(held < MIB / 6 && held > MIB / 8, "{held}");
    }

    #[test]
    fn a_small_volume_keeps_a_small_reserve() {
        let p = pvc_plan(GIB, 3_600, Some(64 << 10));
        // 1 h + 1/8 h at 64 KiB/s, twice: 506.25 MiB.
        assert_eq!(p.history, 2 * (64 << 10) * 4_050);
        assert_eq!(p.reserve, (GIB + p.history) * 50 / 49 / 50);
        assert!(p.bytes() > GIB + p.history + p.reserve - MIB);
        assert_eq!(p.bytes() % MIB, 0);
    }

    #[test]
    fn without_a_rate_the_default_size_says_what_rate_it_holds() {
        let p = pvc_plan(10 * GIB, 86_400, None);
        assert_eq!(
            p.bytes(),
            10 * GIB + 10 * GIB / 4,
            "segment + 25% as before"
        );
        // 2% of 12.5 GiB is the reserve; the rest of the quarter is history.
        assert_eq!(p.reserve, (12 * GIB + GIB / 2) / 50);
        assert_eq!(p.rate, p.history / (2 * 97_200));
        let (ok, reason, msg) = retention_condition(&p, p.bytes(), "24h");
        assert!(!ok);
        assert_eq!(reason, "NoWriteRateStated");
        assert!(msg.contains("set spec.writeRate"), "{msg}");
        // A day of 24 h at the rate it reports fits; 10% more does not.
        assert!(history_for(p.rate, 86_400) <= p.history);
        assert!(history_for(p.rate + p.rate / 10 + 1, 86_400) > p.history);
    }

    #[test]
    fn a_huge_rate_saturates_instead_of_wrapping() {
        let p = pvc_plan(10 * GIB, u64::MAX / 4, Some(u64::MAX / 4));
        assert_eq!(p.history, u64::MAX);
        assert_eq!(p.reserve, GIB);
        assert!(p.bytes() >= u64::MAX - MIB);
    }
}
