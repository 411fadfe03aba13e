//! Record copies between two segments of a PG, in bounded chunks (recovery and catch-up).

use super::link::{Link, RECOVERY_RPC_TIMEOUT};
use crate::layout::Layout;
use crate::page_read::client;
use logdb_types::proto::{StreamRecordsRequest, WriteRecordsRequest};
use logdb_types::{Epoch, Lsn};

/// A lagging segment catches up this many LSNs per copy (bounds the memory it takes).
const CATCH_UP_CHUNK_LSNS: u64 = 4096;

/// Copies records `[from, to]` from `src` to `dst` in chunks of `CATCH_UP_CHUNK_LSNS` LSNs
/// (memory stays bounded on both nodes and here), each within a deadline. Returns `dst`'s SCL
/// after the last chunk that carried records (ZERO when none did).
pub(super) async fn copy_range(
    layout: &Layout,
    src: &Link,
    dst: &Link,
    from: Lsn,
    to: Lsn,
    epoch: Epoch,
) -> Result<Lsn, String> {
    let mut scl = Lsn::ZERO;
    let mut at = from;
    while at <= to {
        let end = Lsn(to.0.min(at.0.saturating_add(CATCH_UP_CHUNK_LSNS - 1)));
        let got = tokio::time::timeout(
            RECOVERY_RPC_TIMEOUT * 3,
            copy_records(layout, src, dst, at, end, epoch),
        )
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))?;
        scl = scl.max(got);
        at = Lsn(end.0 + 1);
    }
    Ok(scl)
}

/// Copies records `(from..=to)` from one segment to another (recovery: a lagging segment is
/// brought up to the PG tail so the tail is on a write quorum). Returns the target's new SCL.
async fn copy_records(
    layout: &Layout,
    src: &Link,
    dst: &Link,
    from: Lsn,
    to: Lsn,
    epoch: Epoch,
) -> Result<Lsn, String> {
    let mut stream = client(&src.channel())
        .stream_records(StreamRecordsRequest {
            volume_id: layout.volume.clone(),
            segment_id: src.member.segment.clone(),
            from_lsn: from.0,
            to_lsn: to.0,
            ..Default::default()
        })
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let mut batch = Vec::new();
    let mut scl = Lsn::ZERO;
    loop {
        let next = stream
            .message()
            .await
            .map_err(|e| e.message().to_string())?;
        let end = next.is_none();
        if let Some(r) = next {
            batch.push(r);
        }
        if (end || batch.len() >= 256) && !batch.is_empty() {
            let req = WriteRecordsRequest {
                volume_id: layout.volume.clone(),
                segment_id: dst.member.segment.clone(),
                records: std::mem::take(&mut batch),
                last_committed_lsn: 0,
                epoch: epoch.0,
            };
            let ack = client(&dst.channel())
                .write_records(req)
                .await
                .map_err(|e| e.message().to_string())?;
            scl = Lsn(ack.into_inner().acknowledged_lsn);
        }
        if end {
            return Ok(scl);
        }
    }
}
