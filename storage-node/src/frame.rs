//! Log frames: how records sit in a segment's log files. Each frame is
//! `magic u32 | len u32 | crc u32 | payload[len]`, the CRC-32C covering `len` and the payload, so a
//! torn tail (crash mid-append) and a flipped bit anywhere are told apart from good frames, and a
//! reader can find the next good frame after a damaged one (the magic marks where to retry).
//!
//! Payload: `kind u8 = 1 | epoch u64 | record` — the epoch the record was written under, which
//! decides whether a later truncation (recovery, DESIGN.md §7) discards it.

use logdb_types::record::{RecordError, RedoRecord};
use logdb_types::Epoch;

const MAGIC: u32 = 0x4C47_4442; // "LGDB"
pub const FRAME_HEADER_LEN: usize = 12;
const KIND_RECORD: u8 = 1;
/// No frame is larger than this; a bigger length field means corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not a whole frame yet: at the end of a file this is a torn tail.
    #[error("incomplete frame")]
    Incomplete,
    #[error("corrupt frame: {0}")]
    Corrupt(String),
}

/// A record as stored: with the epoch it was written under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRecord {
    pub epoch: Epoch,
    pub record: RedoRecord,
}

pub fn encode_record(epoch: Epoch, record: &RedoRecord, out: &mut Vec<u8>) {
    let payload_len = 1 + 8 + record.encoded_len();
    out.reserve(FRAME_HEADER_LEN + payload_len);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 4]);
    let payload_at = out.len();
    out.push(KIND_RECORD);
    out.extend_from_slice(&epoch.0.to_le_bytes());
    record.encode_into(out);
    let crc = crc32c::crc32c_append(
        crc32c::crc32c(&(payload_len as u32).to_le_bytes()),
        &out[payload_at..],
    );
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Bytes `encode_record` appends for `record`.
pub fn encoded_record_len(record: &RedoRecord) -> usize {
    FRAME_HEADER_LEN + 1 + 8 + record.encoded_len()
}

/// Parses the frame at the start of `buf`; returns it and the bytes it took.
pub fn parse(buf: &[u8]) -> Result<(LoggedRecord, usize), FrameError> {
    if buf.len() < FRAME_HEADER_LEN {
        return Err(FrameError::Incomplete);
    }
    let magic = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    if magic != MAGIC {
        return Err(FrameError::Corrupt(format!("bad magic {magic:#010x}")));
    }
    let len = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")) as usize;
    if !(9..=MAX_PAYLOAD).contains(&len) {
        return Err(FrameError::Corrupt(format!(
            "impossible frame length {len}"
        )));
    }
    let stored = u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes"));
    let end = FRAME_HEADER_LEN + len;
    if buf.len() < end {
        return Err(FrameError::Incomplete);
    }
    let payload = &buf[FRAME_HEADER_LEN..end];
    let computed = crc32c::crc32c_append(crc32c::crc32c(&buf[4..8]), payload);
    if computed != stored {
        return Err(FrameError::Corrupt(format!(
            "frame checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    if payload[0] != KIND_RECORD {
        return Err(FrameError::Corrupt(format!(
            "unknown frame kind {}",
            payload[0]
        )));
    }
    let epoch = Epoch(u64::from_le_bytes(
        payload[1..9].try_into().expect("8 bytes"),
    ));
    let record = RedoRecord::decode(&payload[9..])
        .map_err(|e: RecordError| FrameError::Corrupt(e.to_string()))?;
    Ok((LoggedRecord { epoch, record }, end))
}

/// The offset of the next whole, valid frame at or after `from`, if any: where reading resumes
/// after a damaged frame.
pub fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    let mut at = from;
    while at + FRAME_HEADER_LEN <= buf.len() {
        match buf[at..].windows(4).position(|w| w == magic) {
            None => return None,
            Some(p) => {
                at += p;
                if parse(&buf[at..]).is_ok() {
                    return Some(at);
                }
                at += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use logdb_types::record::RecordKind;
    use logdb_types::{Lsn, PageId};

    fn rec(lsn: u64) -> RedoRecord {
        RedoRecord::new(
            Lsn(lsn),
            Lsn(lsn - 1),
            1,
            PageId(2),
            0,
            RecordKind::Delta,
            0,
            0,
            vec![lsn as u8; 100],
        )
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut buf = Vec::new();
        for lsn in 1..=3 {
            encode_record(Epoch(4), &rec(lsn), &mut buf);
        }
        assert_eq!(buf.len(), 3 * encoded_record_len(&rec(1)));
        let mut at = 0;
        for lsn in 1..=3 {
            let (f, used) = parse(&buf[at..]).unwrap();
            assert_eq!(f.epoch, Epoch(4));
            assert_eq!(f.record, rec(lsn));
            at += used;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn torn_tail_is_incomplete_and_flip_is_corrupt() {
        let mut buf = Vec::new();
        encode_record(Epoch(1), &rec(1), &mut buf);
        for len in 0..buf.len() {
            assert!(matches!(
                parse(&buf[..len]),
                Err(FrameError::Incomplete) | Err(FrameError::Corrupt(_))
            ));
        }
        assert!(matches!(
            parse(&buf[..buf.len() - 1]),
            Err(FrameError::Incomplete)
        ));
        let mut bad = buf.clone();
        bad[40] ^= 0x10;
        assert!(matches!(parse(&bad), Err(FrameError::Corrupt(_))));
    }

    #[test]
    fn resync_finds_the_frame_after_damage() {
        let mut buf = Vec::new();
        encode_record(Epoch(1), &rec(1), &mut buf);
        let second = buf.len();
        encode_record(Epoch(1), &rec(2), &mut buf);
        buf[30] ^= 0xff;
        assert!(parse(&buf).is_err());
        assert_eq!(resync(&buf, 1), Some(second));
        assert_eq!(resync(&buf, second + 1), None);
    }
}
