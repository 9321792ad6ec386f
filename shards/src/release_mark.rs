//! The release mark: the durable low-water mark of a log (`<root_dir>/RELEASED`). Pure
//! encode and decode, no I/O.
//!
//! Segments below `first_segment` were released (by `release_before` or retention) and
//! never come back; the first kept segment starts at record `first_record_index`.
//! Recovery tells a released head from a lost one with it: a segment file below the
//! mark is a leftover of a release a crash interrupted (removed), and the first segment
//! at or above it must start exactly at `first_record_index` (otherwise records were
//! lost). A log without the file has released nothing.
//!
//! The mark is replaced whole: written to `RELEASED.tmp`, synced, renamed over
//! `RELEASED` and the directory synced, before any released file is touched. Layout
//! (little-endian, one 4 KiB block, the rest zero):
//!
//! ```text
//! [0, 8)    magic "AOF2REL\0"
//! [8, 10)   format version (1)
//! [10, 12)  encoded length (64)
//! [12, 16)  flags (zero)
//! [16, 24)  first_segment: id of the first segment kept
//! [24, 32)  first_record_index: records in every released segment
//! [32, 60)  reserved (zero)
//! [60, 64)  CRC-32 of [0, 60)
//! ```

use crate::format::{FormatError, BLOCK, FORMAT_VERSION};

/// First 8 bytes of the release mark.
pub const MARK_MAGIC: [u8; 8] = *b"AOF2REL\0";
/// Encoded length of the mark (the file is one block).
pub const MARK_LEN: usize = 64;

/// Where a log starts after its releases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReleaseMark {
    /// Segments with lower ids were released.
    pub first_segment: u64,
    /// Records in the released segments: the first kept segment's `base_record_index`.
    pub first_record_index: u64,
}

impl ReleaseMark {
    /// The mark's file contents: one block, zero past the encoded mark.
    pub fn encode(&self) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[0..8].copy_from_slice(&MARK_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(MARK_LEN as u16).to_le_bytes());
        b[16..24].copy_from_slice(&self.first_segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_record_index.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a mark file's contents.
    pub fn decode(b: &[u8]) -> Result<ReleaseMark, FormatError> {
        if b.len() < MARK_LEN {
            return Err(FormatError::Truncated {
                needed: MARK_LEN,
                have: b.len(),
            });
        }
        if b[0..8] != MARK_MAGIC {
            return Err(FormatError::BadMagic);
        }
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
        let version = u16_at(8);
        if version != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let stored = u32_at(60);
        let computed = crc32fast::hash(&b[0..60]);
        if stored != computed {
            return Err(FormatError::BadChecksum { stored, computed });
        }
        if u16_at(10) as usize != MARK_LEN || u32_at(12) != 0 || b[32..60].iter().any(|&x| x != 0) {
            return Err(FormatError::BadField("reserved"));
        }
        let first_segment = u64_at(16);
        if first_segment > u64::from(u32::MAX) + 1 {
            return Err(FormatError::BadField("first_segment"));
        }
        Ok(ReleaseMark {
            first_segment,
            first_record_index: u64_at(24),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_round_trips_and_any_flipped_bit_is_caught() {
        let m = ReleaseMark {
            first_segment: 7,
            first_record_index: 12345,
        };
        let b = m.encode();
        assert_eq!(ReleaseMark::decode(&b), Ok(m));
        for bit in 0..MARK_LEN * 8 {
            let mut c = b;
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(ReleaseMark::decode(&c).is_err(), "bit {bit}");
        }
        assert!(matches!(
            ReleaseMark::decode(&b[..10]),
            Err(FormatError::Truncated { .. })
        ));
        assert_eq!(
            ReleaseMark::decode(&[0u8; BLOCK]),
            Err(FormatError::BadMagic)
        );
    }
}
