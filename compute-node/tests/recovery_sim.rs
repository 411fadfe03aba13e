//! The bounded sweep of the recovery simulator CI runs (src/recovery_sim.rs): thousands of seeded
//! fault schedules, each checked for lost acknowledged commits, half transactions and segments
//! that disagree. A failure prints the seed to replay with `logdb-recovery-sim --seed N`.

use logdb_compute::recovery_sim;

/// Schedules per CI run and steps per schedule (about 110 s in a debug build on a 2-core machine).
const SCHEDULES: u64 = 10_000;
const STEPS: usize = 300;

#[test]
fn recovery_holds_under_thousands_of_fault_schedules() {
    let stats = recovery_sim::sweep(0, SCHEDULES, STEPS).unwrap_or_else(|v| panic!("{v}"));
    // The schedules exercise what they claim to.
    assert!(stats.recoveries > SCHEDULES, "{stats:?}");
    assert!(stats.failed_recoveries > 0, "{stats:?}");
    assert!(stats.acknowledged > 5 * SCHEDULES, "{stats:?}");
    assert!(stats.zombie_deliveries > 0, "{stats:?}");
    assert!(stats.deposed_acknowledged > 0, "{stats:?}");
    assert!(stats.torn_frames > 0 && stats.frames_lost > 0, "{stats:?}");
    assert!(stats.duplicates > 0, "{stats:?}");
}

#[test]
fn a_seed_replays_exactly() {
    let a = recovery_sim::run(42, STEPS).unwrap();
    let b = recovery_sim::run(42, STEPS).unwrap();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}
