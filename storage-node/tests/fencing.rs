//! Epoch fencing and recovery truncation against the real binary: a stale epoch is refused with
//! both numbers named, for every segment of the volume on the node and across a kill -9; a
//! truncation drops an old writer's records above the VDL for good.

mod common;

use common::*;
use logdb_types::proto::{
    InstallEpochRequest, RecoveryPoint, StreamRecordsRequest, TruncateRequest,
};
use tonic::Code;

async fn install(
    c: &mut logdb_types::proto::storage_service_client::StorageServiceClient<
        tonic::transport::Channel,
    >,
    segment: &str,
    epoch: u64,
) -> Result<u64, tonic::Status> {
    c.install_epoch(InstallEpochRequest {
        volume_id: VOL.into(),
        segment_id: segment.into(),
        epoch,
    })
    .await
    .map(|r| r.into_inner().epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epochs_are_refused_across_segments_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = StorageNode::start(dir.path(), &[]);
    let mut c = node.client().await;
    create_segment(&mut c, VOL, SEG, 0, 100).await;
    create_segment(&mut c, VOL, "pg1-a1", 100, 100).await;

    write(&mut c, 1, 0, &[delta(1, 0, 1, 0, b"a")])
        .await
        .unwrap();
    assert_eq!(install(&mut c, SEG, 7).await.unwrap(), 7);

    let err = write(&mut c, 6, 0, &[delta(2, 1, 1, 0, b"b")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        err.message(),
        "write rejected: epoch 6 < 7 seen for volume vol1"
    );
    assert_eq!(
        state(&mut c).await.highest_lsn,
        1,
        "nothing of the fenced batch was applied"
    );

    // The other segment of the same volume on this node is fenced too.
    let mut req = write_req(6, 0, &[delta(5, 0, 150, 0, b"x")]);
    req.segment_id = "pg1-a1".into();
    let err = c.write_records(req).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    let err = install(&mut c, SEG, 5).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("epoch 5 < 7"), "{}", err.message());

    write(&mut c, 7, 0, &[delta(2, 1, 1, 0, b"b")])
        .await
        .unwrap();
    // A write under a newer epoch installs it.
    let ack = write(&mut c, 9, 0, &[delta(3, 2, 1, 0, b"c")])
        .await
        .unwrap();
    assert_eq!(ack.epoch, 9);
    let err = write(&mut c, 8, 0, &[delta(4, 3, 1, 0, b"d")])
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "write rejected: epoch 8 < 9 seen for volume vol1"
    );

    node.crash_and_restart();
    let mut c = node.client().await;
    let err = write(&mut c, 8, 0, &[delta(4, 3, 1, 0, b"d")])
        .await
        .unwrap_err();
    assert_eq!(
        err.message(),
        "write rejected: epoch 8 < 9 seen for volume vol1",
        "epoch survives kill -9"
    );
    let st = state(&mut c).await;
    assert_eq!((st.epoch, st.scl), (9, 3));
}

