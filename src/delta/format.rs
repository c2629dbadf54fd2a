//! The native patch container, byte for byte. Pure encoding/decoding; decoding treats
//! every field as hostile and checks it against fixed bounds before anything is sized
//! from it.
//!
//! ```text
//! header (120 bytes, little-endian):
//!   magic "UEDELTA1" | version u16 (1 or 2) | flags u16 | zstd_level i32
//!   old_size u64 | new_size u64 | old_blake3 [32] | new_blake3 [32]
//!   block_size u32 | reserved u32 | block_count u64 | memory_limit u64
//! version 2 only (flags = 1, the x86-64 references transform, see `exe.rs`):
//!   transform_clen u32 | transform_len u32 | zstd frame of:
//!     kind u8 = 1 | new's executables (varint count; per executable varints file
//!     start, file length, base address, section count, then per section varints
//!     off, file_len, va, mem_len and a u8 exec flag) | varint count and ascending
//!     varint indexes of old's executables whose references are not predicted | varint block
//!     count (= block_count) | a varint control stream length per block | every
//!     block's control stream, in order
//!   The blocks of a version 2 patch have empty control streams (ctrl_clen = ctrl_len
//!   = 0): apply needs every op before the first block, to build the old→new offset
//!   map (`exe::OffsetMap::from_copies` over all ops' copies, in new's order, joining
//!   spans of one delta closer than `exe::MAP_GAP`). The control streams hold at most
//!   `MAX_TRANSFORM_OPS` ops together (a bound added after the version bump; the
//!   largest section seen, the benchmark corpus's 629 MB image, holds 136,265).
//!   Version 1 has flags = 0 and no transform; a patch without a transform is written as
//!   version 1, so older appliers take it.
//! block (repeated block_count times), each independent:
//!   new_len u32 | ctrl_clen u32 | ctrl_len u32 | diff_clen u32 | diff_coded_len u32
//!   diff_len u32 | extra_clen u32 | extra_len u32
//!   ctrl zstd frame | diff zstd frame | extra zstd frame
//! diff (zero-run coded, diff_coded_len bytes before zstd, diff_len after expansion):
//!   varint n, then n varint zero-run lengths, n varint literal-run lengths, then the
//!   literal bytes; run i is zeros then literals. The diff stream is ~90 % zeros, so the
//!   level-18/19 coder sees a fifth of the bytes (3× faster) and the columns compress better
//!   (−2 % to −4 % patch size on the corpus).
//! ctrl: varint op count n, then three columns of n varints each (columns compress far
//!   better than interleaved triples): diff_len…, extra_len…, zigzag old_delta….
//!   An op adds diff_len bytes of old (from old_pos) to diff bytes, then copies
//!   extra_len bytes. old_pos = previous op's old_pos + diff_len + old_delta, starting
//!   at 0 in each block.
//! With the transform, an op adds its diff not to old's bytes but to old's bytes with
//! every reference that lies wholly inside the op's old range replaced by the value
//! predicted for its new position (`exe::Predictor::rewrite`).
//! Old's executables (what the skip list indexes) are found in old by
//! `exe::Image::parse`: old itself if it is an x86-64 ELF or PE file; else the ELF and
//! PE members of a tar archive or the stored entries of a zip archive; else (a
//! file-system or disk image of up to 4 GiB) the ELF and PE files that start at a
//! multiple of 4 KiB, each as long as its headers say. Only the references of
//! executables not in the skip list are needed.
//! ```

use crate::hash::Hash;

pub const MAGIC: &[u8; 8] = b"UEDELTA1";
/// Version without a transform.
pub const VERSION: u16 = 1;
/// Version with the x86-64 references transform.
pub const VERSION_TRANSFORM: u16 = 2;
/// Header flag of version 2: the transform section follows the header.
pub const FLAG_X86_REFS: u16 = 1;
/// Transform kind byte: x86-64 references, as `exe.rs` finds and predicts them.
pub const TRANSFORM_X86_REFS: u8 = 1;
/// Largest decoded transform section.
pub const MAX_TRANSFORM_LEN: u32 = 64 << 20;
/// Most ops a transform section may hold, all blocks together. Apply builds the old →
/// new offset map from every op, 24 bytes each: this bounds that at 24 MiB, where the
/// section's length alone allowed 22 million ops (530 MB). The encoder writes a patch
/// without the transform past it; the 629 MB file system image of the benchmark corpus
/// needs 136,265.
pub const MAX_TRANSFORM_OPS: u64 = 1 << 20;
pub const HEADER_LEN: usize = 120;
pub const BLOCK_HEADER_LEN: usize = 32;
/// Largest output span of one block; bounds apply-side buffers (diff + extra ≤ this).
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;
/// Largest decoded control stream of one block.
pub const MAX_CTRL_LEN: u32 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub zstd_level: i32,
    pub old_size: u64,
    pub new_size: u64,
    pub old_hash: Hash,
    pub new_hash: Hash,
    pub block_size: u32,
    pub block_count: u64,
    pub memory_limit: u64,
    /// A transform section follows the header (version 2).
    pub transform: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockHeader {
    pub new_len: u32,
    pub ctrl_clen: u32,
    pub ctrl_len: u32,
    pub diff_clen: u32,
    pub diff_coded_len: u32,
    pub diff_len: u32,
    pub extra_clen: u32,
    pub extra_len: u32,
}

