//! A data disk that fills, against the real binary on a real (tmpfs) filesystem: the node
//! refuses new records clearly (RESOURCE_EXHAUSTED, what is free and what is kept), keeps
//! serving reads and materializing what it accepted, takes writes again once the disk grows —
//! without a restart — and loses nothing it acknowledged, also across a kill -9.

mod common;

use std::time::{Duration, Instant};

use common::*;
use logdb_storage::testkit::SmallDisk;
use logdb_types::proto::storage_service_client::StorageServiceClient;
use logdb_types::record::RedoRecord;
use tonic::transport::Channel;
use tonic::Code;

const PAGES: u64 = 16;

/// Writes batches of 4 KB deltas until the node refuses one; returns what was acknowledged
/// and the refused batch.
async fn fill(
    c: &mut StorageServiceClient<Channel>,
) -> (Vec<RedoRecord>, Vec<RedoRecord>, tonic::Status) {
    let mut acked: Vec<RedoRecord> = Vec::new();
    let mut lsn = 0u64;
    for _ in 0..10_000 {
        let batch: Vec<RedoRecord> = (1..=8)
            .map(|i| {
                let l = lsn + i;
                delta(l, l - 1, l % PAGES, (l % 7) as u32 * 512, &[l as u8; 4000])
            })
            .collect();
        let vdl = acked.last().map_or(0, |r| r.lsn.0);
        match write(c, 1, vdl, &batch).await {
            Ok(_) => {
                lsn += 8;
                acked.extend(batch);
            }
            Err(status) => return (acked, batch, status),
        }
    }
    panic!("the disk never filled");
}

async fn pages_read_back(c: &mut StorageServiceClient<Channel>, acked: &[RedoRecord]) {
    for page in 0..PAGES {
        let recs: Vec<&RedoRecord> = acked.iter().filter(|r| r.page_id.0 == page).collect();
        let got = read(c, page, 0).await.expect("read while the disk is full");
        assert_eq!(got.page_data, expected_page(&recs), "page {page}");
    }
}

/// Sends `batch` until the node takes it (space returned), within a deadline.
async fn write_when_space_returns(
    c: &mut StorageServiceClient<Channel>,
    vdl: u64,
    batch: &[RedoRecord],
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match write(c, 1, vdl, batch).await {
            Ok(_) => return,
            Err(s) if s.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("the node did not take writes again after the disk grew: {s:?}"),
        }
    }
}

async fn refused_writes(node: &StorageProcess) -> u64 {
    let text = node.scrape().await;
    text.lines()
        .find_map(|l| l.strip_prefix("logdb_storage_writes_refused_no_space_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refused-writes counter in:\n{text}"))
}

/// A node on `disk` keeping `reserve` bytes free, with the test's segment created.
async fn start_on(
    disk: &SmallDisk,
    reserve: &str,
) -> (StorageProcess, StorageServiceClient<Channel>) {
    let node = StorageNode::start(
        &disk.dir.join("node"),
        &[
            "--log-file-bytes",
            "1048576",
            "--coalesce-interval-ms",
            "20",
            "--min-free-bytes",
            reserve,
        ],
    );
    let mut c = node.client().await;
    create_segment(&mut c, VOL, SEG, 0, PAGES).await;
    (node, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_keeps_serving_reads_and_takes_writes_again_when_it_grows() {
    let disk = SmallDisk::mount(24 << 20);
    let (mut node, mut c) = start_on(&disk, "6291456").await;

    let (mut acked, refused, status) = fill(&mut c).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("is full") && status.message().contains("reserve of 6291456"),
        "the refusal says what and why: {}",
        status.message()
    );
    assert!(acked.len() > 1000, "{} records fit", acked.len());
    assert!(refused_writes(&node).await >= 1);

    // Full, yet serving: every acknowledged record reads back, and the coalescer (which needs
    // the reserve) materializes all of them.
    let last = acked.last().unwrap().lsn.0;
    pages_read_back(&mut c, &acked).await;
    wait_state(&mut c, "everything accepted to be materialized", |s| {
        s.materialized_lsn == last
    })
    .await;
    let again = write(&mut c, 1, last, &refused).await.unwrap_err();
    assert_eq!(
        again.code(),
        Code::ResourceExhausted,
        "still full: {again:?}"
    );

    // The volume's disk grows: writes are taken again, no restart.
    disk.resize(64 << 20);
    write_when_space_returns(&mut c, last, &refused).await;
    acked.extend(refused);
    pages_read_back(&mut c, &acked).await;

    node.crash_and_restart();
    let mut c = node.client().await;
    pages_read_back(&mut c, &acked).await;
    assert_eq!(state(&mut c).await.scl, acked.last().unwrap().lsn.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_reserve_a_disk_that_fills_costs_only_the_refused_writes() {
    // The reserve off: the log and the page store meet ENOSPC itself, and recover from it.
    let disk = SmallDisk::mount(16 << 20);
    let (mut node, mut c) = start_on(&disk, "0").await;

    let (mut acked, refused, status) = fill(&mut c).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("is full"), "{}", status.message());
    let last = acked.last().unwrap().lsn.0;

    disk.resize(64 << 20);
    write_when_space_returns(&mut c, last, &refused).await;
    acked.extend(refused);
    let last = acked.last().unwrap().lsn.0;
    write(&mut c, 1, last, &[])
        .await
        .expect("the commit point moves on");
    wait_state(
        &mut c,
        "the coalescer to catch up after the disk grew",
        |s| s.materialized_lsn == last,
    )
    .await;
    pages_read_back(&mut c, &acked).await;

    node.crash_and_restart();
    let mut c = node.client().await;
    pages_read_back(&mut c, &acked).await;
    let st = state(&mut c).await;
    assert_eq!(st.scl, last);
    assert_eq!(st.materialized_lsn, last);
}
