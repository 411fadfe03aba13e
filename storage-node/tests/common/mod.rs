//! Test harness: starts the real `logdb-storage` binary on a free loopback port, connects a gRPC
//! client, and kills the process when dropped (also when a test fails).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use logdb_storage::proto::storage_service_client::StorageServiceClient;
use logdb_storage::proto::{self, CreateSegmentRequest, ReadPageRequest, WriteRecordsRequest};
use logdb_storage::record::{RecordKind, RedoRecord, FLAG_COMMIT};
use logdb_storage::types::{Lsn, PageId};
use tonic::transport::Channel;

pub const PAGE: u32 = 8192;
pub const VOL: &str = "vol1";
pub const SEG: &str = "pg0-a1";

pub struct StorageNode {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub grpc: String,
    pub metrics: String,
    extra: Vec<String>,
}

impl StorageNode {
    pub fn start(data_dir: &Path, extra: &[&str]) -> StorageNode {
        let mut node = StorageNode {
            child: None,
            data_dir: data_dir.to_path_buf(),
            grpc: String::new(),
            metrics: String::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_logdb-storage"))
            .args(["--listen", "127.0.0.1:0", "--node-id", "n1", "--zone", "z1"])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start logdb-storage");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("logdb-storage did not announce itself ({e}): {line:?}"));
        self.grpc = v["grpc"].as_str().expect("grpc address").to_string();
        self.metrics = v["metrics"].as_str().expect("metrics address").to_string();
        self.child = Some(child);
    }

    /// kill -9, then start again on the same data dir (a new port).
    pub fn crash_and_restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let ok = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .expect("kill -TERM")
                .success();
            assert!(ok, "kill -TERM failed");
            let status = c.wait().expect("wait for logdb-storage");
            assert!(
                status.success(),
                "logdb-storage exited with {status} on SIGTERM"
            );
        }
    }

    pub fn restart_after_kill(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }

    pub async fn client(&self) -> StorageServiceClient<Channel> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match StorageServiceClient::connect(format!("http://{}", self.grpc)).await {
                Ok(c) => {
                    return c
                        .max_decoding_message_size(64 << 20)
                        .max_encoding_message_size(64 << 20)
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot connect to {}: {e}", self.grpc),
            }
        }
    }

    /// The Prometheus text from /metrics.
    pub async fn scrape(&self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&self.metrics)
            .await
            .expect("metrics connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        self.kill9();
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
        }
    }
    page
}
