//! Bad input against the real binary: every malformed request is refused with INVALID_ARGUMENT and
//! a message naming what is wrong, nothing of its batch is applied, and the node keeps serving.

mod common;

use common::*;
use logdb_types::proto::{CreateSegmentRequest, RedoLogRecord};
use logdb_types::record::{RecordKind, RedoRecord};
use logdb_types::{Lsn, PageId};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_batch_is_refused_whole_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = StorageNode::start(dir.path(), &["--max-batch-bytes", "20000"]);
    let mut c = node.client().await;
    create_segment(&mut c, VOL, SEG, 0, 100).await;
    write(&mut c, 1, 0, &[delta(1, 0, 1, 0, b"ok")])
        .await
        .unwrap();

    let good = delta(2, 1, 1, 0, b"fine").to_proto();
    let with_checksum = |r: RedoRecord| r.to_proto();
    let mut bad_checksum = delta(3, 2, 1, 0, b"x").to_proto();
    bad_checksum.checksum ^= 0xdead;
    let mut bad_type = delta(3, 2, 1, 0, b"x");
    bad_type.checksum = 0;
    let mut bad_type = bad_type.to_proto();
    bad_type.record_type = 9;
    let cases: Vec<(&str, Vec<RedoLogRecord>, &str)> = vec![
        (
            "bad checksum",
            vec![good.clone(), bad_checksum],
            "checksum mismatch",
        ),
        (
            "beyond the page",
            vec![good.clone(), with_checksum(delta(3, 2, 1, 8190, b"abc"))],
            "offset 8190 + length 3 is beyond the 8192-byte page",
        ),
        (
            "LSN 0",
            vec![good.clone(), with_checksum(delta(0, 0, 1, 0, b"x"))],
            "LSN 0",
        ),
        (
            "wrong page size",
            vec![
                good.clone(),
                with_checksum(RedoRecord::new(
                    Lsn(3),
                    Lsn(2),
                    1,
                    PageId(1),
                    0,
                    RecordKind::Image,
                    0,
                    0,
                    vec![0; 4096],
                )),
            ],
            "page image of 4096 bytes, but the volume's page size is 8192",
        ),
        (
            "page of another PG",
            vec![good.clone(), with_checksum(delta(3, 2, 500, 0, b"x"))],
            "outside this PG's pages 0..100",
        ),
        (
            "backlink not below",
            vec![good.clone(), with_checksum(delta(3, 3, 1, 0, b"x"))],
            "backlink 3 is not below",
        ),
        (
            "unknown type",
            vec![good.clone(), bad_type],
            "unknown record type 9",
        ),
        (
            "commit without time",
            vec![
                good.clone(),
                with_checksum(commit_delta(3, 2, 1, 0, b"x", 0)),
            ],
            "COMMIT flag without a commit timestamp",
        ),
        (
            "move beyond the page",
            vec![
                good.clone(),
                with_checksum(RedoRecord::new(
                    Lsn(3),
                    Lsn(2),
                    1,
                    PageId(1),
                    0,
                    RecordKind::Move,
                    0,
                    0,
                    logdb_types::record::encode_move(8190, 10),
                )),
            ],
            "page move of 10 bytes from 8190 to 0 is outside the 8192-byte page",
        ),
        (
            "empty delta",
            vec![good.clone(), with_checksum(delta(3, 2, 1, 0, b""))],
            "carries no bytes",
        ),
        (
            "chain conflict",
            vec![good.clone(), with_checksum(delta(3, 0, 1, 0, b"x"))],
            "links back to 0",
        ),
        (
            "two records claim one backlink",
            vec![good.clone(), with_checksum(delta(3, 1, 1, 0, b"x"))],
            "LSN 2 already follows 1",
        ),
        (
            "batch above the limit",
            (2..30)
                .map(|l| delta(l, l - 1, 1, 0, &[7; 1000]).to_proto())
                .collect(),
            "exceeds the limit of 20000 bytes",
        ),
    ];
    for (what, records, needle) in cases {
        let req = logdb_types::proto::WriteRecordsRequest {
            volume_id: VOL.into(),
            segment_id: SEG.into(),
            records,
            last_committed_lsn: 0,
            epoch: 1,
        };
        let err = c.write_records(req).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(needle),
            "{what}: {:?} lacks {needle:?}",
            err.message()
        );
        let st = state(&mut c).await;
        assert_eq!(
            (st.scl, st.highest_lsn),
            (1, 1),
            "{what}: nothing of the batch may be applied"
        );
    }

    let mut req = write_req(1, 0, &[delta(2, 1, 1, 0, b"x")]);
    req.segment_id = "nope".into();
    let err = c.write_records(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "unknown segment nope of volume vol1 on this node"
    );

    for (what, page_size, volume, needle) in [
        (
            "page size",
            5000u32,
            "v2",
            "page size 5000 is not a power of two in 4096..=65536",
        ),
        ("page size", 131072, "v2", "page size 131072"),
        (
            "volume id",
            8192,
            "../etc",
            "volume id \"../etc\" is not a valid name",
        ),
    ] {
        let err = c
            .create_segment(CreateSegmentRequest {
                volume_id: volume.into(),
                segment_id: "s".into(),
                pg_index: 0,
                first_page: 0,
                page_count: 10,
                page_size,
                retention_seconds: 1,
                epoch: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}");
        assert!(err.message().contains(needle), "{what}: {}", err.message());
    }
    let err = read(&mut c, 5000, 1).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("no segment holding page 5000"),
        "{}",
        err.message()
    );

    // Still serving.
    let ack = write(&mut c, 1, 0, &[delta(2, 1, 1, 0, b"fine")])
        .await
        .unwrap();
    assert_eq!(ack.acknowledged_lsn, 2);
    assert_eq!(&read(&mut c, 1, 2).await.unwrap().page_data[..4], b"fine");
}
