//! The record codec under arbitrary bytes (proptest): decoding never panics and never
//! allocates more than it was given; every corruption of an encoded record is caught; and the
//! receipt checks (`from_proto` + `validate_for_page_size`) are exactly what makes applying a
//! record to a page safe — anything they accept applies without a panic.

use logdb_types::page_apply;
use logdb_types::proto;
use logdb_types::record::{decode_move, RecordKind, RedoRecord};
use logdb_types::{Lsn, PageId};
use proptest::prelude::*;

const PAGE_SIZES: [u32; 3] = [4096, 8192, 16384];

fn kind(code: u8) -> RecordKind {
    match code % 3 {
        0 => RecordKind::Delta,
        1 => RecordKind::Image,
        _ => RecordKind::Move,
    }
}

prop_compose! {
    /// A record with arbitrary fields and a correct checksum (what a writer, or an attacker who
    /// computes CRCs, can send).
    fn any_record()(
        lsn in any::<u64>(),
        back in any::<u64>(),
        tx in any::<u64>(),
        page in any::<u64>(),
        offset in prop_oneof![0u32..20_000, any::<u32>()],
        code in any::<u8>(),
        flags in any::<u8>(),
        ts in any::<u64>(),
        data in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(any::<u8>(), 8..=8),
            prop::collection::vec(any::<u8>(), 4090..4100),
        ],
    ) -> RedoRecord {
        RedoRecord::new(Lsn(lsn), Lsn(lsn.wrapping_sub(back)), tx, PageId(page), offset, kind(code), flags, ts, data)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = RedoRecord::decode(&bytes);
        let _ = decode_move(&bytes);
    }

    #[test]
    fn a_huge_length_field_is_refused_without_allocating_it(mut bytes in prop::collection::vec(any::<u8>(), 50..128)) {
        // The data length sits in the header's last four bytes (offset 46).
        bytes[46..50].copy_from_slice(&u32::MAX.to_le_bytes());
        prop_assert!(RedoRecord::decode(&bytes).is_err());
    }

    #[test]
    fn an_encoded_record_round_trips_and_every_corruption_is_caught(
        rec in any_record(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = Vec::new();
        rec.encode_into(&mut buf);
        let back = RedoRecord::decode(&buf);
        // The kind byte is what the record was built with; round trip is exact.
        prop_assert_eq!(back.as_ref().ok(), Some(&rec));
        let mut flipped = buf.clone();
        flipped[at.index(buf.len())] ^= 1 << bit;
        prop_assert!(RedoRecord::decode(&flipped).is_err(), "a flipped bit was accepted");
        let short = &buf[..cut.index(buf.len())];
        prop_assert!(RedoRecord::decode(short).is_err(), "a truncated record was accepted");
    }

    #[test]
    fn whatever_passes_the_receipt_checks_applies_to_a_page_without_panicking(
        rec in any_record(),
        size in prop::sample::select(PAGE_SIZES.to_vec()),
        kind_code in any::<i32>(),
        flags in any::<u32>(),
        checksum_ok in any::<bool>(),
    ) {
        let mut p: proto::RedoLogRecord = rec.to_proto();
        if kind_code % 4 == 3 {
            p.record_type = kind_code; // an unknown or negative type code
        }
        if flags % 5 == 0 {
            p.flags = flags;
        }
        if !checksum_ok {
            p.checksum ^= 1;
        }
        if let Ok(r) = RedoRecord::from_proto(p) {
            if r.validate_for_page_size(size).is_ok() {
                let mut page = vec![0u8; size as usize];
                page_apply::apply(&mut page, &r);
                prop_assert_eq!(page.len(), size as usize);
            }
        }
    }

    #[test]
    fn from_proto_of_arbitrary_fields_never_panics(
        lsn in any::<u64>(), prev in any::<u64>(), tx in any::<u64>(), page in any::<u64>(),
        offset in any::<u32>(), record_type in any::<i32>(), flags in any::<u32>(), ts in any::<u64>(),
        data in prop::collection::vec(any::<u8>(), 0..64), checksum in any::<u32>(),
    ) {
        let p = proto::RedoLogRecord {
            lsn, prev_lsn: prev, transaction_id: tx, page_id: page, offset, record_type, flags,
            commit_timestamp_us: ts, redo_data: data, checksum, written_epoch: lsn ^ ts,
        };
        if let Ok(r) = RedoRecord::from_proto(p) {
            for size in PAGE_SIZES {
                let _ = r.validate_for_page_size(size);
            }
        }
    }
}
