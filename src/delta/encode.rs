//! Diff pipeline: plan → per segment (suffix array, matching, streams) → a sink that
//! writes the native block container or a BSDIFF40 patch.

use std::io::Write;
use std::time::Instant;

use rayon::prelude::*;

use super::format::{self, BlockHeader, Header, Op};
use super::matcher::scan;
use super::plan::{plan, Segment};
use super::suffix::SuffixArray;
use super::{bsdiff40, hash_input, read_vec, DeltaError, ReadAt};

/// Patch encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchFormat {
    /// Our block container (zstd, bounded-memory streaming apply).
    Native,
    /// Classic BSDIFF40 (bzip2), applied by stock `bspatch`.
    Bsdiff40,
}

#[derive(Debug, Clone)]
pub struct DiffOptions {
    /// Peak memory the diff may use (approximately; the planner's budget).
    pub memory_limit: u64,
    /// zstd level for the streams.
    pub zstd_level: i32,
    /// Output bytes per independent block.
    pub block_size: u32,
    /// Worker threads (suffix array, matching, compression).
    pub threads: usize,
    pub format: PatchFormat,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            memory_limit: 2 << 30,
            zstd_level: 19,
            block_size: 16 << 20,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(8),
            format: PatchFormat::Native,
        }
    }
}

/// What a diff produced.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DiffReport {
    pub old_size: u64,
    pub new_size: u64,
    pub patch_size: u64,
    pub segments: usize,
    pub windowed: bool,
    pub old_blake3: String,
    pub new_blake3: String,
    pub seconds: f64,
}

/// A segment's result: absolute ops and their diff/extra bytes.
struct Streams {
    ops: Vec<Op>,
    diff: Vec<u8>,
    extra: Vec<u8>,
}

trait Sink {
    /// Takes one segment's streams; `last` when no segment follows.
    fn segment(&mut self, s: Streams, last: bool) -> Result<(), DeltaError>;
    fn finish(self: Box<Self>) -> Result<u64, DeltaError>;
}

