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
    /// The transform's section would be past the format's bounds on ops or sections
    /// (`format::MAX_TRANSFORM_OPS`, `exe::MAX_IMAGE_SECTIONS`): the encoder then
    /// writes a patch without it.
    #[error("the transform section ({0} ops) would be past the format's bounds")]
    TransformBound(u64),
}

/// Random-access input (old and new files, or memory in tests).
pub trait ReadAt: Sync {
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; short inputs are an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// All of it, when it is in memory (a slice, or a file `FileAt::open_mapped`
    /// mapped): readers then borrow what they need instead of copying it.
    fn bytes(&self) -> Option<&[u8]> {
        None
    }
    /// `buf.len()` bytes at `offset`: borrowed from `bytes` when in memory, else read
    /// into `buf`; short inputs are an error.
    fn view<'a>(&'a self, buf: &'a mut [u8], offset: u64) -> io::Result<&'a [u8]> {
        match self.bytes() {
            Some(b) => usize::try_from(offset)
                .ok()
                .and_then(|start| b.get(start..start.checked_add(buf.len())?))
                .ok_or_else(|| io::ErrorKind::UnexpectedEof.into()),
            None => {
                self.read_at(buf, offset)?;
                Ok(buf)
            }
        }
    }
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

    fn bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_at(buf, offset)
    }

    fn bytes(&self) -> Option<&[u8]> {
        Some(self)
    }
}

/// An input in memory read piece by piece (no `ReadAt::bytes`), as apply reads a file
/// too large to map: tests and the fuzz targets apply patches both ways and compare.
pub struct Unmapped<'a>(pub &'a [u8]);

impl ReadAt for Unmapped<'_> {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
}

/// A file read with `pread`, or from memory when mapped; its size is fixed when opened.
pub struct FileAt {
    file: std::fs::File,
    size: u64,
    map: Option<memmap2::Mmap>,
}

/// `FileAt::open_mapped` maps files up to this size. A mapped file's pages count in the
/// process's resident memory, so this leaves apply's 64 MiB bound room for its own
/// (at most ~25 MiB on the corpus's executables); larger files are read with `pread`.
pub const MAP_MAX: u64 = 32 << 20;

impl FileAt {
    pub fn open(path: &std::path::Path) -> io::Result<FileAt> {
        let file = std::fs::File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let size = file.metadata()?.len();
        Ok(FileAt {
            file,
            size,
            map: None,
        })
    }

    /// `open`, with a file of at most `MAP_MAX` bytes mapped into memory: for apply's
    /// old file, which it reads whole three times (hash, reference scan, ops) and the
    /// ops in thousands of small pieces. On the ruff pair `pread` spent a tenth of
    /// apply's CPU time copying and looking up page cache pages.
    pub fn open_mapped(path: &std::path::Path) -> io::Result<FileAt> {
        let mut f = FileAt::open(path)?;
        if f.size > 0 && f.size <= MAP_MAX {
            // A file that cannot be mapped (a file system without `mmap`), or that
            // changed size since it was opened, is read with `pread` as before.
            f.map = map_read_only(&f.file)
                .ok()
                .filter(|m| m.len() as u64 == f.size);
        }
        Ok(f)
    }
}

/// Maps `file` read-only. Its pages are mapped as they are first read, by whichever
/// thread reads them (loading them all at once held up apply's start: ruff's median
/// apply took 131-144 ms with, 119-128 ms without).
///
/// The one `unsafe` of the crate (`STYLE.md`: a measured hot path). Mapping is unsafe
/// because the bytes behind the slice can change if another process writes the file,
/// and reading past a truncation kills the process (SIGBUS). Apply maps only its old
/// file, the payload the device runs, which nothing writes during an update; bytes
/// changed behind its back give a wrong old hash or a wrong result hash, both refused,
/// as with `pread`.
#[allow(unsafe_code)]
fn map_read_only(file: &std::fs::File) -> io::Result<memmap2::Mmap> {
    // SAFETY: see above; the mapping lives as long as the `FileAt` that holds it.
    unsafe { memmap2::Mmap::map(file) }
}

impl ReadAt for FileAt {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        match &self.map {
            Some(m) => m[..].read_at(buf, offset),
            None => self.file.read_exact_at(buf, offset),
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        self.map.as_deref()
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
    if let Some(b) = src.bytes() {
        h.update(b);
        return Ok(h.finalize().into());
    }
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

/// Bytes per piece when an input in memory is hashed as independent pieces
/// (`PieceHash`): a power of two of blake3 chunks.
const HASH_PIECE: u64 = 256 << 10;

/// blake3 of an input in memory, computed as independent pieces (blake3 subtrees of at
/// most `HASH_PIECE` bytes, in any order, on any thread) and then joined: apply hands
/// the pieces to its pool as work taken only when a thread has nothing else to do.
pub struct PieceHash {
    len: u64,
    /// Each piece's (offset, length), in input order, and its chaining value once hashed.
    pieces: Vec<(u64, u64)>,
    cvs: Vec<std::sync::OnceLock<blake3::hazmat::ChainingValue>>,
}

impl PieceHash {
    /// The pieces of a `len`-byte input: the subtrees blake3's tree has at that size
    /// (its left subtree is the largest power of two of chunks shorter than the whole).
    pub fn new(len: u64) -> PieceHash {
        fn split(off: u64, len: u64, out: &mut Vec<(u64, u64)>) {
            if len <= HASH_PIECE {
                out.push((off, len));
            } else {
                let left = blake3::hazmat::left_subtree_len(len);
                split(off, left, out);
                split(off + left, len - left, out);
            }
        }
        let mut pieces = Vec::new();
        split(0, len, &mut pieces);
        let cvs = pieces.iter().map(|_| std::sync::OnceLock::new()).collect();
        PieceHash { len, pieces, cvs }
    }

