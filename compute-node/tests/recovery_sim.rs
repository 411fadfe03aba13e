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
    assert!(stats.overflows > 0, "{stats:?}");
}

#[test]
fn a_seed_replays_exactly() {
    let a = recovery_sim::run(42, STEPS).unwrap();
    let b = recovery_sim::run(42, STEPS).unwrap();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

// The defects the recovery issue named, each as a scripted schedule on the same simulated world
// (real `Acceptance`, `Quorum` and `decide`); `Script::recover` runs the same checks as the
// random schedules (nothing acknowledged lost, whole transactions only, nothing discarded back,
// segments agree) and each scenario asserts its own outcome too.

use recovery_sim::Script;

const ALL: [usize; 6] = [0, 1, 2, 3, 4, 5];

/// A large transaction split over batches and PGs whose commit record reached no write quorum:
/// recovery truncated each PG at its own complete LSN, so the records of the PG that had them
/// all survived without their commit — a half transaction, the corruption first reported.
#[test]
fn scenario_a_transaction_over_batches_and_pgs_without_its_commit_is_wholly_discarded() {
    let mut s = Script::new(2).unwrap();
    let a = s.transaction(&[0, 1]);
    s.deliver(&a, &ALL, true).unwrap();
    assert_eq!(s.acknowledged(), vec![a[1]]);
    // Four records over both PGs on every segment, the commit (PG 0) on two segments only.
    let b = s.transaction(&[1, 0, 1, 0, 0]);
    s.deliver(&b[..4], &ALL, true).unwrap();
    s.deliver(&b[4..], &[0, 1], true).unwrap();
    assert_eq!(s.acknowledged(), vec![a[1]], "never acknowledged");
    s.crash_writer();
    s.reachable(0, 0, false);
    s.reachable(0, 1, false);
    s.recover().unwrap();
    assert_eq!(s.vdl(), a[1]);
    for (lsn, pg) in b.iter().zip([1, 0, 1, 0, 0]) {
        for i in 2..6 {
            assert!(
                !s.holds(pg, i, *lsn),
                "record {lsn} of the unacknowledged transaction kept"
            );
        }
    }
    // The two segments holding its commit come back: it is discarded there too, for good.
    s.reachable(0, 0, true);
    s.reachable(0, 1, true);
    let c = s.transaction(&[0, 1]);
    s.deliver(&c, &ALL, true).unwrap();
    s.crash_writer();
    s.recover().unwrap();
    // The new writer allocated from above what its recovery saw: its first record took the
    // discarded commit's LSN, and every segment holds the new record there.
    assert_eq!(c[0], b[4]);
    for i in ALL {
        assert!(
            s.holds(0, i, c[0]),
            "segment {i} does not hold the new record at {}",
            c[0]
        );
    }
    assert_eq!(s.acknowledged(), vec![a[1], c[1]]);
}

/// A truncation owed to a segment that was away during recovery lived only in that writer's
/// memory: when the writer died before the segment returned, the next writer compared raw SCLs,
/// found the away segment ahead, and copied the old writer's unacknowledged tail to the others.
#[test]
fn scenario_a_truncation_owed_to_an_absent_segment_outlives_its_writer() {
    let mut s = Script::new(1).unwrap();
    let a = s.transaction(&[0]);
    s.deliver(&a, &ALL, true).unwrap();
    let b = s.transaction(&[0, 0]);
    s.deliver(&b, &[5], true).unwrap();
    s.crash_writer();
    s.reachable(0, 5, false);
    s.recover().unwrap();
    // Writer 2 dies before writing anything, and before segment 5 is back.
    s.crash_writer();
    s.reachable(0, 5, true);
    s.reachable(0, 0, false);
    s.reachable(0, 1, false);
    s.recover().unwrap();
    for i in 2..6 {
        for lsn in &b {
            assert!(
                !s.holds(0, i, *lsn),
                "the old tail {lsn} came back on segment {i}"
            );
        }
    }
    let c = s.transaction(&[0]);
    s.deliver(&c, &[2, 3, 4, 5], true).unwrap();
    assert_eq!(s.acknowledged(), vec![a[0], c[0]]);
    s.reachable(0, 0, true);
    s.reachable(0, 1, true);
    s.crash_writer();
    s.recover().unwrap();
}

/// A write whose caller went away (the writer died while its records waited for their fsync)
/// kept its records in flight on the segment: the next writer, reusing those LSNs for its own
/// records, was refused ("already holds a different record") until the old write ended.
#[test]
fn scenario_a_write_whose_caller_went_away_does_not_block_the_next_writer() {
    let mut s = Script::new(1).unwrap();
    let a = s.transaction(&[0]);
    s.deliver(&a, &ALL, true).unwrap();
    let b = s.transaction(&[0, 0]);
    s.deliver(&b, &ALL, false).unwrap();
    s.crash_writer();
    s.recover().unwrap();
    let c = s.transaction(&[0]);
    assert_eq!(c[0], b[0], "the new writer reuses the LSN nobody saw");
    s.deliver(&c, &ALL, true).unwrap();
    assert_eq!(s.acknowledged(), vec![a[0], c[0]]);
    // The old writes end now: what they carried is discarded, not mixed in.
    for i in ALL {
        s.fsync(0, i).unwrap();
        assert!(s.holds(0, i, c[0]));
        assert!(
            !s.holds(0, i, b[1]),
            "the dead writer's record {} landed",
            b[1]
        );
    }
    s.crash_writer();
    s.recover().unwrap();
}

/// Log frames a crash keeps without their fsync (the first of a transaction's records, its
/// commit torn): replay trusts them, and recovery must still discard the transaction whole.
#[test]
fn scenario_unsynced_frames_a_crash_keeps_are_discarded_with_their_transaction() {
    let mut s = Script::new(1).unwrap();
    let a = s.transaction(&[0]);
    s.deliver(&a, &ALL, true).unwrap();
    let b = s.transaction(&[0, 0]);
    s.deliver(&b, &ALL, false).unwrap();
    for i in ALL {
        s.crash_segment(0, i, 1).unwrap();
        assert!(
            s.holds(0, i, b[0]),
            "the unsynced first frame survived the crash"
        );
        assert!(!s.holds(0, i, b[1]), "the torn commit did not");
    }
    s.crash_writer();
    s.recover().unwrap();
    for i in ALL {
        assert!(
            !s.holds(0, i, b[0]),
            "half of an unacknowledged transaction kept"
        );
    }
    assert_eq!(s.acknowledged(), vec![a[0]]);
}

/// A segment away long enough for the writer's queue to it to pass its bound: the queue was
/// dropped whole and the segment never caught up again for the writer's lifetime. Now only what
/// a write quorum of its peers holds is dropped, and the segment is brought back from them.
#[test]
fn scenario_a_segment_whose_queue_overflowed_catches_up_from_its_peers() {
    let mut s = Script::new(1).unwrap();
    s.reachable(0, 5, false);
    let mut last = 0;
    for _ in 0..20 {
        let t = s.transaction(&[0, 0]);
        s.deliver(&t, &[0, 1, 2, 3, 4], true).unwrap();
        last = t[1];
    }
    assert_eq!(s.acknowledged().len(), 20);
    assert_eq!(
        s.overflow(0, 5),
        40,
        "everything queued for it is on a write quorum"
    );
    s.reachable(0, 5, true);
    assert_eq!(s.scl(0, 5), 0);
    s.catch_up(0, 5).unwrap();
    assert_eq!(
        s.scl(0, 5),
        last,
        "the segment is whole again without a recovery"
    );
    s.crash_writer();
    s.recover().unwrap();
}
