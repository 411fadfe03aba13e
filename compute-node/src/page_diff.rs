//! Turns a page write into the smallest redo (DESIGN.md §3 step 2): the byte ranges that changed
//! become `PAGE_DELTA` records (nearby ranges merged, since each record costs a header); a block
//! of the page that SQLite shifted (it does when it defragments a page) becomes one `PAGE_MOVE`;
//! one `PAGE_IMAGE` when that is smaller or the page is new.

use logdb_types::record::{encode_move, RecordKind};
use logdb_types::PageId;

use crate::shipper::PageChange;

/// Bytes a record costs besides its data (header, checksum, framing): merging two ranges closer
/// than this is cheaper than sending two records.
pub const RECORD_OVERHEAD: usize = 40;

/// A shifted block shorter than this is left to deltas.
const MIN_MOVE: usize = 48;
/// Shifts tried, in bytes either way.
const MAX_SHIFT: usize = 2048;
/// Redo at or below this many bytes is not worth searching moves for.
const WORTH_A_MOVE: usize = 3 * RECORD_OVERHEAD;
/// Moves tried per page.
const MAX_MOVES: usize = 6;
/// Bytes that must match before a shift is considered.
const PROBE: usize = 12;

/// The changes that turn `old` into `new`. `old = None` means the page is new to the volume.
pub fn diff(page: PageId, old: Option<&[u8]>, new: &[u8]) -> Vec<PageChange> {
    let Some(old) = old else {
        return vec![image(page, new)];
    };
    debug_assert_eq!(old.len(), new.len());
    let mut best = deltas(page, old, new);
    if cost(&best) <= WORTH_A_MOVE {
        // Already about as small as a move record: skip the search (it is on the commit path).
        return best;
    }
    // Greedily add moves (each applied on top of the previous ones, as storage will) while
    // they make the redo smaller: a defragmented page has a few blocks, each shifted its way.
    let mut moves = Vec::new();
    let mut moved = old.to_vec();
    for _ in 0..MAX_MOVES {
        let Some((dst, src, len)) = find_move(&moved, new) else {
            break;
        };
        let mut next = moved.clone();
        next.copy_within(src..src + len, dst);
        let mut candidate = moves.clone();
        candidate.push(PageChange {
            page,
            kind: RecordKind::Move,
            offset: dst as u32,
            data: encode_move(src as u32, len as u32),
        });
        let rest = deltas(page, &next, new);
        if cost(&candidate) + cost(&rest) >= cost(&best) {
            break;
        }
        moves = candidate;
        moved = next;
        best = moves.iter().cloned().chain(rest).collect();
    }
    if cost(&best) >= new.len() + RECORD_OVERHEAD {
        return vec![image(page, new)];
    }
    best
}

fn cost(changes: &[PageChange]) -> usize {
    changes.iter().map(|c| c.data.len() + RECORD_OVERHEAD).sum()
}

/// Changed byte ranges of `new` against `old`, merged when closer than a record header.
fn deltas(page: PageId, old: &[u8], new: &[u8]) -> Vec<PageChange> {
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

/// The longest block of `new` that is a shifted copy of `old`, as `(dst, src, len)`: probes a
/// few places in the changed span against every shift up to `MAX_SHIFT` bytes.
fn find_move(old: &[u8], new: &[u8]) -> Option<(usize, usize, usize)> {
    let n = new.len();
    let differing: Vec<usize> = (0..n).filter(|&i| old[i] != new[i]).collect();
    let (&first, &last) = (differing.first()?, differing.last()?);
    if last - first + 1 < MIN_MOVE {
        return None;
    }
    let mut best: Option<(usize, usize, usize)> = None;
    // Probe at changed bytes spread over the span (a shifted block of near-identical rows
    // differs from the old page only here and there).
    let probes: Vec<usize> = (0..8).map(|k| differing[k * differing.len() / 8]).collect();
    for probe in probes {
        if probe + PROBE > n {
            continue;
        }
        for shift in 1..=MAX_SHIFT {
            for src in [probe.checked_add(shift), probe.checked_sub(shift)]
                .into_iter()
                .flatten()
            {
                if src + PROBE > n || old[src..src + PROBE] != new[probe..probe + PROBE] {
                    continue;
                }
                // Grow the block both ways while bytes keep matching.
                let (mut lo, mut hi) = (probe, probe + PROBE);
                while lo > 0 && src + lo > probe && old[src + lo - probe - 1] == new[lo - 1] {
                    lo -= 1;
                }
                while hi < n && src + hi - probe < n && old[src + hi - probe] == new[hi] {
                    hi += 1;
                }
                let len = hi - lo;
                let from = src + lo - probe;
                if len >= MIN_MOVE && best.is_none_or(|b| len > b.2) {
                    best = Some((lo, from, len));
                }
            }
        }
    }
    best
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
    use logdb_types::record::RedoRecord;
    use logdb_types::Lsn;

    /// Applies the changes the way storage does.
    fn apply(old: &[u8], changes: &[PageChange]) -> Vec<u8> {
        let recs: Vec<RedoRecord> = changes
            .iter()
            .map(|c| {
                RedoRecord::new(
                    Lsn(1),
                    Lsn(0),
                    0,
                    c.page,
                    c.offset,
                    c.kind,
                    0,
                    0,
                    c.data.clone(),
                )
            })
            .collect();
        logdb_types::page_apply::apply_all(old, &recs)
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
        let new: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let d = diff(PageId(0), Some(&old), &new);
        assert_eq!(d.len(), 1, "one record for the whole page");
        assert!(cost(&d) <= new.len() + RECORD_OVERHEAD);
        assert_eq!(apply(&old, &d), new);
    }

    #[test]
    fn shifted_cells_become_one_move() {
        // Cells of 93 bytes that differ only in a counter byte, shifted by one cell (what SQLite
        // does when it defragments a leaf after an update grew a row).
        let mut old = vec![0u8; 8192];
        for k in 0..60 {
            let at = 2000 + k * 93;
            old[at] = k as u8;
            old[at + 1..at + 93].fill(0x30);
        }
        let mut new = old.clone();
        new.copy_within(2093..2000 + 60 * 93, 2000);
        new[2000 + 59 * 93..2000 + 60 * 93].fill(0x41);
        let d = diff(PageId(9), Some(&old), &new);
        assert_eq!(apply(&old, &d), new);
        assert_eq!(
            d[0].kind,
            RecordKind::Move,
            "{:?}",
            d.iter()
                .map(|c| (c.kind, c.offset, c.data.len()))
                .collect::<Vec<_>>()
        );
        assert!(cost(&d) < 300, "cost {}", cost(&d));
    }

    #[test]
    fn random_edits_round_trip() {
        let mut seed = 42u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let old: Vec<u8> = (0..4096).map(|_| (rnd() % 4) as u8).collect();
            let mut new = old.clone();
            for _ in 0..(rnd() % 6) {
                let (a, b, len) = (
                    (rnd() % 4000) as usize,
                    (rnd() % 4000) as usize,
                    (rnd() % 96) as usize,
                );
                new.copy_within(a..a + len, b);
                let at = (rnd() % 4090) as usize;
                new[at] = new[at].wrapping_add(1);
            }
            let d = diff(PageId(1), Some(&old), &new);
            assert_eq!(apply(&old, &d), new);
        }
    }
}
