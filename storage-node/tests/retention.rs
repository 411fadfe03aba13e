//! Retention against the real binary: once coalesced rounds are older than the segment's window,
//! the horizon moves, old log files and versions are freed, reads below it get a clear error and
//! every LSN at or above it still reads right — also after a restart.

mod common;

use common::*;
use logdb_types::proto::{
    CreateSegmentRequest, HoldHistoryRequest, SegmentRef, StreamRecordsRequest,
};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_lease_holds_the_horizon_until_it_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let node = StorageNode::start(
        dir.path(),
        &["--coalesce-interval-ms", "10", "--gc-interval-ms", "50"],
    );
    let mut c = node.client().await;
    // The held segment (VOL) and a twin that gets the same writes and no lease (TWIN), both
    // retaining one second: what the twin's horizon reaches, the held one's could have.
    const TWIN: &str = "vol2";
    for volume in [VOL, TWIN] {
        c.create_segment(CreateSegmentRequest {
            volume_id: volume.into(),
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
    }
    let recs: Vec<_> = (1..=60)
        .map(|l| delta(l, l - 1, l % 4, (l * 100) as u32, &[l as u8; 50]))
        .collect();
    let mut twin_client = node.client().await;
    for (from, to) in [(1usize, 20usize), (21, 40), (41, 60)] {
        let batch = &recs[from - 1..to];
        write(&mut c, 1, to as u64, batch).await.unwrap();
        let mut twin = write_req(1, to as u64, batch);
        twin.volume_id = TWIN.into();
        c.write_records(twin).await.unwrap();
        wait_state(&mut c, "materialization", |s| {
            s.materialized_lsn == to as u64
        })
        .await;
        if to == 20 {
            let held = c
                .hold_history(HoldHistoryRequest {
                    volume_id: VOL.into(),
                    segment_id: SEG.into(),
                    name: "restore-1".into(),
                    lsn: 25,
                    ttl_seconds: 600,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(held.horizon_lsn, 0);
            assert!(held.expires_unix_ms > 0);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let twin = twin_client
            .get_segment_state(SegmentRef {
                volume_id: TWIN.into(),
                segment_id: SEG.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if twin.horizon_lsn >= 60 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the twin's horizon never reached 60"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The twin went to 60; the held segment stopped at its checkpoint below the lease.
    let st = state(&mut c).await;
    assert_eq!(st.horizon_lsn, 20, "{st:?}");
    let want: Vec<_> = recs
        .iter()
        .filter(|r| r.page_id.0 == 1 && r.lsn.0 <= 25)
        .collect();
    assert_eq!(
        read(&mut c, 1, 25).await.unwrap().page_data,
        expected_page(&want)
    );
    // What is below the horizon already cannot be held.
    let err = c
        .hold_history(HoldHistoryRequest {
            volume_id: VOL.into(),
            segment_id: SEG.into(),
            name: "late".into(),
            lsn: 3,
            ttl_seconds: 600,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    // Released: the horizon catches up.
    let released = c
        .hold_history(HoldHistoryRequest {
            volume_id: VOL.into(),
            segment_id: SEG.into(),
            name: "restore-1".into(),
            lsn: 0,
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.expires_unix_ms, 0);
    wait_state(&mut c, "the horizon after the release", |s| {
        s.horizon_lsn == 60
    })
    .await;
}
