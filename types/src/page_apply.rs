//! Applying redo records to a page image: the one place where a page changes, used by the
//! background coalescer and by reads that build a version on the fly.

use crate::record::{RecordKind, RedoRecord};

/// Applies `rec` to `page` in place. The record was validated for this page size on receipt.
pub fn apply(page: &mut [u8], rec: &RedoRecord) {
    match rec.kind {
        RecordKind::Image => page.copy_from_slice(&rec.data),
        RecordKind::Delta => {
            let at = rec.offset as usize;
            page[at..at + rec.data.len()].copy_from_slice(&rec.data);
        }
        RecordKind::Move => {
            let (source, len) = rec.move_args().expect("validated on receipt");
            let (source, len) = (source as usize, len as usize);
            page.copy_within(source..source + len, rec.offset as usize);
        }
    }
}

/// Applies records in LSN order to a copy of `base`.
pub fn apply_all<'a>(base: &[u8], recs: impl IntoIterator<Item = &'a RedoRecord>) -> Vec<u8> {
    let mut page = base.to_vec();
    for r in recs {
        apply(&mut page, r);
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Lsn, PageId};

    fn rec(lsn: u64, kind: RecordKind, offset: u32, data: Vec<u8>) -> RedoRecord {
        RedoRecord::new(
            Lsn(lsn),
            Lsn(lsn - 1),
            1,
            PageId(0),
            offset,
            kind,
            0,
            0,
            data,
        )
    }

    #[test]
    fn deltas_overwrite_their_range_only() {
        let base = vec![0u8; 16];
        let out = apply_all(
            &base,
            &[
                rec(1, RecordKind::Delta, 2, vec![1, 1, 1]),
                rec(2, RecordKind::Delta, 3, vec![2]),
                rec(3, RecordKind::Delta, 14, vec![9, 9]),
            ],
        );
        assert_eq!(out, vec![0, 0, 1, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 9]);
        assert_eq!(base, vec![0u8; 16], "the base is not modified");
    }

    #[test]
    fn moves_shift_bytes_like_memmove() {
        let base: Vec<u8> = (0..16).collect();
        let mv = |dst, src, len| {
            RedoRecord::new(
                Lsn(1),
                Lsn(0),
                1,
                PageId(0),
                dst,
                RecordKind::Move,
                0,
                0,
                crate::record::encode_move(src, len),
            )
        };
        // Overlapping, towards the end and towards the start.
        assert_eq!(
            apply_all(&base, &[mv(4, 2, 6)]),
            vec![0, 1, 2, 3, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15]
        );
        assert_eq!(
            apply_all(&base, &[mv(0, 10, 6)]),
            vec![10, 11, 12, 13, 14, 15, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
        mv(0, 10, 6).validate_for_page_size(16).unwrap();
        assert!(mv(0, 12, 6).validate_for_page_size(16).is_err());
        assert!(mv(12, 0, 6).validate_for_page_size(16).is_err());
    }

    #[test]
    fn image_replaces_everything_and_later_deltas_apply_on_top() {
        let out = apply_all(
            &[5u8; 8],
            &[
                rec(1, RecordKind::Delta, 0, vec![1]),
                rec(2, RecordKind::Image, 0, vec![7; 8]),
                rec(3, RecordKind::Delta, 7, vec![0]),
            ],
        );
        assert_eq!(out, vec![7, 7, 7, 7, 7, 7, 7, 0]);
    }
}