/// Why bytes are not a valid patch.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not an update-edge patch (bad magic)")]
    Magic,
    #[error("unsupported patch version {0}")]
    Version(u16),
    #[error("patch is truncated")]
    Truncated,
    #[error("patch field out of bounds: {0}")]
    Bounds(&'static str),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(MAGIC);
        let (version, flags) = if self.transform {
            (VERSION_TRANSFORM, FLAG_X86_REFS)
        } else {
            (VERSION, 0)
        };
        b[8..10].copy_from_slice(&version.to_le_bytes());
        b[10..12].copy_from_slice(&flags.to_le_bytes());
        b[12..16].copy_from_slice(&self.zstd_level.to_le_bytes());
        b[16..24].copy_from_slice(&self.old_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.new_size.to_le_bytes());
        b[32..64].copy_from_slice(self.old_hash.as_bytes());
        b[64..96].copy_from_slice(self.new_hash.as_bytes());
        b[96..100].copy_from_slice(&self.block_size.to_le_bytes());
        b[104..112].copy_from_slice(&self.block_count.to_le_bytes());
        b[112..120].copy_from_slice(&self.memory_limit.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Header, FormatError> {
        if b.len() < 8 || &b[0..8] != MAGIC {
            return Err(FormatError::Magic);
        }
        if b.len() < HEADER_LEN {
            return Err(FormatError::Truncated);
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        let flags = u16::from_le_bytes([b[10], b[11]]);
        let transform = match (version, flags) {
            (VERSION, 0) => false,
            (VERSION_TRANSFORM, FLAG_X86_REFS) => true,
            (VERSION | VERSION_TRANSFORM, _) => return Err(FormatError::Bounds("header flags")),
            _ => return Err(FormatError::Version(version)),
        };
        if b[100..104] != [0; 4] {
            return Err(FormatError::Bounds("reserved header bytes"));
        }
        let h = Header {
            zstd_level: u32_at(b, 12) as i32,
            old_size: u64_at(b, 16),
            new_size: u64_at(b, 24),
            old_hash: Hash::from_slice(&b[32..64]).ok_or(FormatError::Truncated)?,
            new_hash: Hash::from_slice(&b[64..96]).ok_or(FormatError::Truncated)?,
            block_size: u32_at(b, 96),
            block_count: u64_at(b, 104),
            memory_limit: u64_at(b, 112),
            transform,
        };
        if h.block_size == 0 || h.block_size > MAX_BLOCK_SIZE {
            return Err(FormatError::Bounds("block_size"));
        }
        // Every block but the last is full, so the count follows from the sizes.
        if h.block_count != h.new_size.div_ceil(u64::from(h.block_size)) {
            return Err(FormatError::Bounds("block_count"));
        }
        Ok(h)
    }
}

impl BlockHeader {
    pub fn encode(&self) -> [u8; BLOCK_HEADER_LEN] {
        let mut b = [0u8; BLOCK_HEADER_LEN];
        for (i, v) in [
            self.new_len,
            self.ctrl_clen,
            self.ctrl_len,
            self.diff_clen,
            self.diff_coded_len,
            self.diff_len,
            self.extra_clen,
            self.extra_len,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// Decodes and checks a block header against the patch's block size.
    pub fn decode(b: &[u8], block_size: u32) -> Result<BlockHeader, FormatError> {
        if b.len() < BLOCK_HEADER_LEN {
            return Err(FormatError::Truncated);
        }
        let f = |i: usize| u32_at(b, i * 4);
        let h = BlockHeader {
            new_len: f(0),
            ctrl_clen: f(1),
            ctrl_len: f(2),
            diff_clen: f(3),
            diff_coded_len: f(4),
            diff_len: f(5),
            extra_clen: f(6),
            extra_len: f(7),
        };
        if u64::from(h.diff_coded_len) > max_zero_run_coded(h.diff_len) {
            return Err(FormatError::Bounds("block diff coded length"));
        }
        if h.new_len == 0 || h.new_len > block_size {
            return Err(FormatError::Bounds("block new_len"));
        }
        if u64::from(h.diff_len) + u64::from(h.extra_len) != u64::from(h.new_len) {
            return Err(FormatError::Bounds("block stream lengths"));
        }
        if h.ctrl_len > MAX_CTRL_LEN {
            return Err(FormatError::Bounds("block ctrl_len"));
        }
        let bound = |len: u32| (len as u64) + (len as u64 >> 7) + 1024;
        if u64::from(h.ctrl_clen) > bound(h.ctrl_len)
            || u64::from(h.diff_clen) > bound(h.diff_coded_len)
            || u64::from(h.extra_clen) > bound(h.extra_len)
        {
            return Err(FormatError::Bounds("block compressed length"));
        }
        Ok(h)
    }

    pub fn payload_len(&self) -> u64 {
        u64::from(self.ctrl_clen) + u64::from(self.diff_clen) + u64::from(self.extra_clen)
    }
}

/// Largest zero-run coding of `len` bytes (alternating zero and non-zero bytes: two
/// one-byte varints and one literal per two bytes, plus the count).
pub fn max_zero_run_coded(len: u32) -> u64 {
    u64::from(len) * 3 / 2 + 16
}

/// Zero-run codes a diff stream (see the module docs).
pub fn encode_zero_runs(d: &[u8]) -> Vec<u8> {
    let (mut zeros, mut lits, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    let mut n = 0u64;
    let mut i = 0;
    while i < d.len() {
        let z = i;
        while i < d.len() && d[i] == 0 {
            i += 1;
        }
        let l = i;
        while i < d.len() && d[i] != 0 {
            i += 1;
        }
        put_varint(&mut zeros, (l - z) as u64);
        put_varint(&mut lits, (i - l) as u64);
        bytes.extend_from_slice(&d[l..i]);
        n += 1;
    }
    let mut out = Vec::with_capacity(10 + zeros.len() + lits.len() + bytes.len());
    put_varint(&mut out, n);
    out.extend_from_slice(&zeros);
    out.extend_from_slice(&lits);
    out.extend_from_slice(&bytes);
    out
}

/// A zero-run coded stream expanded piece by piece, in order (apply holds a batch's diff
/// bytes, not a block's). `new` checks the whole stream first (every length before it
/// is used), so reading cannot fail.
pub struct ZeroRuns {
    runs_left: u64,
    z_at: usize,
    l_at: usize,
    b_at: usize,
    /// What is left of the current run: zeros, then literal bytes.
    zeros: u64,
    lits: u64,
}

impl ZeroRuns {
    /// A stream that must come to exactly `len` bytes. It holds only its position:
    /// each `read` is given the same `coded`.
    pub fn new(coded: &[u8], len: usize) -> Result<ZeroRuns, FormatError> {
        let mut at = 0;
        let n = get_varint(coded, &mut at)?;
        if n > coded.len() as u64 {
            return Err(FormatError::Bounds("diff run count"));
        }
        let z_at = at;
        let mut l_at = at;
        for _ in 0..n {
            get_varint(coded, &mut l_at)?;
        }
        let mut b_at = l_at;
        for _ in 0..n {
            get_varint(coded, &mut b_at)?;
        }
        let runs = ZeroRuns {
            runs_left: n,
            z_at,
            l_at,
            b_at,
            zeros: 0,
            lits: 0,
        };
        let (mut z_at, mut l_at, mut b_at, mut total) = (z_at, l_at, b_at, 0u64);
        for _ in 0..n {
            let z = get_varint(coded, &mut z_at)?;
            let l = get_varint(coded, &mut l_at)?;
            let room = len as u64 - total;
            if z > room || l > room - z {
                return Err(FormatError::Bounds("diff runs exceed the stream"));
            }
            if l > (coded.len() - b_at) as u64 {
                return Err(FormatError::Truncated);
            }
            total += z + l;
            b_at += l as usize;
        }
        if total != len as u64 || b_at != coded.len() {
            return Err(FormatError::Bounds("diff runs do not cover the stream"));
        }
        Ok(runs)
    }

    /// Fills `out` with the stream's next `out.len()` bytes (zeros past its end, which
    /// a caller that counts never asks for). `coded` is the stream `new` checked.
    pub fn read(&mut self, coded: &[u8], out: &mut [u8]) {
        let mut at = 0;
        while at < out.len() {
            if self.zeros == 0 && self.lits == 0 {
                if self.runs_left == 0 {
                    out[at..].fill(0);
                    return;
                }
                self.runs_left -= 1;
                self.zeros = get_varint(coded, &mut self.z_at).unwrap_or(0);
                self.lits = get_varint(coded, &mut self.l_at).unwrap_or(0);
                continue;
            }
            let z = (self.zeros.min((out.len() - at) as u64)) as usize;
            out[at..at + z].fill(0);
            at += z;
            self.zeros -= z as u64;
            let l = (self.lits.min((out.len() - at) as u64)) as usize;
            out[at..at + l].copy_from_slice(&coded[self.b_at..self.b_at + l]);
            at += l;
            self.b_at += l;
            self.lits -= l as u64;
        }
    }
}

/// One control operation (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub old_pos: u64,
    pub diff_len: u64,
    pub extra_len: u64,
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn get_varint(b: &[u8], at: &mut usize) -> Result<u64, FormatError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at).ok_or(FormatError::Truncated)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(FormatError::Bounds("varint"))
}

pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Encodes a block's ops (old positions relative within the block, from 0).
pub fn encode_ctrl(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ops.len() * 6 + 10);
    put_varint(&mut out, ops.len() as u64);
    for op in ops {
        put_varint(&mut out, op.diff_len);
    }
    for op in ops {
        put_varint(&mut out, op.extra_len);
    }
    let mut cursor = 0u64;
    for op in ops {
        put_varint(&mut out, zigzag(op.old_pos.wrapping_sub(cursor) as i64));
        cursor = op.old_pos + op.diff_len;
    }
    out
}

/// Reads a control stream column by column without materialising the ops: yields
/// (diff_len, extra_len, old_delta) in order. Checks the layout up front.
pub struct CtrlReader<'a> {
    b: &'a [u8],
    pos: CtrlPos,
}

/// Where a `CtrlReader` stands in its stream: kept between reads of the ops in pieces
/// (apply reads a block's ops a batch at a time) without holding the stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtrlPos {
    left: u64,
    cols: [usize; 3],
}

