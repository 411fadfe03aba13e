//! The redo record: one codec with its checksum, shared by the writer, the storage node and the
//! replicas (DESIGN.md §2). A record is checksummed where it is made (the writer) and verified
//! wherever it is received or read back, so a bit flip anywhere on the way is caught.
//!
//! Binary layout (little endian), used inside log frames and for the checksum:
//! `lsn u64 | prev_lsn u64 | tx_id u64 | page_id u64 | offset u32 | type u8 | flags u8 |
//!  commit_ts_us u64 | data_len u32 | data`, then `checksum u32` (CRC-32C of everything before).

use crate::ids::{Lsn, PageId};
use crate::proto;

/// What a record does to its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// `data` replaces the bytes at `[offset, offset + data.len())`.
    Delta,
    /// `data` is the whole page.
    Image,
    /// `data` is `source u32 | length u32`: bytes `[source, source + length)` move to
    /// `[offset, offset + length)` (memmove semantics).
    Move,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Delta => proto::RecordType::PageDelta as u8,
            RecordKind::Image => proto::RecordType::PageImage as u8,
            RecordKind::Move => proto::RecordType::PageMove as u8,
        }
    }
    fn from_code(code: u32) -> Option<Self> {
        match proto::RecordType::try_from(code as i32) {
            Ok(proto::RecordType::PageDelta) => Some(RecordKind::Delta),
            Ok(proto::RecordType::PageImage) => Some(RecordKind::Image),
            Ok(proto::RecordType::PageMove) => Some(RecordKind::Move),
            _ => None,
        }
    }
}

/// Flag bit: last record of a transaction (a consistency point).
pub const FLAG_COMMIT: u8 = proto::RecordFlag::Commit as u8;
const KNOWN_FLAGS: u32 = FLAG_COMMIT as u32;

/// Header bytes before `data`, and the trailing checksum.
const HEADER_LEN: usize = 8 * 4 + 4 + 1 + 1 + 8 + 4;
const CHECKSUM_LEN: usize = 4;

/// The data of a `Move` record.
pub fn encode_move(source: u32, len: u32) -> Vec<u8> {
    let mut d = source.to_le_bytes().to_vec();
    d.extend_from_slice(&len.to_le_bytes());
    d
}

/// `(source, length)` from a `Move` record's data.
pub fn decode_move(data: &[u8]) -> Option<(u32, u32)> {
    let a: [u8; 4] = data.get(0..4)?.try_into().ok()?;
    let b: [u8; 4] = data.get(4..8)?.try_into().ok()?;
    (data.len() == 8).then(|| (u32::from_le_bytes(a), u32::from_le_bytes(b)))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedoRecord {
    pub lsn: Lsn,
    pub prev_lsn: Lsn,
    pub tx_id: u64,
    pub page_id: PageId,
    pub offset: u32,
    pub kind: RecordKind,
    pub flags: u8,
    pub commit_ts_us: u64,
    pub data: Vec<u8>,
    pub checksum: u32,
}

/// Why bytes or a proto message are not a valid record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record is truncated: {0} bytes, need at least {1}")]
    Truncated(usize, usize),
    #[error(
        "record LSN {lsn}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    Checksum {
        lsn: u64,
        stored: u32,
        computed: u32,
    },
    #[error("record has LSN 0; LSNs start at 1")]
    ZeroLsn,
    #[error("record LSN {lsn}: backlink {prev} is not below the record's own LSN")]
    Backlink { lsn: u64, prev: u64 },
    #[error("record LSN {lsn}: unknown record type {code}")]
    UnknownType { lsn: u64, code: u32 },
    #[error("record LSN {lsn}: unknown flag bits {flags:#x}")]
    UnknownFlags { lsn: u64, flags: u32 },
    #[error("record LSN {lsn}: COMMIT flag without a commit timestamp")]
    CommitWithoutTimestamp { lsn: u64 },
    #[error("record LSN {lsn}: page delta carries no bytes")]
    EmptyDelta { lsn: u64 },
    #[error(
        "record LSN {lsn}: offset {offset} + length {len} is beyond the {page_size}-byte page"
    )]
    BeyondPage {
        lsn: u64,
        offset: u32,
        len: usize,
        page_size: u32,
    },
    #[error(
        "record LSN {lsn}: page image of {len} bytes, but the volume's page size is {page_size}"
    )]
    WrongPageSize {
        lsn: u64,
        len: usize,
        page_size: u32,
    },
    #[error("record LSN {lsn}: page image must have offset 0, not {offset}")]
    ImageOffset { lsn: u64, offset: u32 },
    #[error("record LSN {lsn}: page move needs 8 bytes (source, length), not {len}")]
    MoveArgs { lsn: u64, len: usize },
    #[error("record LSN {lsn}: page move of {len} bytes from {from} to {offset} is outside the {page_size}-byte page")]
    MoveBeyondPage {
        lsn: u64,
        from: u32,
        offset: u32,
        len: u32,
        page_size: u32,
    },
}