/// Computes a patch from `old` to `new` and writes it to `out`.
pub fn diff(
    old: &dyn ReadAt,
    new: &dyn ReadAt,
    out: &mut dyn Write,
    opts: &DiffOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DiffReport, DeltaError> {
    let started = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads.max(1))
        .build()
        .map_err(|e| DeltaError::Internal(e.to_string()))?;
    let (old_hash, new_hash) = pool.join(|| hash_input(old), || hash_input(new));
    let (old_hash, new_hash) = (old_hash?, new_hash?);
    tracing::debug!(secs = started.elapsed().as_secs_f64(), "inputs hashed");
    let segments = plan(old, new, opts.memory_limit, u64::from(opts.block_size))?;
    let windowed = segments
        .first()
        .is_some_and(|s| s.regions != vec![(0, old.size())]);
    let header = Header {
        zstd_level: opts.zstd_level,
        old_size: old.size(),
        new_size: new.size(),
        old_hash,
        new_hash,
        block_size: opts.block_size,
        block_count: new.size().div_ceil(u64::from(opts.block_size)),
        memory_limit: opts.memory_limit,
    };
    let mut sink: Box<dyn Sink + '_> = match opts.format {
        PatchFormat::Native => {
            out.write_all(&header.encode())?;
            Box::new(NativeSink {
                out,
                opts,
                pool: &pool,
                written: format::HEADER_LEN as u64,
                carry: None,
            })
        }
        PatchFormat::Bsdiff40 => Box::new(bsdiff40::Writer::new(out, new.size())),
    };
    for (i, seg) in segments.iter().enumerate() {
        let streams = pool.install(|| diff_segment(old, new, seg, opts.threads))?;
        let t = Instant::now();
        sink.segment(streams, i + 1 == segments.len())?;
        tracing::debug!(secs = t.elapsed().as_secs_f64(), "segment encoded");
        progress(seg.new_end - seg.new_start);
    }
    let t = Instant::now();
    let patch_size = sink.finish()?;
    tracing::debug!(
        secs = t.elapsed().as_secs_f64(),
        total = started.elapsed().as_secs_f64(),
        "patch finished"
    );
    Ok(DiffReport {
        old_size: old.size(),
        new_size: new.size(),
        patch_size,
        segments: segments.len(),
        windowed,
        old_blake3: old_hash.to_hex(),
        new_blake3: new_hash.to_hex(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Old regions concatenated, with the map back to old offsets.
struct RegionText {
    bytes: Vec<u8>,
    /// (offset in `bytes`, offset in old, length)
    map: Vec<(u64, u64, u64)>,
}

impl RegionText {
    fn load(old: &dyn ReadAt, regions: &[(u64, u64)]) -> Result<RegionText, DeltaError> {
        let total: u64 = regions.iter().map(|r| r.1 - r.0).sum();
        let mut bytes = vec![0u8; total as usize];
        let mut map = Vec::with_capacity(regions.len());
        let mut at = 0u64;
        for &(a, b) in regions {
            old.read_at(&mut bytes[at as usize..(at + b - a) as usize], a)?;
            map.push((at, a, b - a));
            at += b - a;
        }
        Ok(RegionText { bytes, map })
    }

    /// Splits a local diff run into runs that are contiguous in old: (old_pos, len).
    fn to_old(&self, mut local: u64, mut len: u64, out: &mut Vec<(u64, u64)>) {
        let mut i = self.map.partition_point(|m| m.0 + m.2 <= local);
        while len > 0 && i < self.map.len() {
            let (cat, old_at, rlen) = self.map[i];
            let take = (cat + rlen - local).min(len);
            out.push((old_at + (local - cat), take));
            local += take;
            len -= take;
            i += 1;
        }
    }
}

fn diff_segment(
    old: &dyn ReadAt,
    new: &dyn ReadAt,
    seg: &Segment,
    threads: usize,
) -> Result<Streams, DeltaError> {
    let t = Instant::now();
    let text = RegionText::load(old, &seg.regions)?;
    let new_bytes = read_vec(new, seg.new_start, (seg.new_end - seg.new_start) as usize)?;
    tracing::debug!(secs = t.elapsed().as_secs_f64(), "inputs loaded");
    let t = Instant::now();
    let sa = SuffixArray::build(&text.bytes, threads.min(u16::MAX as usize) as u16)?;
    tracing::debug!(
        bytes = text.bytes.len(),
        secs = t.elapsed().as_secs_f64(),
        "suffix array built"
    );
    let t = Instant::now();
    // Matching is independent per span of new: one span per thread.
    let parts = threads.max(1);
    let span = new_bytes.len().div_ceil(parts).max(1);
    let local: Vec<Vec<Op>> = new_bytes
        .par_chunks(span)
        .map(|part| scan(&text.bytes, &sa, part))
        .collect();
    drop(sa);
    let mut streams = Streams {
        ops: Vec::new(),
        diff: Vec::with_capacity(new_bytes.len()),
        extra: Vec::new(),
    };
    tracing::debug!(secs = t.elapsed().as_secs_f64(), "matching done");
    let t = Instant::now();
    let mut at = 0usize;
    let mut runs = Vec::new();
    let merged = merge_small(local.into_iter().flatten(), MIN_DIFF_RUN);
    for op in merged {
        let (d, e) = (op.diff_len as usize, op.extra_len as usize);
        let old_local = &text.bytes[op.old_pos as usize..op.old_pos as usize + d];
        streams.diff.extend(
            new_bytes[at..at + d]
                .iter()
                .zip(old_local)
                .map(|(n, o)| n.wrapping_sub(*o)),
        );
        streams
            .extra
            .extend_from_slice(&new_bytes[at + d..at + d + e]);
        at += d + e;
        runs.clear();
        text.to_old(op.old_pos, op.diff_len, &mut runs);
        if runs.is_empty() {
            runs.push((0, 0));
        }
        let last = runs.len() - 1;
        for (i, &(old_pos, len)) in runs.iter().enumerate() {
            let extra_len = if i == last { op.extra_len } else { 0 };
            streams.ops.push(Op {
                old_pos,
                diff_len: len,
                extra_len,
            });
        }
    }
    debug_assert_eq!(at, new_bytes.len());
    tracing::debug!(secs = t.elapsed().as_secs_f64(), "streams built");
    Ok(streams)
}

/// Diff runs shorter than this are folded into the previous op's extra bytes (measured on
/// the ruff/uv corpus: 24 minimised total patch size (tried 0-48); 0 = bsdiff behaviour).
const MIN_DIFF_RUN: u64 = 24;

/// Folds ops whose diff run is shorter than `min_diff` into the previous op's extra
/// bytes: a control entry costs more than a few raw bytes.
fn merge_small(ops: impl Iterator<Item = Op>, min_diff: u64) -> Vec<Op> {
    let mut out: Vec<Op> = Vec::new();
    for op in ops {
        match out.last_mut() {
            Some(prev) if op.diff_len < min_diff => prev.extra_len += op.diff_len + op.extra_len,
            _ => out.push(op),
        }
    }
    out
}

/// Writes the native container: cuts streams into blocks at fixed output offsets and
/// compresses the blocks in parallel.
struct NativeSink<'a> {
    out: &'a mut dyn Write,
    opts: &'a DiffOptions,
    pool: &'a rayon::ThreadPool,
    written: u64,
    /// Streams of a partial last block carried to the next segment.
    carry: Option<Streams>,
}

struct RawBlock {
    ops: Vec<Op>,
    diff: Vec<u8>,
    extra: Vec<u8>,
    new_len: u64,
}

fn empty_block() -> RawBlock {
    RawBlock {
        ops: Vec::new(),
        diff: Vec::new(),
        extra: Vec::new(),
        new_len: 0,
    }
}

/// Cuts streams into blocks of exactly `block` output bytes (the last may be short and
/// is returned as a carry unless `last`). Ops that straddle a boundary are split.
fn cut_blocks(s: Streams, block: u64, last: bool) -> (Vec<RawBlock>, Option<Streams>) {
    let mut blocks = Vec::new();
    let mut cur = empty_block();
    let (mut d_at, mut e_at) = (0usize, 0usize);
    for mut op in s.ops {
        while op.diff_len + op.extra_len > 0 {
            let room = block - cur.new_len;
            let td = op.diff_len.min(room);
            let te = if td == op.diff_len {
                op.extra_len.min(room - td)
            } else {
                0
            };
            cur.ops.push(Op {
                old_pos: op.old_pos,
                diff_len: td,
                extra_len: te,
            });
            cur.diff
                .extend_from_slice(&s.diff[d_at..d_at + td as usize]);
            cur.extra
                .extend_from_slice(&s.extra[e_at..e_at + te as usize]);
            d_at += td as usize;
            e_at += te as usize;
            cur.new_len += td + te;
            op = Op {
                old_pos: op.old_pos + td,
                diff_len: op.diff_len - td,
                extra_len: op.extra_len - te,
            };
            if cur.new_len == block {
                blocks.push(std::mem::replace(&mut cur, empty_block()));
            }
        }
    }
    if cur.new_len > 0 {
        if last {
            blocks.push(cur);
        } else {
            return (
                blocks,
                Some(Streams {
                    ops: cur.ops,
                    diff: cur.diff,
                    extra: cur.extra,
                }),
            );
        }
    }
    (blocks, None)
}

fn compress(data: &[u8], level: i32) -> Result<Vec<u8>, DeltaError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    Ok(zstd::bulk::compress(data, level)?)
}

impl NativeSink<'_> {
    fn write_blocks(&mut self, blocks: Vec<RawBlock>) -> Result<(), DeltaError> {
        let level = self.opts.zstd_level;
        let encoded: Vec<Result<Vec<u8>, DeltaError>> = self.pool.install(|| {
            blocks
                .par_iter()
                .map(|b| {
                    let ctrl = format::encode_ctrl(&b.ops);
                    let coded_diff = format::encode_zero_runs(&b.diff);
                    let (c, (d, e)) = rayon::join(
                        || compress(&ctrl, level),
                        || {
                            rayon::join(
                                || compress(&coded_diff, level),
                                || compress(&b.extra, level),
                            )
                        },
                    );
                    let (c, d, e) = (c?, d?, e?);
                    let len32 = |n: usize| {
                        u32::try_from(n)
                            .map_err(|_| DeltaError::Internal("block stream over 4 GiB".into()))
                    };
                    let head = BlockHeader {
                        new_len: len32(b.new_len as usize)?,
                        ctrl_clen: len32(c.len())?,
                        ctrl_len: len32(ctrl.len())?,
                        diff_clen: len32(d.len())?,
                        diff_coded_len: len32(coded_diff.len())?,
                        diff_len: len32(b.diff.len())?,
                        extra_clen: len32(e.len())?,
                        extra_len: len32(b.extra.len())?,
                    };
                    if head.ctrl_len > format::MAX_CTRL_LEN {
                        return Err(DeltaError::Internal(
                            "control stream exceeds the format bound".into(),
                        ));
                    }
                    let mut out =
                        Vec::with_capacity(format::BLOCK_HEADER_LEN + c.len() + d.len() + e.len());
                    out.extend_from_slice(&head.encode());
                    out.extend_from_slice(&c);
                    out.extend_from_slice(&d);
                    out.extend_from_slice(&e);
                    Ok(out)
                })
                .collect()
        });
        for block in encoded {
            let block = block?;
            self.out.write_all(&block)?;
            self.written += block.len() as u64;
        }
        Ok(())
    }
}

fn join_streams(a: Option<Streams>, b: Streams) -> Streams {
    match a {
        None => b,
        Some(mut a) => {
            a.ops.extend(b.ops);
            a.diff.extend(b.diff);
            a.extra.extend(b.extra);
            a
        }
    }
}

impl Sink for NativeSink<'_> {
    fn segment(&mut self, s: Streams, last: bool) -> Result<(), DeltaError> {
        let s = join_streams(self.carry.take(), s);
        let (blocks, carry) = cut_blocks(s, u64::from(self.opts.block_size), last);
        self.carry = carry;
        self.write_blocks(blocks)
    }

    fn finish(mut self: Box<Self>) -> Result<u64, DeltaError> {
        if let Some(s) = self.carry.take() {
            let (blocks, _) = cut_blocks(s, u64::from(self.opts.block_size), true);
            self.write_blocks(blocks)?;
        }
        self.out.flush()?;
        Ok(self.written)
    }
}

impl Sink for bsdiff40::Writer<'_> {
    fn segment(&mut self, s: Streams, _last: bool) -> Result<(), DeltaError> {
        self.add(&s.ops, &s.diff, &s.extra)
    }

    fn finish(self: Box<Self>) -> Result<u64, DeltaError> {
        (*self).finish()
    }
}
