//! What a storage node reads from disk, under arbitrary bytes (proptest): log frames and the
//! segment's control record. Parsing never panics, never claims more bytes than it was given,
//! never allocates by an unchecked length, and a damaged frame is never taken for a good one —
//! the reader either gets the record that was written or an error.

use logdb_storage::control::{Control, Descriptor};
use logdb_storage::frame::{self, FrameError, MAX_PAYLOAD};
use logdb_storage::record::{RecordKind, RedoRecord};
use logdb_storage::types::{Epoch, Lsn, PageId};
use proptest::prelude::*;

prop_compose! {
    fn any_record()(lsn in 1u64..u64::MAX, page in any::<u64>(), offset in 0u32..8192,
                    data in prop::collection::vec(any::<u8>(), 1..200)) -> RedoRecord {
        RedoRecord::new(Lsn(lsn), Lsn(lsn - 1), 7, PageId(page), offset, RecordKind::Delta, 0, 0, data)
    }
}

fn control() -> Control {
    Control::new(Descriptor::for_tests(), Epoch(3))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsing_arbitrary_bytes_never_panics_or_overreads(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok((_, used)) = frame::parse(&bytes) {
            prop_assert!(used <= bytes.len());
        }
        if let Some(at) = frame::resync(&bytes, 0) {
            prop_assert!(at < bytes.len());
        }
    }

    #[test]
    fn a_length_beyond_the_largest_frame_is_corrupt_not_awaited(len in (MAX_PAYLOAD as u32 + 1)..=u32::MAX,
                                                               rest in prop::collection::vec(any::<u8>(), 4..64)) {
        // A torn tail reads as Incomplete and is waited for; an impossible length must not be,
        // or a reader would wait for (and buffer) gigabytes that never come.
        let mut buf = 0x4C47_4442u32.to_le_bytes().to_vec();
        buf.extend_from_slice(&len.to_le_bytes());
        buf.extend_from_slice(&rest);
        prop_assert!(matches!(frame::parse(&buf), Err(FrameError::Corrupt(_))));
    }

    #[test]
    fn a_frame_reads_back_exactly_and_every_damage_is_caught(
        rec in any_record(),
        epoch in any::<u64>(),
        tail in prop::collection::vec(any::<u8>(), 0..32),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = Vec::new();
        frame::encode_record(Epoch(epoch), &rec, &mut buf);
        let len = buf.len();
        buf.extend_from_slice(&tail);
        let (got, used) = frame::parse(&buf).unwrap();
        prop_assert_eq!(used, len);
        prop_assert_eq!(got.epoch, Epoch(epoch));
        prop_assert_eq!(&got.record, &rec);

        let mut damaged = buf[..len].to_vec();
        damaged[at.index(len)] ^= 1 << bit;
        match frame::parse(&damaged) {
            Err(_) => {}
            Ok((r, _)) => prop_assert!(false, "a damaged frame was read as {:?}", r),
        }
        prop_assert!(matches!(frame::parse(&buf[..cut.index(len)]), Err(FrameError::Incomplete) | Err(FrameError::Corrupt(_))));
    }

    #[test]
    fn a_control_record_from_disk_is_decoded_or_refused_never_trusted(
        flip in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        page_size in any::<u32>(),
        garbage in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let _ = Control::decode(&garbage);
        let good = serde_json::to_vec(&control()).unwrap();
        prop_assert_eq!(Control::decode(&good).unwrap(), control());
        let mut damaged = good.clone();
        damaged[flip.index(good.len())] = byte;
        let _ = Control::decode(&damaged);
        let mut odd = control();
        odd.descriptor.page_size = page_size;
        let decoded = Control::decode(&serde_json::to_vec(&odd).unwrap());
        let valid = (4096..=65536).contains(&page_size) && page_size.is_power_of_two();
        prop_assert_eq!(decoded.is_ok(), valid, "page size {}", page_size);
    }
}

#[test]
fn another_format_is_refused_with_the_reason() {
    let mut c = control();
    c.format = 99;
    let err = Control::decode(&serde_json::to_vec(&c).unwrap()).unwrap_err();
    assert!(err.contains("format 99"), "{err}");
    let _ = Lsn::ZERO;
}