impl RedoRecord {
    /// Builds a record and computes its checksum (what the writer does).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lsn: Lsn,
        prev_lsn: Lsn,
        tx_id: u64,
        page_id: PageId,
        offset: u32,
        kind: RecordKind,
        flags: u8,
        commit_ts_us: u64,
        data: Vec<u8>,
    ) -> Self {
        let mut r = RedoRecord {
            lsn,
            prev_lsn,
            tx_id,
            page_id,
            offset,
            kind,
            flags,
            commit_ts_us,
            data,
            checksum: 0,
        };
        r.checksum = r.compute_checksum();
        r
    }

    /// `(source, length)` of a `Move` record (None when the data is not 8 bytes).
    pub fn move_args(&self) -> Option<(u32, u32)> {
        decode_move(&self.data)
    }

    pub fn is_commit(&self) -> bool {
        self.flags & FLAG_COMMIT != 0
    }

    fn write_header(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.lsn.0.to_le_bytes());
        out.extend_from_slice(&self.prev_lsn.0.to_le_bytes());
        out.extend_from_slice(&self.tx_id.to_le_bytes());
        out.extend_from_slice(&self.page_id.0.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.push(self.kind.code());
        out.push(self.flags);
        out.extend_from_slice(&self.commit_ts_us.to_le_bytes());
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
    }

    /// CRC-32C over every field but the checksum itself.
    pub fn compute_checksum(&self) -> u32 {
        let mut header = Vec::with_capacity(HEADER_LEN);
        self.write_header(&mut header);
        crc32c::crc32c_append(crc32c::crc32c(&header), &self.data)
    }

    /// Bytes this record takes once encoded.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.data.len() + CHECKSUM_LEN
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        self.write_header(out);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(&self.checksum.to_le_bytes());
    }

    /// Decodes and verifies one record occupying all of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, RecordError> {
        if buf.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(RecordError::Truncated(buf.len(), HEADER_LEN + CHECKSUM_LEN));
        }
        let u64_at = |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let lsn = u64_at(0);
        let data_len = u32_at(HEADER_LEN - 4) as usize;
        let need = HEADER_LEN + data_len + CHECKSUM_LEN;
        if buf.len() != need {
            return Err(RecordError::Truncated(buf.len(), need));
        }
        let kind = RecordKind::from_code(buf[36] as u32).ok_or(RecordError::UnknownType {
            lsn,
            code: buf[36] as u32,
        })?;
        let rec = RedoRecord {
            lsn: Lsn(lsn),
            prev_lsn: Lsn(u64_at(8)),
            tx_id: u64_at(16),
            page_id: PageId(u64_at(24)),
            offset: u32_at(32),
            kind,
            flags: buf[37],
            commit_ts_us: u64_at(38),
            data: buf[HEADER_LEN..HEADER_LEN + data_len].to_vec(),
            checksum: u32_at(HEADER_LEN + data_len),
        };
        rec.verify_checksum()?;
        Ok(rec)
    }

    pub fn verify_checksum(&self) -> Result<(), RecordError> {
        let computed = self.compute_checksum();
        if computed != self.checksum {
            return Err(RecordError::Checksum {
                lsn: self.lsn.0,
                stored: self.checksum,
                computed,
            });
        }
        Ok(())
    }

    /// Checks what can be checked without a segment: checksum, LSN, backlink, type, flags.
    /// `validate_for_page_size` adds the checks that need the volume's page size.
    pub fn from_proto(p: proto::RedoLogRecord) -> Result<Self, RecordError> {
        let lsn = p.lsn;
        if lsn == 0 {
            return Err(RecordError::ZeroLsn);
        }
        let kind = RecordKind::from_code(p.record_type as u32).ok_or(RecordError::UnknownType {
            lsn,
            code: p.record_type as u32,
        })?;
        if p.flags & !KNOWN_FLAGS != 0 {
            return Err(RecordError::UnknownFlags {
                lsn,
                flags: p.flags,
            });
        }
        let rec = RedoRecord {
            lsn: Lsn(lsn),
            prev_lsn: Lsn(p.prev_lsn),
            tx_id: p.transaction_id,
            page_id: PageId(p.page_id),
            offset: p.offset,
            kind,
            flags: p.flags as u8,
            commit_ts_us: p.commit_timestamp_us,
            data: p.redo_data,
            checksum: p.checksum,
        };
        rec.verify_checksum()?;
        if rec.prev_lsn >= rec.lsn {
            return Err(RecordError::Backlink {
                lsn,
                prev: p.prev_lsn,
            });
        }
        if rec.is_commit() && rec.commit_ts_us == 0 {
            return Err(RecordError::CommitWithoutTimestamp { lsn });
        }
        Ok(rec)
    }

    /// Checks that the record fits a page of `page_size` bytes.
    pub fn validate_for_page_size(&self, page_size: u32) -> Result<(), RecordError> {
        let lsn = self.lsn.0;
        match self.kind {
            RecordKind::Image => {
                if self.offset != 0 {
                    return Err(RecordError::ImageOffset {
                        lsn,
                        offset: self.offset,
                    });
                }
                if self.data.len() != page_size as usize {
                    return Err(RecordError::WrongPageSize {
                        lsn,
                        len: self.data.len(),
                        page_size,
                    });
                }
            }
            RecordKind::Move => {
                let (source, len) = self.move_args().ok_or(RecordError::MoveArgs {
                    lsn,
                    len: self.data.len(),
                })?;
                let fits = |at: u32| at as u64 + len as u64 <= page_size as u64;
                if len == 0 || !fits(source) || !fits(self.offset) {
                    return Err(RecordError::MoveBeyondPage {
                        lsn,
                        from: source,
                        offset: self.offset,
                        len,
                        page_size,
                    });
                }
            }
            RecordKind::Delta => {
                if self.data.is_empty() {
                    return Err(RecordError::EmptyDelta { lsn });
                }
                if self.offset as u64 + self.data.len() as u64 > page_size as u64 {
                    return Err(RecordError::BeyondPage {
                        lsn,
                        offset: self.offset,
                        len: self.data.len(),
                        page_size,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn to_proto(&self) -> proto::RedoLogRecord {
        proto::RedoLogRecord {
            lsn: self.lsn.0,
            transaction_id: self.tx_id,
            page_id: self.page_id.0,
            offset: self.offset,
            redo_data: self.data.clone(),
            record_type: match self.kind {
                RecordKind::Delta => proto::RecordType::PageDelta as i32,
                RecordKind::Image => proto::RecordType::PageImage as i32,
                RecordKind::Move => proto::RecordType::PageMove as i32,
            },
            prev_lsn: self.prev_lsn.0,
            flags: self.flags as u32,
            commit_timestamp_us: self.commit_ts_us,
            checksum: self.checksum,
            written_epoch: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(lsn: u64, prev: u64, offset: u32, data: &[u8]) -> RedoRecord {
        RedoRecord::new(
            Lsn(lsn),
            Lsn(prev),
            7,
            PageId(3),
            offset,
            RecordKind::Delta,
            0,
            0,
            data.to_vec(),
        )
    }

    #[test]
    fn encode_decode_round_trip() {
        let r = RedoRecord::new(
            Lsn(42),
            Lsn(40),
            9,
            PageId(1 << 34),
            100,
            RecordKind::Delta,
            FLAG_COMMIT,
            1_700_000_000_000_000,
            b"hello".to_vec(),
        );
        let mut buf = Vec::new();
        r.encode_into(&mut buf);
        assert_eq!(buf.len(), r.encoded_len());
        assert_eq!(RedoRecord::decode(&buf).unwrap(), r);
        assert_eq!(RedoRecord::from_proto(r.to_proto()).unwrap(), r);
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let r = delta(5, 4, 8, b"abc");
        let mut buf = Vec::new();
        r.encode_into(&mut buf);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    RedoRecord::decode(&bad).is_err(),
                    "flip of byte {byte} bit {bit} passed"
                );
            }
        }
    }

    #[test]
    fn truncated_bytes_are_rejected() {
        let mut buf = Vec::new();
        delta(5, 4, 8, b"abc").encode_into(&mut buf);
        for len in 0..buf.len() {
            assert!(RedoRecord::decode(&buf[..len]).is_err());
        }
    }

    #[test]
    fn proto_validation_names_the_problem() {
        let mut p = delta(5, 4, 0, b"x").to_proto();
        p.checksum ^= 1;
        let e = RedoRecord::from_proto(p).unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");

        let p = delta(0, 0, 0, b"x").to_proto();
        assert_eq!(RedoRecord::from_proto(p).unwrap_err(), RecordError::ZeroLsn);

        let p = delta(5, 5, 0, b"x").to_proto();
        assert!(matches!(
            RedoRecord::from_proto(p),
            Err(RecordError::Backlink { .. })
        ));

        let mut r = delta(5, 4, 0, b"x");
        r.flags = FLAG_COMMIT;
        r.checksum = r.compute_checksum();
        assert!(matches!(
            RedoRecord::from_proto(r.to_proto()),
            Err(RecordError::CommitWithoutTimestamp { .. })
        ));
    }

    #[test]
    fn page_size_checks() {
        let ok = delta(5, 4, 8190, b"ab");
        ok.validate_for_page_size(8192).unwrap();
        let e = delta(5, 4, 8191, b"ab")
            .validate_for_page_size(8192)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "record LSN 5: offset 8191 + length 2 is beyond the 8192-byte page"
        );
        let img = RedoRecord::new(
            Lsn(6),
            Lsn(5),
            1,
            PageId(0),
            0,
            RecordKind::Image,
            0,
            0,
            vec![0; 4096],
        );
        assert!(matches!(
            img.validate_for_page_size(8192),
            Err(RecordError::WrongPageSize { .. })
        ));
        img.validate_for_page_size(4096).unwrap();
        assert!(matches!(
            delta(5, 4, 0, b"").validate_for_page_size(8192),
            Err(RecordError::EmptyDelta { .. })
        ));
    }
}
