//! The local record of an archived segment (`archive/<id>.stub`) and the log's
//! archive id (`LOG_ID`). A stub is written durably once the store confirmed the
//! upload, before any local copy may go: with it a log opens and lists its segments
//! without the store. It holds the segment's header and footer as they are on disk
//! (their own checksums still guard them), the object's key, size and SHA-256, and a
//! CRC-32 of the whole.
//!
//! Layout (little-endian): magic `AOF2STUB`, version u16 (1), flags u16 (bit 0: the
//! object is the compressed file), object bytes u64, SHA-256 (32 bytes), key length
//! u16, key, header (64 bytes), footer (80 bytes), CRC-32 of everything before it.

use crate::format::{HeaderState, SegmentFooter, SegmentHeader, FOOTER_LEN, HEADER_LEN};
use crate::fs::{read_exact_at, write_all_at, Fs, OpenMode};
use crate::log::SealedSegment;
use std::io;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"AOF2STUB";
const VERSION: u16 = 1;
const FLAG_COMPRESSED: u16 = 1;

/// An archived segment, as its stub records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stub {
    /// The segment (header, seed, footer; `compressed`: the object is the `.zst`).
    pub segment: SealedSegment,
    /// The object's key in the store.
    pub key: String,
    /// The object's size.
    pub object_bytes: u64,
    /// The object's SHA-256.
    pub sha256: [u8; 32],
}

impl Stub {
    /// The stub's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let s = &self.segment;
        let mut b = Vec::with_capacity(160 + self.key.len());
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        let flags = if s.compressed { FLAG_COMPRESSED } else { 0 };
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&self.object_bytes.to_le_bytes());
        b.extend_from_slice(&self.sha256);
        b.extend_from_slice(&(self.key.len() as u16).to_le_bytes());
        b.extend_from_slice(self.key.as_bytes());
        b.extend_from_slice(&s.header.encode().0);
        b.extend_from_slice(&s.footer.encode(s.seed));
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a stub; the reason it is not one otherwise.
    pub fn decode(b: &[u8]) -> Result<Stub, String> {
        let fixed = 8 + 2 + 2 + 8 + 32 + 2;
        if b.len() < fixed + HEADER_LEN + FOOTER_LEN + 4 {
            return Err(format!("{} bytes is too short for a stub", b.len()));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
        if crc32fast::hash(body) != stored {
            return Err("checksum mismatch".into());
        }
        if &body[..8] != MAGIC {
            return Err("bad magic".into());
        }
        let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
        if u16_at(8) != VERSION {
            return Err(format!("stub version {}", u16_at(8)));
        }
        let flags = u16_at(10);
        let object_bytes = u64::from_le_bytes(body[12..20].try_into().expect("8 bytes"));
        let sha256: [u8; 32] = body[20..52].try_into().expect("32 bytes");
        let klen = u16_at(52) as usize;
        if body.len() != fixed + klen + HEADER_LEN + FOOTER_LEN {
            return Err("length does not match its key".into());
        }
        let key = String::from_utf8(body[54..54 + klen].to_vec())
            .map_err(|_| "key is not UTF-8".to_string())?;
        let h = &body[54 + klen..54 + klen + HEADER_LEN];
        let (header, seed) = match SegmentHeader::decode(h) {
            Ok(HeaderState::Valid(h, seed)) => (h, seed),
            Ok(HeaderState::Blank) => return Err("blank segment header".into()),
            Err(e) => return Err(format!("segment header: {e}")),
        };
        let f = &body[54 + klen + HEADER_LEN..];
        let footer = match SegmentFooter::decode(f, seed, header.file_size) {
            Ok(Some(f)) => f,
            Ok(None) => return Err("blank segment footer".into()),
            Err(e) => return Err(format!("segment footer: {e}")),
        };
        if footer.segment_id != header.segment_id {
            return Err("footer and header name different segments".into());
        }
        Ok(Stub {
            segment: SealedSegment {
                header,
                seed,
                footer,
                compressed: flags & FLAG_COMPRESSED != 0,
                disk_bytes: 0,
                archived: true,
                local: false,
            },
            key,
            object_bytes,
            sha256,
        })
    }
}

/// The SHA-256 as lower-case hex.
pub fn hex(sum: &[u8; 32]) -> String {
    sum.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `data` to `path` durably and atomically: a temporary file written and
/// synced, renamed over `path`, the directory synced.
pub fn write_durably(fs: &dyn Fs, path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().expect("a file in a directory");
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match fs.unlink(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let f = fs.open(
        &tmp,
        OpenMode::CreateNew {
            direct: false,
            mode,
        },
    )?;
    write_all_at(&*f, 0, &[data])?;
    f.fdatasync()?;
    drop(f);
    fs.rename(&tmp, path)?;
    fs.fsync_dir(dir)
}

/// Reads a whole small file.
pub fn read_file(fs: &dyn Fs, path: &Path) -> io::Result<Vec<u8>> {
    let f = fs.open(path, OpenMode::Read)?;
    let n = f.size()? as usize;
    let mut b = vec![0u8; n];
    read_exact_at(&*f, 0, &mut b)?;
    Ok(b)
}

/// A fresh random log id: 32 hex digits from the kernel's random source.
pub fn new_log_id() -> io::Result<String> {
    let mut b = [0u8; 16];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: writes at most the buffer's remaining length into it.
        let r = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += r as usize;
    }
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A log id read back: 32 hex digits.
pub fn parse_log_id(b: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(b).ok()?.trim();
    (s.len() == 32 && s.bytes().all(|c| c.is_ascii_hexdigit())).then(|| s.to_string())
}

/// The log's archive id (`LOG_ID`), created (durably) if the log has none yet.
pub fn ensure_log_id(
    fs: &dyn Fs,
    paths: &crate::layout::LogPaths,
    mode: u32,
) -> crate::error::AofResult<String> {
    use crate::error::AofError;
    match read_file(fs, &paths.log_id) {
        Ok(b) => parse_log_id(&b).ok_or_else(|| AofError::Corruption {
            path: paths.log_id.clone(),
            segment: 0,
            offset: 0,
            reason: "not a log id (32 hex digits)".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = new_log_id().map_err(|e| AofError::io("getrandom", &paths.log_id, e))?;
            write_durably(fs, &paths.log_id, format!("{id}\n").as_bytes(), mode)
                .map_err(|e| AofError::io("write", &paths.log_id, e))?;
            Ok(id)
        }
        Err(e) => Err(AofError::io("read", &paths.log_id, e)),
    }
}
