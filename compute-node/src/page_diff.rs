//! Turns a page write into the smallest redo (DESIGN.md §3 step 2): the byte ranges that changed
//! become `PAGE_DELTA` records (nearby ranges merged, since each record costs a header), or one
//! `PAGE_IMAGE` when that is smaller or the page is new.

use logdb_storage::record::RecordKind;
use logdb_storage::types::PageId;

use crate::shipper::PageChange;

/// Bytes a record costs besides its data (header, checksum, framing): merging two ranges closer
/// than this is cheaper than sending two records.
pub const RECORD_OVERHEAD: usize = 56;

/// The changes that turn `old` into `new`. `old = None` means the page is new to the volume.
pub fn diff(page: PageId, old: Option<&[u8]>, new: &[u8]) -> Vec<PageChange> {
    let Some(old) = old else {
        return vec![image(page, new)];
    };
    debug_assert_eq!(old.len(), new.len());
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    let n = new.len();
    while i < n {
        if old[i] == new[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < n && old[i] != new[i] {
            i += 1;
        }
        match ranges.last_mut() {
            Some((_, end)) if start - *end <= RECORD_OVERHEAD => *end = i,
            _ => ranges.push((start, i)),
        }
    }
    let delta_cost: usize = ranges.iter().map(|(s, e)| e - s + RECORD_OVERHEAD).sum();
    if delta_cost >= n + RECORD_OVERHEAD {
        return vec![image(page, new)];
    }
    ranges
        .into_iter()
        .map(|(s, e)| PageChange {
            page,
            kind: RecordKind::Delta,
            offset: s as u32,
            data: new[s..e].to_vec(),
        })
        .collect()
}

fn image(page: PageId, new: &[u8]) -> PageChange {
    PageChange {
        page,
        kind: RecordKind::Image,
        offset: 0,
        data: new.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(old: &[u8], changes: &[PageChange]) -> Vec<u8> {
        let mut p = old.to_vec();
        for c in changes {
            match c.kind {
                RecordKind::Image => p.copy_from_slice(&c.data),
                RecordKind::Delta => {
                    p[c.offset as usize..c.offset as usize + c.data.len()].copy_from_slice(&c.data)
                }
            }
        }
        p
    }

    #[test]
    fn small_changes_become_small_deltas() {
        let old = vec![0u8; 8192];
        let mut new = old.clone();
        new[100] = 1;
        new[120] = 2; // close: merged with 100
        new[5000..5004].copy_from_slice(b"abcd");
        let d = diff(PageId(3), Some(&old), &new);
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].offset, d[0].data.len()), (100, 21));
        assert_eq!((d[1].offset, d[1].data.as_slice()), (5000, &b"abcd"[..]));
        assert_eq!(apply(&old, &d), new);
    }

    #[test]
    fn identical_pages_need_nothing_and_new_pages_are_images() {
        let p = vec![7u8; 4096];
        assert!(diff(PageId(0), Some(&p), &p).is_empty());
        let d = diff(PageId(0), None, &p);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, RecordKind::Image);
    }

    #[test]
    fn a_mostly_rewritten_page_is_one_image() {
        let old = vec![0u8; 4096];
        let new: Vec<u8> = (0..4096).map(|i| if i % 3 == 0 { 1 } else { 0 }).collect();
        let d = diff(PageId(0), Some(&old), &new);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, RecordKind::Image);
        assert_eq!(apply(&old, &d), new);
    }
}
