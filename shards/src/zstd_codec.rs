//! zstd, behind the `zstd` cargo feature (on by default). Without it, compressing a
//! segment or reading a compressed one is an error that says so; a log configured with
//! `Compression::Zstd` is refused when it opens.

use crate::format::FormatError;

#[cfg(not(feature = "zstd"))]
const NO_ZSTD: &str = "compressed segments need the `zstd` cargo feature of bop-rs";

/// A compression context, reused for every chunk of a segment.
pub struct Compressor {
    #[cfg(feature = "zstd")]
    inner: zstd::bulk::Compressor<'static>,
}

impl Compressor {
    /// A context at zstd `level`.
    pub fn new(level: i32) -> Result<Compressor, FormatError> {
        #[cfg(feature = "zstd")]
        return zstd::bulk::Compressor::new(level)
            .map(|inner| Compressor { inner })
            .map_err(|_| FormatError::BadField("zstd refused the level"));
        #[cfg(not(feature = "zstd"))]
        {
            let _ = level;
            Err(FormatError::BadField(NO_ZSTD))
        }
    }

    /// `raw` compressed into one zstd frame.
    pub fn compress(&mut self, raw: &[u8]) -> Result<Vec<u8>, FormatError> {
        #[cfg(feature = "zstd")]
        return self
            .inner
            .compress(raw)
            .map_err(|_| FormatError::BadField("zstd refused the level"));
        #[cfg(not(feature = "zstd"))]
        {
            let _ = raw;
            Err(FormatError::BadField(NO_ZSTD))
        }
    }
}

#[cfg(feature = "zstd")]
thread_local! {
    /// A decompression context per thread, reused (making one per chunk costs about
    /// as much as a small chunk's inflation).
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Inflates zstd frame `z` into `out` (within its capacity); returns the length.
pub fn decompress_into(z: &[u8], out: &mut Vec<u8>) -> Result<usize, FormatError> {
    #[cfg(feature = "zstd")]
    return DCTX
        .with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            d.as_mut().expect("made above").decompress_to_buffer(z, out)
        })
        .map_err(|_| FormatError::BadField("zstd frame"));
    #[cfg(not(feature = "zstd"))]
    {
        let _ = (z, out);
        Err(FormatError::BadField(NO_ZSTD))
    }
}
