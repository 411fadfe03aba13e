//! Test helpers of the storage node's integration tests: records, requests and expected pages.
//! Processes are run by `logdb_storage::testkit`.

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

pub use logdb_storage::testkit::StorageProcess;
use logdb_types::proto::storage_service_client::StorageServiceClient;
use logdb_types::proto::{self, CreateSegmentRequest, ReadPageRequest, WriteRecordsRequest};
use logdb_types::record::{RecordKind, RedoRecord, FLAG_COMMIT};
use logdb_types::{Lsn, PageId};
use tonic::transport::Channel;

pub const PAGE: u32 = 8192;
pub const VOL: &str = "vol1";
pub const SEG: &str = "pg0-a1";

/// The real binary of this crate, on a free port.
pub struct StorageNode;

impl StorageNode {
    #[allow(clippy::new_ret_no_self)]
    pub fn start(data_dir: &Path, extra: &[&str]) -> StorageProcess {
        StorageProcess::start(
            Path::new(env!("CARGO_BIN_EXE_logdb-storage")),
            data_dir,
            "n1",
            "z1",
            extra,
        )
    }
}

pub async fn create_segment(
    c: &mut StorageServiceClient<Channel>,
    volume: &str,
    segment: &str,
    first_page: u64,
    pages: u64,
) {
    c.create_segment(CreateSegmentRequest {
        volume_id: volume.into(),
        segment_id: segment.into(),
        pg_index: (first_page / pages.max(1)) as u32,
        first_page,
        page_count: pages,
        page_size: PAGE,
        retention_seconds: 3600,
        epoch: 1,
    })
    .await
    .expect("create segment");
}

pub fn delta(lsn: u64, prev: u64, page: u64, offset: u32, data: &[u8]) -> RedoRecord {
    RedoRecord::new(
        Lsn(lsn),
        Lsn(prev),
        lsn,
        PageId(page),
        offset,
        RecordKind::Delta,
        0,
        0,
        data.to_vec(),
    )
}

pub fn commit_delta(
    lsn: u64,
    prev: u64,
    page: u64,
    offset: u32,
    data: &[u8],
    ts: u64,
) -> RedoRecord {
    RedoRecord::new(
        Lsn(lsn),
        Lsn(prev),
        lsn,
        PageId(page),
        offset,
        RecordKind::Delta,
        FLAG_COMMIT,
        ts,
        data.to_vec(),
    )
}

pub fn image(lsn: u64, prev: u64, page: u64, fill: u8) -> RedoRecord {
    RedoRecord::new(
        Lsn(lsn),
        Lsn(prev),
        lsn,
        PageId(page),
        0,
        RecordKind::Image,
        0,
        0,
        vec![fill; PAGE as usize],
    )
}

pub fn write_req(epoch: u64, vdl: u64, recs: &[RedoRecord]) -> WriteRecordsRequest {
    WriteRecordsRequest {
        volume_id: VOL.into(),
        segment_id: SEG.into(),
        records: recs.iter().map(RedoRecord::to_proto).collect(),
        last_committed_lsn: vdl,
        epoch,
    }
}

pub async fn write(
    c: &mut StorageServiceClient<Channel>,
    epoch: u64,
    vdl: u64,
    recs: &[RedoRecord],
) -> Result<proto::WriteRecordsResponse, tonic::Status> {
    c.write_records(write_req(epoch, vdl, recs))
        .await
        .map(|r| r.into_inner())
}

pub async fn read(
    c: &mut StorageServiceClient<Channel>,
    page: u64,
    lsn: u64,
) -> Result<proto::ReadPageResponse, tonic::Status> {
    c.read_page(ReadPageRequest {
        volume_id: VOL.into(),
        page_id: page,
        requested_lsn: lsn,
        segment_id: String::new(),
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn state(c: &mut StorageServiceClient<Channel>) -> proto::SegmentState {
    c.get_segment_state(proto::SegmentRef {
        volume_id: VOL.into(),
        segment_id: SEG.into(),
    })
    .await
    .expect("segment state")
    .into_inner()
}

/// Waits (with a deadline) until `cond` holds for the segment's state.
pub async fn wait_state(
    c: &mut StorageServiceClient<Channel>,
    what: &str,
    cond: impl Fn(&proto::SegmentState) -> bool,
) -> proto::SegmentState {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = state(c).await;
        if cond(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last state {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The page a sequence of records produces, computed independently of the node.
pub fn expected_page(recs: &[&RedoRecord]) -> Vec<u8> {
    let mut page = vec![0u8; PAGE as usize];
    for r in recs {
        match r.kind {
            RecordKind::Image => page.copy_from_slice(&r.data),
            RecordKind::Delta => {
                page[r.offset as usize..r.offset as usize + r.data.len()].copy_from_slice(&r.data)
            }
            RecordKind::Move => {
                let (src, len) = r.move_args().expect("move args");
                let moved = page[src as usize..(src + len) as usize].to_vec();
                page[r.offset as usize..r.offset as usize + len as usize].copy_from_slice(&moved);
            }
        }
    }
    page
}
