//! What a compute node parses from the network and from its configuration, under arbitrary
//! input (proptest): the replication feed's batches, the users file, session settings and LSN
//! function calls, and the SQL guard's scan. Nothing panics; a feed batch with any damaged
//! record is refused whole.

use logdb_compute::pg_auth::Users;
use logdb_compute::replication::{self, proto};
use logdb_compute::{lsn_functions, session_settings, sql_guard};
use logdb_types::record::{RecordKind, RedoRecord};
use logdb_types::{Lsn, PageId};
use proptest::prelude::*;

fn encoded(lsn: u64, data: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    RedoRecord::new(
        Lsn(lsn),
        Lsn(lsn - 1),
        1,
        PageId(3),
        0,
        RecordKind::Delta,
        0,
        0,
        data,
    )
    .encode_into(&mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_feed_batch_of_arbitrary_bytes_is_refused_not_a_panic(
        epoch in any::<u64>(), vdl in any::<u64>(),
        records in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4),
        tails in prop::collection::vec(any::<u64>(), 0..4),
        scls in prop::collection::vec((".{0,8}", any::<u64>()), 0..3),
    ) {
        let batch = proto::FeedBatch {
            epoch, vdl, vdl_time_us: 0, records, pg_tails: tails,
            scls: scls.into_iter().map(|(segment, scl)| proto::SegmentScl { segment, scl }).collect(),
        };
        let _ = replication::decode(batch);
    }

    #[test]
    fn one_damaged_record_refuses_the_whole_batch(
        n in 1usize..5, which in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let mut records: Vec<Vec<u8>> = (0..n as u64).map(|i| encoded(10 + i, vec![i as u8; 16])).collect();
        let batch = |records: Vec<Vec<u8>>| proto::FeedBatch {
            epoch: 2, vdl: 10 + n as u64, vdl_time_us: 0, records, pg_tails: vec![], scls: vec![],
        };
        prop_assert!(replication::decode(batch(records.clone())).is_ok());
        let r = which.index(n);
        let len = records[r].len();
        records[r][at.index(len)] ^= 1 << bit;
        prop_assert!(replication::decode(batch(records)).is_err());
    }

    #[test]
    fn a_users_file_of_arbitrary_text_loads_or_says_why(text in "(?s).{0,200}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = Users::load(&path) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn settings_and_lsn_calls_and_the_guard_never_panic(sql in "(?s).{0,120}") {
        let _ = session_settings::parse(&sql);
        let _ = lsn_functions::parse(&sql);
        let _ = sql_guard::statement(&sql);
        let _ = session_settings::duration("statement_timeout", &sql);
    }

    #[test]
    fn settings_statements_of_sql_like_text_never_panic(
        verb in prop::sample::select(vec!["SET", "RESET", "SHOW", "set", "SET LOCAL", "SET SESSION"]),
        name in "[a-z_]{0,24}",
        sep in prop::sample::select(vec![" = ", " TO ", " ", "="]),
        value in "[-0-9a-z'\" .]{0,16}",
    ) {
        let sql = format!("{verb} {name}{sep}{value}");
        let _ = session_settings::parse(&sql);
        let _ = session_settings::duration(&name, &value);
    }
}
