//! Crash safety and corruption against the real binary: kill -9 at arbitrary moments of a running
//! workload (while fsyncs and coalescing rounds are under way) loses no acknowledged record and
//! changes no page; a damaged log frame or page version is detected and never served.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use logdb_types::record::RedoRecord;
use tonic::Code;

/// Record `lsn` of the workload: deterministic, so the expected pages can be recomputed.
fn workload_record(lsn: u64) -> RedoRecord {
    let page = (lsn * 7) % 40;
    if lsn % 50 == 1 {
        image(lsn, lsn - 1, page, lsn as u8)
    } else if lsn.is_multiple_of(7) {
        let (src, dst, len) = ((lsn * 31) % 4000, (lsn * 17) % 4000, lsn % 300 + 1);
        RedoRecord::new(
            logdb_types::Lsn(lsn),
            logdb_types::Lsn(lsn - 1),
            lsn,
            logdb_types::PageId(page),
            dst as u32,
            logdb_types::record::RecordKind::Move,
            0,
            0,
            logdb_types::record::encode_move(src as u32, len as u32),
        )
    } else {
        let offset = ((lsn * 131) % 8000) as u32;
        let data: Vec<u8> = (0..(lsn % 150 + 1)).map(|i| (lsn + i) as u8).collect();
        if lsn.is_multiple_of(5) {
            commit_delta(lsn, lsn - 1, page, offset, &data, 1_000 + lsn)
        } else {
            delta(lsn, lsn - 1, page, offset, &data)
        }
    }
}