impl<'a> CtrlReader<'a> {
    pub fn new(b: &'a [u8]) -> Result<CtrlReader<'a>, FormatError> {
        let mut at = 0;
        let n = get_varint(b, &mut at)?;
        if n > b.len() as u64 {
            return Err(FormatError::Bounds("ctrl op count"));
        }
        let mut cols = [at, 0, 0];
        for col in cols.iter_mut().skip(1) {
            for _ in 0..n {
                get_varint(b, &mut at)?;
            }
            *col = at;
        }
        for _ in 0..n {
            get_varint(b, &mut at)?;
        }
        if at != b.len() {
            return Err(FormatError::Bounds("ctrl stream length"));
        }
        Ok(CtrlReader {
            b,
            pos: CtrlPos { left: n, cols },
        })
    }

    /// Reading `b` on from `pos`, which a reader of the same stream (made by `new`,
    /// which checked it) returned.
    pub fn resume(b: &'a [u8], pos: CtrlPos) -> CtrlReader<'a> {
        CtrlReader { b, pos }
    }

    /// Where this reader stands, for `resume`.
    pub fn pos(&self) -> CtrlPos {
        self.pos
    }

    /// The ops not read yet (the stream's count is checked against its length, so this
    /// is at most a third of it).
    pub fn ops_left(&self) -> u64 {
        self.pos.left
    }

    pub fn next_op(&mut self) -> Result<Option<(u64, u64, i64)>, FormatError> {
        let p = &mut self.pos;
        if p.left == 0 {
            return Ok(None);
        }
        p.left -= 1;
        let d = get_varint(self.b, &mut p.cols[0])?;
        let e = get_varint(self.b, &mut p.cols[1])?;
        let o = unzigzag(get_varint(self.b, &mut p.cols[2])?);
        Ok(Some((d, e, o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header {
            zstd_level: 19,
            old_size: 10,
            new_size: 20,
            old_hash: Hash::of(b"o"),
            new_hash: Hash::of(b"n"),
            block_size: 8,
            block_count: 3,
            memory_limit: 1 << 30,
            transform: false,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = header();
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let mut bad = h.encode();
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad), Err(FormatError::Magic));
        assert_eq!(
            Header::decode(&h.encode()[..50]),
            Err(FormatError::Truncated)
        );
        let mut huge = h.clone();
        huge.block_size = MAX_BLOCK_SIZE + 1;
        assert!(Header::decode(&huge.encode()).is_err());
        let mut count = h;
        count.block_count = 1_000_000;
        assert!(Header::decode(&count.encode()).is_err());
    }

    #[test]
    fn block_header_bounds_are_enforced() {
        let b = BlockHeader {
            new_len: 8,
            ctrl_clen: 5,
            ctrl_len: 3,
            diff_clen: 9,
            diff_coded_len: 6,
            diff_len: 5,
            extra_clen: 9,
            extra_len: 3,
        };
        assert_eq!(BlockHeader::decode(&b.encode(), 8).unwrap(), b);
        let coded = BlockHeader {
            diff_coded_len: 100,
            ..b
        };
        assert!(BlockHeader::decode(&coded.encode(), 8).is_err());
        assert!(BlockHeader::decode(&b.encode(), 7).is_err());
        let lie = BlockHeader { diff_len: 6, ..b };
        assert!(BlockHeader::decode(&lie.encode(), 8).is_err());
        let ctrl = BlockHeader {
            ctrl_len: MAX_CTRL_LEN + 1,
            ..b
        };
        assert!(BlockHeader::decode(&ctrl.encode(), 8).is_err());
    }

    #[test]
    fn zero_runs_round_trip_and_reject_lies() {
        for d in [
            vec![],
            vec![0; 10],
            vec![1, 2, 3],
            vec![0, 0, 5, 0, 7, 7, 0],
            vec![9, 0],
        ] {
            let c = encode_zero_runs(&d);
            assert!(c.len() as u64 <= max_zero_run_coded(d.len() as u32));
            // Read piece by piece, in pieces of every size from 1 to 7 bytes.
            for piece in 1..8 {
                let mut runs = ZeroRuns::new(&c, d.len()).unwrap();
                let mut got = vec![0xaa; d.len()];
                for p in got.chunks_mut(piece) {
                    runs.read(&c, p);
                }
                assert_eq!(got, d, "in pieces of {piece}");
            }
            if !d.is_empty() {
                assert!(ZeroRuns::new(&c, d.len() - 1).is_err());
            }
            assert!(ZeroRuns::new(&c, d.len() + 1).is_err());
            // Every byte changed in turn: an error, or exactly `len` bytes read.
            for i in 0..c.len() {
                for v in [0, 1, 0x7f, 0x80, 0xff] {
                    let mut bad = c.clone();
                    bad[i] = v;
                    if let Ok(mut runs) = ZeroRuns::new(&bad, d.len()) {
                        let mut got = vec![0xaa; d.len()];
                        runs.read(&bad, &mut got);
                        assert_eq!(runs.zeros + runs.lits + runs.runs_left, 0);
                        assert_eq!(runs.b_at, bad.len());
                    }
                }
            }
        }
        let alternating: Vec<u8> = (0..1000).map(|i| (i % 2) as u8).collect();
        assert!(encode_zero_runs(&alternating).len() as u64 <= max_zero_run_coded(1000));
    }

    #[test]
    fn ctrl_columns_round_trip() {
        let ops = [
            Op {
                old_pos: 5,
                diff_len: 3,
                extra_len: 1,
            },
            Op {
                old_pos: 2,
                diff_len: 0,
                extra_len: 9,
            },
        ];
        let b = encode_ctrl(&ops);
        let mut r = CtrlReader::new(&b).unwrap();
        assert_eq!(r.next_op().unwrap(), Some((3, 1, 5)));
        assert_eq!(r.next_op().unwrap(), Some((0, 9, -6)));
        assert_eq!(r.next_op().unwrap(), None);
        assert!(CtrlReader::new(&b[..b.len() - 1]).is_err());
        assert!(CtrlReader::new(&[0xff, 0xff, 0xff, 0x0f]).is_err());
    }

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<u64>(), s in any::<i64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            let mut at = 0;
            prop_assert_eq!(get_varint(&out, &mut at).unwrap(), v);
            prop_assert_eq!(at, out.len());
            prop_assert_eq!(unzigzag(zigzag(s)), s);
        }
    }
}