/// A node with one segment holding records 1..=10 (a chain on page 1) written under epoch 1.
async fn node_with_ten_records_of_writer_1(
    dir: &std::path::Path,
) -> (
    logdb_storage::testkit::StorageProcess,
    logdb_types::proto::storage_service_client::StorageServiceClient<tonic::transport::Channel>,
) {
    let node = StorageNode::start(dir, &[]);
    let mut c = node.client().await;
    create_segment(&mut c, VOL, SEG, 0, 100).await;
    let recs: Vec<_> = (1..=10)
        .map(|l| delta(l, l - 1, 1, l as u32, &[l as u8]))
        .collect();
    write(&mut c, 1, 0, &recs).await.unwrap();
    (node, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_discards_the_old_writers_tail_for_good() {
    let dir = tempfile::tempdir().unwrap();
    // The old writer (epoch 1) wrote 1..=10; only up to 6 is durable on a quorum (VDL 6).
    let (mut node, mut c) = node_with_ten_records_of_writer_1(dir.path()).await;

    let truncate = |epoch, above| TruncateRequest {
        volume_id: VOL.into(),
        segment_id: SEG.into(),
        epoch,
        above_lsn: above,
        ..Default::default()
    };
    let st = c.truncate(truncate(2, 6)).await.unwrap().into_inner();
    assert_eq!((st.scl, st.highest_lsn, st.epoch), (6, 6, 2));
    // Idempotent.
    c.truncate(truncate(2, 6)).await.unwrap();

    let err = read(&mut c, 1, 8).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    // The old writer is fenced.
    let err = write(&mut c, 1, 0, &[delta(11, 10, 1, 0, b"z")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The new writer continues the chain from the last kept record.
    let ack = write(&mut c, 2, 0, &[delta(11, 6, 1, 50, b"new")])
        .await
        .unwrap();
    assert_eq!(ack.acknowledged_lsn, 11);
    let page = read(&mut c, 1, 11).await.unwrap().page_data;
    let mut want = vec![0u8; PAGE as usize];
    for l in 1..=6u8 {
        want[l as usize] = l;
    }
    want[50..53].copy_from_slice(b"new");
    assert_eq!(page, want);

    // Replay after kill -9 must not resurrect records 7..=10 from the log.
    node.crash_and_restart();
    let mut c = node.client().await;
    let st = state(&mut c).await;
    assert_eq!((st.scl, st.highest_lsn, st.epoch), (11, 11, 2));
    assert_eq!(read(&mut c, 1, 11).await.unwrap().page_data, want);

    // Materialize, then a truncation below the materialized LSN is refused.
    write(&mut c, 2, 11, &[]).await.unwrap();
    wait_state(&mut c, "materialization", |s| s.materialized_lsn == 11).await;
    let err = c.truncate(truncate(3, 8)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("already materialized"),
        "{}",
        err.message()
    );
}

fn point(epoch: u64, above: u64, next: u64) -> RecoveryPoint {
    RecoveryPoint {
        epoch,
        above_lsn: above,
        next_lsn: next,
    }
}

fn adopt(epoch: u64, decisions: Vec<RecoveryPoint>) -> TruncateRequest {
    TruncateRequest {
        volume_id: VOL.into(),
        segment_id: SEG.into(),
        epoch,
        above_lsn: 0,
        decisions,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writers_decision_history_replaces_the_segments_and_voids_older_tails() {
    let dir = tempfile::tempdir().unwrap();
    let (mut node, mut c) = node_with_ten_records_of_writer_1(dir.path()).await;

    // Writer 2 kept up to 6 and starts its own records at 11.
    let st = c
        .truncate(adopt(2, vec![point(2, 6, 11)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((st.scl, st.highest_lsn, st.epoch), (6, 6, 2));
    assert_eq!(st.recovery_points, vec![point(2, 6, 11)]);
    write(&mut c, 2, 0, &[delta(11, 6, 1, 40, b"two")])
        .await
        .unwrap();

    // Recovery's scan: headers with the epoch each record was written under, no redo data.
    let mut s = c
        .stream_records(StreamRecordsRequest {
            volume_id: VOL.into(),
            segment_id: SEG.into(),
            from_lsn: 5,
            to_lsn: 0,
            headers_only: true,
            with_predecessor: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(r) = s.message().await.unwrap() {
        assert!(r.redo_data.is_empty());
        seen.push((r.lsn, r.prev_lsn, r.written_epoch));
    }
    assert_eq!(
        seen,
        [(4, 3, 1), (5, 4, 1), (6, 5, 1), (11, 6, 2)],
        "4: the predecessor"
    );

    // A history that does not end with the caller's own decision, or goes back, is refused.
    for bad in [
        vec![point(2, 6, 11)],
        vec![point(3, 11, 12), point(2, 6, 11)],
    ] {
        let err = c.truncate(adopt(3, bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    }

    // Writer 3 keeps 11 and carries decision 2 on; writer 2 can no longer impose its history.
    let st = c
        .truncate(adopt(3, vec![point(2, 6, 11), point(3, 11, 12)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((st.scl, st.highest_lsn), (11, 11));
    let err = c
        .truncate(adopt(2, vec![point(2, 6, 11)]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // A record of the voided history arriving late is not taken back in.
    let err = write(&mut c, 1, 0, &[delta(7, 6, 1, 7, &[7])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // The history survives kill -9; the voided tail stays gone.
    node.crash_and_restart();
    let mut c = node.client().await;
    let st = state(&mut c).await;
    assert_eq!((st.scl, st.highest_lsn, st.epoch), (11, 11, 3));
    assert_eq!(st.recovery_points, vec![point(2, 6, 11), point(3, 11, 12)]);
}