fn expected(page: u64, upto: u64) -> Vec<u8> {
    let recs: Vec<RedoRecord> = (1..=upto)
        .map(workload_record)
        .filter(|r| r.page_id.0 == page)
        .collect();
    expected_page(&recs.iter().collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_writes_and_coalescing_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = StorageNode::start(
        dir.path(),
        &["--coalesce-interval-ms", "5", "--log-file-bytes", "65536"],
    );
    let mut c = node.client().await;
    create_segment(&mut c, VOL, SEG, 0, 64).await;

    let mut next = 1u64;
    for round in 0..4u64 {
        let acked = Arc::new(AtomicU64::new(next - 1));
        let mut writer_client = node.client().await;
        let acked2 = Arc::clone(&acked);
        let start = next;
        // Batches of 1..=8 records, VDL = last acknowledged SCL so the coalescer works meanwhile.
        let writer = tokio::spawn(async move {
            let mut lsn = start;
            loop {
                let n = lsn % 8 + 1;
                let recs: Vec<RedoRecord> = (lsn..lsn + n).map(workload_record).collect();
                match write(&mut writer_client, 1, acked2.load(Ordering::SeqCst), &recs).await {
                    Ok(ack) => {
                        assert!(
                            ack.acknowledged_lsn >= lsn + n - 1,
                            "ack {ack:?} for batch ending {}",
                            lsn + n - 1
                        );
                        acked2.store(ack.acknowledged_lsn, Ordering::SeqCst);
                        lsn += n;
                    }
                    Err(_) => return, // the node was killed
                }
            }
        });
        // Let a varying amount of work happen, then kill -9 in the middle of it.
        let target = next + 150 + round * 97;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while acked.load(Ordering::SeqCst) < target {
            assert!(
                std::time::Instant::now() < deadline,
                "workload stalled at {}",
                acked.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Read a few pages at the acknowledged point before the crash.
        let before_lsn = acked.load(Ordering::SeqCst);
        let mut before = BTreeMap::new();
        for page in [0u64, 7, 13, 39] {
            before.insert(
                page,
                read(&mut c, page, before_lsn).await.unwrap().page_data,
            );
        }
        node.kill9();
        let _ = writer.await;
        let acked_final = acked.load(Ordering::SeqCst);

        node.restart_after_kill();
        c = node.client().await;
        let st = state(&mut c).await;
        assert!(
            st.scl >= acked_final,
            "round {round}: SCL {} after restart < acknowledged {acked_final}",
            st.scl
        );
        for (page, bytes) in &before {
            let now = read(&mut c, *page, before_lsn).await.unwrap().page_data;
            assert_eq!(
                &now, bytes,
                "round {round}: page {page} at LSN {before_lsn} changed across kill -9"
            );
            assert_eq!(
                &now,
                &expected(*page, before_lsn),
                "round {round}: page {page}"
            );
        }
        for page in 0..40u64 {
            let got = read(&mut c, page, st.scl).await.unwrap().page_data;
            assert_eq!(
                got,
                expected(page, st.scl),
                "round {round}: page {page} at SCL {}",
                st.scl
            );
        }
        next = st.scl + 1;
    }
}

fn flip_first(haystack: &mut [u8], needle: &[u8]) -> usize {
    let mut flipped = 0;
    let mut at = 0;
    while let Some(p) = haystack[at..]
        .windows(needle.len())
        .position(|w| w == needle)
    {
        haystack[at + p + needle.len() / 2] ^= 0x01;
        flipped += 1;
        at += p + needle.len();
    }
    flipped
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_frame_becomes_a_hole_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = StorageNode::start(dir.path(), &[]);
    let mut c = node.client().await;
    create_segment(&mut c, VOL, SEG, 0, 64).await;
    let marker = b"THIS-RECORD-WILL-ROT";
    let recs = vec![
        delta(1, 0, 3, 0, b"one"),
        delta(2, 1, 3, 10, b"two"),
        delta(3, 2, 3, 20, marker),
        delta(4, 3, 3, 60, b"four"),
    ];
    // VDL 0: not materialized, the log is the only copy.
    write(&mut c, 1, 0, &recs).await.unwrap();
    node.kill9();

    let log_dir = dir.path().join("segments").join(VOL).join(SEG).join("log");
    let mut damaged = 0;
    for f in std::fs::read_dir(&log_dir).unwrap() {
        let path = f.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let n = flip_first(&mut bytes, marker);
        if n > 0 {
            std::fs::write(&path, &bytes).unwrap();
            damaged += n;
        }
    }
    assert_eq!(damaged, 1);

    node.restart_after_kill();
    let mut c = node.client().await;
    let st = state(&mut c).await;
    assert_eq!((st.scl, st.highest_lsn), (2, 4), "LSN 3 is a hole now");
    let err = read(&mut c, 3, 4).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unavailable,
        "never a page that misses LSN 3"
    );
    assert_eq!(&read(&mut c, 3, 2).await.unwrap().page_data[10..13], b"two");
    let metrics = node.scrape().await;
    assert!(
        metrics.contains("logdb_storage_corrupt_frames_total 1"),
        "{metrics}"
    );

    // Repair (a peer re-sends the record) fills the hole.
    let ack = write(&mut c, 1, 0, &recs[2..3]).await.unwrap();
    assert_eq!(ack.acknowledged_lsn, 4);
    assert_eq!(
        read(&mut c, 3, 4).await.unwrap().page_data,
        expected_page(&recs.iter().collect::<Vec<_>>())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_page_version_is_refused_with_data_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = StorageNode::start(dir.path(), &["--coalesce-interval-ms", "10"]);
    let mut c = node.client().await;
    create_segment(&mut c, VOL, SEG, 0, 64).await;
    // Four whole-page records: their frames pass four pages, so the round stores an image.
    let recs = [
        image(1, 0, 2, 0x11),
        image(2, 1, 2, 0x22),
        image(3, 2, 2, 0x33),
        image(4, 3, 2, 0x5A),
    ];
    write(&mut c, 1, 4, &recs).await.unwrap();
    wait_state(&mut c, "materialization", |s| s.materialized_lsn == 4).await;
    // A clean stop: after kill -9 redb verifies its own tree and rolls a damaged commit back (the
    // page is then rebuilt from the log); after a clean stop only logdb's checksum stands guard.
    node.stop();

    let pages = dir
        .path()
        .join("segments")
        .join(VOL)
        .join(SEG)
        .join("pages.redb");
    let mut bytes = std::fs::read(&pages).unwrap();
    assert!(
        flip_first(&mut bytes, &[0x5A; PAGE as usize]) >= 1,
        "the stored version holds the image"
    );
    std::fs::write(&pages, &bytes).unwrap();

    node.restart_after_kill();
    let mut c = node.client().await;
    let err = match read(&mut c, 2, 4).await {
        Ok(r) => panic!(
            "a damaged version was served (materialized LSN {})",
            r.materialized_lsn
        ),
        Err(e) => e,
    };
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(
        err.message().contains("page 2 version at LSN 4 is corrupt"),
        "{}",
        err.message()
    );
    let metrics = node.scrape().await;
    assert!(
        metrics.contains("logdb_storage_corrupt_reads_total 1"),
        "{metrics}"
    );
}
