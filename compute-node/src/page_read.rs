//! Reading one page as of an LSN from the segments of its PG: the first candidate that answers
//! wins. Shared by the writer (at its PG tail) and replicas (at their read point).

use std::time::Duration;

use logdb_types::proto::storage_service_client::StorageServiceClient;
use logdb_types::proto::ReadPageRequest;
use logdb_types::{Lsn, PageId};
use tonic::transport::Channel;

/// How long one segment may take to answer a page read before the next one is asked.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub fn client(channel: &Channel) -> StorageServiceClient<Channel> {
    StorageServiceClient::new(channel.clone())
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// Asks each `(segment, channel)` in turn for `page` at `lsn`; `Err` holds the last refusal.
pub async fn read_from(
    volume: &str,
    page: PageId,
    lsn: Lsn,
    candidates: &[(String, Channel)],
) -> Result<Vec<u8>, String> {
    let mut last_err = String::from("no segment has acknowledged it yet");
    for (segment, channel) in candidates {
        let req = ReadPageRequest {
            volume_id: volume.to_string(),
            page_id: page.0,
            requested_lsn: lsn.0,
            segment_id: segment.clone(),
        };
        match tokio::time::timeout(READ_TIMEOUT, client(channel).read_page(req)).await {
            Ok(Ok(r)) => return Ok(r.into_inner().page_data),
            Ok(Err(e)) => last_err = format!("{segment}: {}", e.message()),
            Err(_) => last_err = format!("{segment}: timed out"),
        }
    }
    Err(last_err)
}