    pub fn len(&self) -> usize {
        self.pieces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Hashes piece `i` of `input` (the whole input, `len` bytes).
    pub fn hash_piece(&self, i: usize, input: &[u8]) {
        use blake3::hazmat::HasherExt;
        let (off, len) = self.pieces[i];
        let bytes = &input[off as usize..(off + len) as usize];
        let mut h = blake3::Hasher::new();
        let cv = match self.pieces.len() {
            // The whole input: its root is hashed as usual.
            1 => *h.update(bytes).finalize().as_bytes(),
            _ => h.set_input_offset(off).update(bytes).finalize_non_root(),
        };
        let _ = self.cvs[i].set(cv);
    }

    /// The input's blake3, once every piece is hashed (`None` if one is not).
    pub fn finish(&self) -> Option<crate::hash::Hash> {
        use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, ChainingValue, Mode};
        /// A subtree of `len` bytes from the pieces' values in order: the splits of `new`.
        fn join(len: u64, next: &mut impl Iterator<Item = ChainingValue>) -> ChainingValue {
            if len <= HASH_PIECE {
                return next.next().unwrap_or_default();
            }
            let left = blake3::hazmat::left_subtree_len(len);
            let l = join(left, next);
            let r = join(len - left, next);
            merge_subtrees_non_root(&l, &r, Mode::Hash)
        }
        let cvs: Vec<ChainingValue> = self
            .cvs
            .iter()
            .map(|c| c.get().copied())
            .collect::<Option<_>>()?;
        let root = match cvs[..] {
            [whole] => blake3::Hash::from_bytes(whole),
            _ => {
                let mut next = cvs.into_iter();
                let left = blake3::hazmat::left_subtree_len(self.len);
                let l = join(left, &mut next);
                let r = join(self.len - left, &mut next);
                merge_subtrees_root(&l, &r, Mode::Hash)
            }
        };
        Some(crate::hash::Hash::from(root))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_hashed_in_any_order_join_to_blake3_of_the_whole() {
        let p = HASH_PIECE;
        let data = crate::cli::demo::noise((5 * p + 3000) as usize, 11);
        for len in [
            0,
            1,
            1023,
            1024,
            1025,
            p - 1,
            p,
            p + 1,
            2 * p,
            3 * p + 5,
            4 * p + 1024,
            5 * p + 3000,
        ] {
            let input = &data[..len as usize];
            let h = PieceHash::new(len);
            // The pieces cover the input in order, none longer than a piece.
            let mut at = 0;
            for &(off, n) in &h.pieces {
                assert_eq!(off, at);
                assert!(n <= HASH_PIECE && (n > 0 || len == 0));
                at += n;
            }
            assert_eq!(at, len);
            assert_eq!(h.finish(), None, "len {len}: nothing hashed yet");
            // Last to first, as a pool may take them.
            for i in (0..h.len()).rev() {
                h.hash_piece(i, input);
            }
            assert_eq!(
                h.finish(),
                Some(crate::hash::Hash::from(blake3::hash(input))),
                "len {len}"
            );
        }
    }

    #[test]
    fn small_files_are_mapped_and_read_as_with_pread() {
        let data = crate::cli::demo::noise(100_000, 7);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old");
        std::fs::write(&path, &data).unwrap();
        let (read, mapped) = (
            FileAt::open(&path).unwrap(),
            FileAt::open_mapped(&path).unwrap(),
        );
        assert!(read.bytes().is_none());
        assert_eq!(mapped.bytes(), Some(&data[..]));
        for (off, len) in [(0u64, 10usize), (99_990, 10), (12_345, 4096)] {
            let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
            read.read_at(&mut a, off).unwrap();
            mapped.read_at(&mut b, off).unwrap();
            assert_eq!(a, b);
            assert_eq!(
                mapped.view(&mut b, off).unwrap(),
                &data[off as usize..][..len]
            );
            assert_eq!(
                read.view(&mut b, off).unwrap(),
                &data[off as usize..][..len]
            );
        }
        // Past the end is an error both ways, never a panic or a short answer.
        for f in [&read, &mapped] {
            let mut buf = [0u8; 8];
            assert!(f.view(&mut buf, 99_996).is_err());
            assert!(f.read_at(&mut buf, 99_996).is_err());
            assert!(f.view(&mut buf, u64::MAX - 2).is_err());
        }
        assert_eq!(hash_input(&mapped).unwrap(), hash_input(&read).unwrap());
        assert_eq!(
            hash_input(&mapped).unwrap(),
            crate::hash::Hash::from(blake3::hash(&data))
        );
    }

    #[test]
    fn files_past_the_bound_and_empty_files_are_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        // Sparse: no 32 MiB written.
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAP_MAX + 1)
            .unwrap();
        let f = FileAt::open_mapped(&big).unwrap();
        assert!(f.bytes().is_none());
        assert_eq!(f.size(), MAP_MAX + 1);
        let at_bound = dir.path().join("bound");
        std::fs::File::create(&at_bound)
            .unwrap()
            .set_len(MAP_MAX)
            .unwrap();
        assert_eq!(
            FileAt::open_mapped(&at_bound)
                .unwrap()
                .bytes()
                .map(<[u8]>::len),
            Some(MAP_MAX as usize)
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(FileAt::open_mapped(&empty).unwrap().bytes().is_none());
        assert!(FileAt::open_mapped(&dir.path().join("missing")).is_err());
    }
}
