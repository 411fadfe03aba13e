//! Writes and versioned reads against the real `logdb-storage` binary: reads at several LSNs of
//! one page before and after coalescing, holes filled later, idempotent re-sends, concurrent
//! writers sharing fsyncs, and many segments of several page sizes on one node.

mod common;

use common::*;
use logdb_types::proto::{
    CreateSegmentRequest, InspectPagesRequest, PageState, ReadPageRequest, StreamRecordsRequest,
};
use logdb_types::record::RedoRecord;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_several_lsns_of_one_page_before_and_after_coalescing() {
    let dir = tempfile::tempdir().unwrap();
    let node = StorageNode::start(dir.path(), &["--coalesce-interval-ms", "20"]);
    let mut c = node.client().await;
    create_segment(&mut c, VOL, SEG, 0, 1024).await;

    // Page 5 gets an image, then deltas; page 6 is touched in between.
    let recs = vec![
        image(1, 0, 5, 0xAA),
        delta(2, 1, 5, 100, b"first"),
        delta(3, 2, 6, 0, b"other page"),
        delta(4, 3, 5, 102, b"XY"),
        commit_delta(5, 4, 5, 8000, b"tail", 1_000),
    ];
    // VDL 0: the coalescer must leave everything pending.
    let ack = write(&mut c, 1, 0, &recs).await.unwrap();
    assert!(ack.success);
    assert_eq!(ack.acknowledged_lsn, 5);

    let expect_at = |lsn: u64| -> Vec<u8> {
        let upto: Vec<&RedoRecord> = recs
            .iter()
            .filter(|r| r.lsn.0 <= lsn && r.page_id.0 == 5)
            .collect();
        expected_page(&upto)
    };
    for lsn in 1..=5 {
        let r = read(&mut c, 5, lsn).await.unwrap();
        assert_eq!(r.page_data, expect_at(lsn), "page 5 at LSN {lsn} (pending)");
        let want_lsn = recs
            .iter()
            .filter(|r| r.lsn.0 <= lsn && r.page_id.0 == 5)
            .map(|r| r.lsn.0)
            .max()
            .unwrap();
        assert_eq!(r.materialized_lsn, want_lsn);
    }
    let pages = c
        .inspect_pages(InspectPagesRequest {
            volume_id: VOL.into(),
            segment_id: SEG.into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .pages;
    let p5 = pages.iter().find(|p| p.page_id == 5).unwrap();
    assert_eq!(p5.pending_lsns, vec![1, 2, 4, 5]);
    assert_eq!(p5.state, PageState::Pending as i32);
    assert_eq!(p5.base_lsn, 0);

    // Announce VDL 5: the coalescer materializes; the same reads give the same bytes.
    write(&mut c, 1, 5, &[]).await.unwrap();
    let st = wait_state(&mut c, "materialization", |s| s.materialized_lsn == 5).await;
    assert_eq!(st.pending_records, 0);
    for lsn in 1..=5 {
        let r = read(&mut c, 5, lsn).await.unwrap();
        assert_eq!(
            r.page_data,
            expect_at(lsn),
            "page 5 at LSN {lsn} (materialized)"
        );
    }
    let r = read(&mut c, 6, 0).await.unwrap();
    assert_eq!(&r.page_data[..10], b"other page");
    assert_eq!(r.materialized_lsn, 3);
    let pages = c
        .inspect_pages(InspectPagesRequest {
            volume_id: VOL.into(),
            segment_id: SEG.into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .pages;
    let p5 = pages.iter().find(|p| p.page_id == 5).unwrap();
    // Four small deltas: no image yet (one pays only past four pages of deltas, or 256 of
    // them); a read applies the four.
    assert_eq!(
        (
            p5.base_lsn,
            p5.deltas_above_base,
            p5.state,
            p5.pending_lsns.len()
        ),
        (0, 4, PageState::Clean as i32, 0)
    );

    // A page never written reads as zeros at LSN 0.
    let r = read(&mut c, 7, 5).await.unwrap();
    assert_eq!(r.page_data, vec![0; PAGE as usize]);
    assert_eq!(r.materialized_lsn, 0);

    // Records come back in LSN order for repair.
    let streamed: Vec<u64> = {
        let mut s = c
            .stream_records(StreamRecordsRequest {
                volume_id: VOL.into(),
                segment_id: SEG.into(),
                from_lsn: 2,
                to_lsn: 4,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.message().await.unwrap() {
            // Streamed with the epoch each record was written under (outside the checksum).
            assert_eq!(r.written_epoch, 1);
            let mut plain = r.clone();
            plain.written_epoch = 0;
            assert_eq!(RedoRecord::from_proto(r.clone()).unwrap().to_proto(), plain);
            out.push(r.lsn);
        }
        out
    };
    assert_eq!(streamed, vec![2, 3, 4]);

    let metrics = node.scrape().await;
    for needle in [
        "logdb_storage_records_received_total 5",
        "logdb_storage_segment_scl{volume=\"vol1\",segment=\"pg0-a1\"} 5",
        "logdb_storage_segment_pending_records{volume=\"vol1\",segment=\"pg0-a1\"} 0",
        "logdb_storage_segment_coalesce_lag_lsn{volume=\"vol1\",segment=\"pg0-a1\"} 0",
        "logdb_storage_segment_fsyncs{",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle:?}:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_hold_the_scl_until_filled_and_resends_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let node = StorageNode::start(dir.path(), &[]);
    let mut c = node.client().await;
    create_segment(&mut c, VOL, SEG, 0, 64).await;

    let r1 = delta(10, 0, 1, 0, b"a");
    let r2 = delta(20, 10, 2, 0, b"b");
    let r3 = delta(30, 20, 1, 1, b"c");
    let ack = write(&mut c, 1, 0, std::slice::from_ref(&r3))
        .await
        .unwrap();
    assert_eq!(
        (ack.acknowledged_lsn, ack.highest_lsn),
        (0, 30),
        "30 waits for 20"
    );
    let err = read(&mut c, 1, 30).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("above the segment complete LSN 0"),
        "{}",
        err.message()
    );

    let ack = write(&mut c, 1, 0, std::slice::from_ref(&r1))
        .await
        .unwrap();
    assert_eq!(ack.acknowledged_lsn, 10);
    let ack = write(&mut c, 1, 0, std::slice::from_ref(&r2))
        .await
        .unwrap();
    assert_eq!(ack.acknowledged_lsn, 30, "the hole is filled");
    let page = read(&mut c, 1, 30).await.unwrap();
    assert_eq!(&page.page_data[..2], b"ac");

    // Re-sending the same records changes nothing; a different record at a held LSN is refused.
    let ack = write(&mut c, 1, 0, &[r1.clone(), r2, r3]).await.unwrap();
    assert_eq!((ack.acknowledged_lsn, ack.highest_lsn), (30, 30));
    let err = write(&mut c, 1, 0, &[delta(10, 0, 1, 0, b"z")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("LSN 10 already holds a different record"),
        "{}",
        err.message()
    );
    let metrics = node.scrape().await;
    assert!(
        metrics.contains("logdb_storage_records_received_total 6"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_out_of_order_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let node = StorageNode::start(dir.path(), &[]);
    let mut c = node.client().await;
    create_segment(&mut c, VOL, SEG, 0, 256).await;

    const STREAMS: u64 = 8;
    const PER_STREAM: u64 = 50;
    let total = STREAMS * PER_STREAM;
    // Stream s sends LSNs s+1, s+1+STREAMS, ...: every stream's records sit above others' holes.
    let mut tasks = Vec::new();
    for s in 0..STREAMS {
        let mut c = node.client().await;
        tasks.push(tokio::spawn(async move {
            let mut lsn = s + 1;
            while lsn <= total {
                let rec = delta(
                    lsn,
                    lsn - 1,
                    lsn % 256,
                    (lsn % 100) as u32 * 8,
                    &lsn.to_le_bytes(),
                );
                write(&mut c, 1, 0, &[rec]).await.unwrap();
                lsn += STREAMS;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let st = state(&mut c).await;
    assert_eq!((st.scl, st.highest_lsn), (total, total));
    // Every record is there: each page shows the last delta written to each slot.
    for page in [0u64, 17, 255] {
        let got = read(&mut c, page, total).await.unwrap().page_data;
        let recs: Vec<RedoRecord> = (1..=total)
            .filter(|l| l % 256 == page)
            .map(|l| delta(l, l - 1, page, (l % 100) as u32 * 8, &l.to_le_bytes()))
            .collect();
        assert_eq!(
            got,
            expected_page(&recs.iter().collect::<Vec<_>>()),
            "page {page}"
        );
    }
    let metrics = node.scrape().await;
    let fsyncs: u64 = metrics
        .lines()
        .find(|l| l.starts_with("logdb_storage_segment_fsyncs{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("fsync gauge");
    assert!(
        fsyncs <= total,
        "{fsyncs} fsyncs for {total} acknowledged batches"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_serves_many_volumes_and_page_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let node = StorageNode::start(dir.path(), &[]);
    let mut c = node.client().await;
    for (vol, size) in [("small", 4096u32), ("default", 8192), ("huge", 65536)] {
        for (seg, first) in [("pg0", 0u64), ("pg1", 100)] {
            c.create_segment(CreateSegmentRequest {
                volume_id: vol.into(),
                segment_id: seg.into(),
                pg_index: (first / 100) as u32,
                first_page: first,
                page_count: 100,
                page_size: size,
                retention_seconds: 60,
                epoch: 1,
            })
            .await
            .unwrap();
        }
    }
    for (vol, size) in [("small", 4096usize), ("default", 8192), ("huge", 65536)] {
        for (seg, page) in [("pg0", 3u64), ("pg1", 150)] {
            let img = logdb_types::record::RedoRecord::new(
                logdb_types::Lsn(1),
                logdb_types::Lsn(0),
                1,
                logdb_types::PageId(page),
                0,
                logdb_types::record::RecordKind::Image,
                0,
                0,
                vec![size as u8 ^ page as u8; size],
            );
            let mut req = write_req(1, 1, std::slice::from_ref(&img));
            req.volume_id = vol.into();
            req.segment_id = seg.into();
            c.write_records(req).await.unwrap();
            let got = c
                .read_page(ReadPageRequest {
                    volume_id: vol.into(),
                    page_id: page,
                    requested_lsn: 1,
                    segment_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.page_data, img.data, "{vol}/{seg}");
        }
    }
    let listed = c
        .list_segments(logdb_types::proto::ListSegmentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .segments;
    assert_eq!(listed.len(), 6);
    assert!(listed.iter().all(|s| s.scl == 1));
}
