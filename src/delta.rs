//! Binary deltas between builds: bsdiff-class matching over a suffix array, streams
//! coded with zstd in independent blocks, applied in one pass with bounded memory.
//!
//! Pipeline (diff): hash both inputs → plan segments (the whole file when old, its
//! suffix array and new fit the memory limit; otherwise an anchor index maps each new
//! segment to the old regions it comes from) → per segment: suffix array over those old
//! regions (both cores) → approximate matching (both cores, on halves of the segment) →
//! control/diff/extra streams → blocks compressed in parallel → written in order.
//!
//! Apply reads old by offset and writes new sequentially; it trusts nothing in the
//! patch: every size is checked against fixed bounds before a buffer is sized from it,
//! the old input's blake3 is checked first and the result's last.
//!
//! No I/O types beyond `std::io`; the store and HTTP layers call in.

pub mod apply;
pub mod bsdiff40;
pub mod encode;
pub mod exe;
mod ext4;
pub mod format;
pub mod matcher;
pub mod plan;
pub mod suffix;

use std::io;

pub use apply::{apply, ApplyReport};
pub use encode::{diff, DiffOptions, DiffReport, PatchFormat, DEFAULT_BLOCK_SIZE, DEFAULT_LEVEL};

/// Errors from the delta engine; they say whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("invalid patch: {0}")]
    Format(#[from] format::FormatError),
    #[error("invalid patch: {0}")]
    Corrupt(String),
    #[error("old input does not match the patch: {0}")]
    WrongOld(String),
    #[error("result does not match the patch's blake3 (corrupt patch or old input)")]
    ResultMismatch,
    #[error("memory limit {limit} bytes is too small (need at least {need})")]
    MemoryLimit { limit: u64, need: u64 },
    #[error("internal: {0}")]
    Internal(String),
}

/// Random-access input (old and new files, or memory in tests).
pub trait ReadAt: Sync {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; short inputs are an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start =
            usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_at(buf, offset)
    }
}

/// A file read with `pread`; its size is fixed when opened.
pub struct FileAt {
    file: std::fs::File,
    size: u64,
}

impl FileAt {
    pub fn open(path: &std::path::Path) -> io::Result<FileAt> {
        let file = std::fs::File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let size = file.metadata()?.len();
        Ok(FileAt { file, size })
    }
}

impl ReadAt for FileAt {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.read_exact_at(buf, offset)
    }
}

/// Reads `len` bytes at `offset` into a new buffer.
pub fn read_vec(src: &dyn ReadAt, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    src.read_at(&mut v, offset)?;
    Ok(v)
}

/// blake3 of a whole input, read in bounded pieces.
pub fn hash_input(src: &dyn ReadAt) -> io::Result<crate::hash::Hash> {
    // 256 KiB: the buffer stays in cache between the read and the hash.
    const PIECE: usize = 256 << 10;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; PIECE];
    let mut off = 0u64;
    while off < src.size() {
        let n = PIECE.min((src.size() - off) as usize);
        src.read_at(&mut buf[..n], off)?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize().into())
}

/// zstd level of the full-payload yardstick for the worth-it rule.
pub const YARDSTICK_LEVEL: i32 = 3;

/// zstd size of the full payload, the yardstick of the worth-it rule (read in pieces,
/// coded on two threads).
pub fn zstd_full_size(src: &dyn ReadAt, level: i32) -> io::Result<u64> {
    let mut enc = zstd::stream::write::Encoder::new(CountingSink(0), level)?;
    enc.multithread(2)?;
    const PIECE: usize = 4 << 20;
    let mut buf = vec![0u8; PIECE];
    let mut off = 0u64;
    while off < src.size() {
        let n = PIECE.min((src.size() - off) as usize);
        src.read_at(&mut buf[..n], off)?;
        io::Write::write_all(&mut enc, &buf[..n])?;
        off += n as u64;
    }
    Ok(enc.finish()?.0)
}

/// zstd size of bytes in memory, on the calling thread.
pub fn zstd_size_of(bytes: &[u8], level: i32) -> io::Result<u64> {
    let mut enc = zstd::stream::write::Encoder::new(CountingSink(0), level)?;
    enc.set_pledged_src_size(Some(bytes.len() as u64))?;
    io::Write::write_all(&mut enc, bytes)?;
    Ok(enc.finish()?.0)
}

struct CountingSink(u64);

impl io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The worth-it rule: offer a delta only when it is at most `ratio` × the zstd-compressed
/// full payload.
pub fn worth_it(delta_size: u64, zstd_full: u64, ratio: f64) -> bool {
    (delta_size as f64) <= ratio * zstd_full as f64
}
