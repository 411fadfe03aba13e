//! Retention against the real binary: once coalesced rounds are older than the segment's window,
//! the horizon moves, old log files and versions are freed, reads below it get a clear error and
//! every LSN at or above it still reads right — also after a restart.

mod common;

use common::*;
use logdb_types::proto::{CreateSegmentRequest, StreamRecordsRequest};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_horizon_moves_frees_log_and_refuses_older_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = StorageNode::start(
        dir.path(),
        &[
            "--coalesce-interval-ms",
            "10",
            "--gc-interval-ms",
            "50",
            "--log-file-bytes",
            "2000",
        ],
    );
    let mut c = node.client().await;
    c.create_segment(CreateSegmentRequest {
        volume_id: VOL.into(),
        segment_id: SEG.into(),
        pg_index: 0,
        first_page: 0,
        page_count: 16,
        page_size: PAGE,
        retention_seconds: 1,
        epoch: 1,
    })
    .await
    .unwrap();

    let recs: Vec<_> = (1..=40)
        .map(|l| delta(l, l - 1, l % 4, (l * 100) as u32, &[l as u8; 90]))
        .collect();
    for chunk in recs.chunks(5) {
        write(&mut c, 1, 0, chunk).await.unwrap();
    }
    let log_dir = dir.path().join("segments").join(VOL).join(SEG).join("log");
    let files_before = std::fs::read_dir(&log_dir).unwrap().count();
    assert!(
        files_before > 2,
        "the log rotated into {files_before} files"
    );

    write(&mut c, 1, 40, &[]).await.unwrap();
    let st = wait_state(&mut c, "the horizon to pass the first round", |s| {
        s.horizon_lsn == 40
    })
    .await;
    assert_eq!(st.materialized_lsn, 40);
    // The horizon is published before the files under it are deleted.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_dir(&log_dir).unwrap().count() >= files_before {
        assert!(
            std::time::Instant::now() < deadline,
            "no log file freed below the horizon"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let err = read(&mut c, 1, 39).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(
        err.message().contains("below the retention horizon 40"),
        "{}",
        err.message()
    );
    let err = c
        .stream_records(StreamRecordsRequest {
            volume_id: VOL.into(),
            segment_id: SEG.into(),
            from_lsn: 1,
            to_lsn: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);

    let want = |page: u64, upto: u64| {
        let r: Vec<_> = recs
            .iter()
            .filter(|r| r.page_id.0 == page && r.lsn.0 <= upto)
            .collect();
        expected_page(&r)
    };
    for page in 0..4 {
        assert_eq!(
            read(&mut c, page, 40).await.unwrap().page_data,
            want(page, 40),
            "page {page}"
        );
    }

    // Newer records still read at every LSN; after kill -9 too.
    let more: Vec<_> = (41..=44)
        .map(|l| delta(l, l - 1, 1, 0, &[l as u8; 8]))
        .collect();
    write(&mut c, 1, 0, &more).await.unwrap();
    node.crash_and_restart();
    let mut c = node.client().await;
    let st = state(&mut c).await;
    assert_eq!((st.scl, st.horizon_lsn), (44, 40));
    for l in 40..=44u64 {
        let page = read(&mut c, 1, l).await.unwrap().page_data;
        let mut expect = want(1, 40);
        for r in more.iter().filter(|r| r.lsn.0 <= l) {
            expect[..8].copy_from_slice(&r.data);
        }
        assert_eq!(page, expect, "page 1 at LSN {l}");
    }
}
