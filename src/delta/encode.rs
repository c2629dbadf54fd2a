//! Diff pipeline: plan → per segment a suffix array → per output block (one parallel
//! task each, so one block's compression overlaps the next block's matching) matching,
//! streams and, for the native container, compression → a sink that writes the blocks in
//! order (native container or BSDIFF40).

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use super::exe::{self, OffsetMap, Predictor};
use super::format::{self, BlockHeader, Header, Op};
use super::matcher::scan;
use super::plan::{plan, Segment};
use super::suffix::SuffixArray;
use super::{bsdiff40, hash_input, read_vec, DeltaError, ReadAt};

/// blake3 of bytes in memory, on all the pool's threads.
fn hash_bytes(b: &[u8]) -> crate::hash::Hash {
    let mut h = blake3::Hasher::new();
    h.update_rayon(b);
    h.finalize().into()
}

/// Patch encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchFormat {
    /// Our block container (zstd, bounded-memory streaming apply).
    Native,
    /// Classic BSDIFF40 (bzip2), applied by stock `bspatch`.
    Bsdiff40,
}

/// zstd level of the streams: 18 codes the corpus streams 10 % faster than 19 for
/// 0.03 % more bytes; 17 and below lose 5 % (they drop btultra2's second pass). Level 18
/// runs with parameters tuned for the streams (see `tune`).
pub const DEFAULT_LEVEL: i32 = 18;

/// Coder parameters for the default level. zstd's own level 18 sizes its match finder
/// for multi-MiB inputs; a block's streams are a few hundred KiB each, and tables that
/// fit the caches code them a third faster: measured in-process on the corpus streams
/// (median of 7, interleaved), btultra with 2^18 chain/hash entries, search log 5 and
/// target length 48 took 0.69 s against 1.06 s (ruff) and 0.77 against 1.12 s (uv) for
/// 0.2 % and 0.08 % more bytes. (btultra2 at these tables: +20 % time, −0.05 % bytes;
/// 2^17 tables: −7 % time, +0.2 % bytes; btopt: 1 % more bytes.)
fn tune(cctx: &mut zstd::bulk::Compressor<'static>, level: i32) -> std::io::Result<()> {
    use zstd::zstd_safe::{CParameter, Strategy};
    if level != DEFAULT_LEVEL {
        return Ok(());
    }
    for p in [
        CParameter::Strategy(Strategy::ZSTD_btultra),
        CParameter::WindowLog(22),
        CParameter::ChainLog(18),
        CParameter::HashLog(18),
        CParameter::SearchLog(5),
        CParameter::MinMatch(3),
        CParameter::TargetLength(48),
    ] {
        cctx.set_parameter(p)?;
    }
    Ok(())
}

/// Output bytes per block: smaller blocks lose cross-block matches (against 16 MiB:
/// 8 MiB +0.4 %, 4 MiB +0.8 % patch size on the corpus) but let compression of one block
/// overlap the matching of the next (ruff pair, median of 5 in one run: 8 MiB 2.50 s,
/// 4 MiB 2.30 s, 2 MiB 2.25 s for another +0.7 %).
pub const DEFAULT_BLOCK_SIZE: u32 = 4 << 20;

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
    /// zstd level of the full-payload yardstick (`DiffReport::zstd_full_size`).
    pub yardstick_level: i32,
    /// Predict x86-64 references when old and new are ELF or PE executables (native
    /// format, inputs diffed in one piece); see `exe.rs`.
    pub exe_transform: bool,
}

impl Default for DiffOptions {
    fn default() -> Self {
        DiffOptions {
            memory_limit: 2 << 30,
            zstd_level: DEFAULT_LEVEL,
            block_size: DEFAULT_BLOCK_SIZE,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(8),
            format: PatchFormat::Native,
            yardstick_level: super::YARDSTICK_LEVEL,
            exe_transform: true,
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
    /// zstd size of all of new at `DiffOptions::yardstick_level`, for the worth-it rule.
    pub zstd_full_size: u64,
    pub seconds: f64,
    /// The transform used, if any ("x86-64 refs"), with its figures.
    pub transform: Option<TransformReport>,
}

/// What the executable transform did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransformReport {
    pub kind: &'static str,
    /// References found in old.
    pub refs: u64,
    /// References copied by an op and predicted, and of those, predicted right: in
    /// code, and in tables (relocations, unwind and exception tables).
    pub predicted: u64,
    pub predicted_right: u64,
    pub table_predicted: u64,
    pub table_predicted_right: u64,
    /// Spans of the old→new offset map, and the transform section's size in the patch.
    pub map_spans: u64,
    /// Old's executables (1, or a tar's members), and those left unpredicted because
    /// predicting them would get fewer references right than old's bytes.
    pub executables: u64,
    pub executables_skipped: u64,
    pub section_bytes: u64,
}

/// One block's streams: absolute ops and their diff/extra bytes.
struct Streams {
    ops: Vec<Op>,
    diff: Vec<u8>,
    extra: Vec<u8>,
    new_len: u64,
    /// Code references predicted and predicted right, then the same for tables
    /// (transform only).
    predicted: [usize; 4],
}

/// What a block task hands to the sink.
enum BlockOut {
    /// The streams as they are (BSDIFF40 codes the whole patch at the end).
    Raw(Streams),
    /// A native block, header and compressed streams.
    Encoded(Vec<u8>),
}

/// Turns a block's streams into what the sink takes; runs on the worker threads.
fn prepare(s: Streams, opts: &DiffOptions) -> Result<BlockOut, DeltaError> {
    match opts.format {
        PatchFormat::Native => {
            encode_block(&s, opts.zstd_level, true).map(|(b, _)| BlockOut::Encoded(b))
        }
        PatchFormat::Bsdiff40 => Ok(BlockOut::Raw(s)),
    }
}

trait Sink {
    /// Called once before the first block, with the transform section if there is one.
    fn begin(&mut self, _transform: Option<&[u8]>) -> Result<(), DeltaError> {
        Ok(())
    }
    /// Takes the blocks in order.
    fn block(&mut self, b: BlockOut) -> Result<(), DeltaError>;
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
    let segments = plan(old, new, opts.memory_limit, u64::from(opts.block_size))?;
    let windowed = segments
        .first()
        .is_some_and(|s| s.regions != vec![(0, old.size())]);
    // In one piece, both inputs are read once and hashed in memory; windowed, they are
    // hashed in a streaming pass and each segment reads what it needs.
    let mut loaded = None;
    let mut zstd_full_size = None;
    let mut transform = None;
    let (old_hash, new_hash) = if segments.len() == 1 && !windowed {
        let (o, n) = pool.join(
            || read_vec(old, 0, old.size() as usize),
            || read_vec(new, 0, new.size() as usize),
        );
        let (o, n) = (o?, n?);
        let (oh, nh) = pool.install(|| rayon::join(|| hash_bytes(&o), || hash_bytes(&n)));
        loaded = Some((o, n));
        (oh, nh)
    } else {
        let (oh, nh) = pool.join(|| hash_input(old), || hash_input(new));
        (oh?, nh?)
    };
    tracing::debug!(secs = started.elapsed().as_secs_f64(), "inputs hashed");
    let header = Header {
        transform: false,
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
        PatchFormat::Native => Box::new(NativeSink {
            out,
            header: Some(header),
            written: 0,
        }),
        PatchFormat::Bsdiff40 => Box::new(bsdiff40::Writer::new(out, new.size())),
    };
    // Windowed inputs holding executables (a file-system image): the transform with
    // every segment matched first, in a plan that leaves room for the references.
    let windowed_exe = if windowed && opts.exe_transform && opts.format == PatchFormat::Native {
        pool.install(|| ExeInputs::find(old, new))?
    } else {
        None
    };
    let mut segment_count = segments.len();
    let mut in_windows = false;
    if let Some(exe) = windowed_exe {
        let limit = opts.memory_limit.saturating_sub(exe.bytes());
        let exe_segments = plan(old, new, limit, u64::from(opts.block_size))?;
        match pool.install(|| diff_windowed_transform(old, new, &exe_segments, exe, opts, progress))
        {
            Ok((blocks, section, report)) => {
                segment_count = exe_segments.len();
                sink.begin(Some(&section))?;
                for b in blocks {
                    sink.block(b)?;
                }
                transform = Some(report);
                progress(new.size() - new.size() / 2);
                in_windows = true;
            }
            Err(DeltaError::TransformBound(ops)) => {
                tracing::info!(
                    ops,
                    "the transform would be past the format's bounds: diffing without it"
                );
            }
            Err(e) => return Err(e),
        }
    }
    for seg in segments.iter().filter(|_| !in_windows) {
        if (seg.new_end - seg.new_start) % u64::from(opts.block_size) != 0
            && seg.new_end != new.size()
        {
            return Err(DeltaError::Internal("segment not aligned to blocks".into()));
        }
        let (blocks, full, section) =
            pool.install(|| diff_segment(old, new, seg, opts, loaded.take()))?;
        zstd_full_size = zstd_full_size.or(full);
        if let Some((bytes, report)) = section {
            sink.begin(Some(&bytes))?;
            transform = Some(report);
        } else {
            sink.begin(None)?;
        }
        for b in blocks {
            sink.block(b)?;
        }
        progress(seg.new_end - seg.new_start);
    }
    let t = Instant::now();
    let patch_size = sink.finish()?;
    let zstd_full_size = match zstd_full_size {
        Some(n) => n,
        // Windowed: new was never in memory whole; code it in a streaming pass.
        None => super::zstd_full_size(new, opts.yardstick_level)?,
    };
    tracing::debug!(
        secs = t.elapsed().as_secs_f64(),
        total = started.elapsed().as_secs_f64(),
        "patch finished"
    );
    Ok(DiffReport {
        old_size: old.size(),
        new_size: new.size(),
        patch_size,
        segments: segment_count,
        windowed,
        old_blake3: old_hash.to_hex(),
        new_blake3: new_hash.to_hex(),
        zstd_full_size,
        seconds: started.elapsed().as_secs_f64(),
        transform,
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
    opts: &DiffOptions,
    loaded: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<SegmentOut, DeltaError> {
    let t = Instant::now();
    let whole = loaded.is_some();
    // With all of new in memory, the worth-it yardstick is coded beside the suffix array.
    let yardstick = loaded.as_ref().map(|_| opts.yardstick_level);
    let (text, new_bytes) = match loaded {
        // All of old and new, already read.
        Some((bytes, new_bytes)) => {
            let len = bytes.len() as u64;
            let map = vec![(0, 0, len)];
            (RegionText { bytes, map }, new_bytes)
        }
        None => (
            RegionText::load(old, &seg.regions)?,
            read_vec(new, seg.new_start, (seg.new_end - seg.new_start) as usize)?,
        ),
    };
    tracing::debug!(secs = t.elapsed().as_secs_f64(), "inputs loaded");
    let threads = opts.threads.min(u16::MAX as usize) as u16;
    if whole && opts.exe_transform && opts.format == PatchFormat::Native {
        if let Some(exe) = ExeInputs::find(&text.bytes, &new_bytes)? {
            let t = Instant::now();
            let (old_proj, new_proj) = rayon::join(
                || exe::project(&text.bytes, &exe.old, &exe.refs),
                || exe::project(&new_bytes, &exe.new, &exe.new_refs),
            );
            let (old_proj, new_proj) = (old_proj?, new_proj?);
            let (sa, full) = SuffixArray::build_beside(&old_proj, threads, || {
                yardstick.map(|level| super::zstd_size_of(&new_bytes, level))
            });
            let (sa, full) = (sa?, full.transpose()?);
            tracing::debug!(
                bytes = old_proj.len(),
                secs = t.elapsed().as_secs_f64(),
                "suffix array of old's projection built"
            );
            let proj = (old_proj.as_slice(), new_proj.as_slice());
            match diff_with_transform(&text, &sa, proj, &new_bytes, exe, opts, full) {
                Err(DeltaError::TransformBound(ops)) => {
                    tracing::info!(
                        ops,
                        "the transform would be past the format's bounds: diffing without it"
                    );
                }
                done => return done,
            }
        }
    }
    let t = Instant::now();
    let (sa, full) = SuffixArray::build_beside(&text.bytes, threads, || {
        yardstick.map(|level| super::zstd_size_of(&new_bytes, level))
    });
    let (sa, full) = (sa?, full.transpose()?);
    tracing::debug!(
        bytes = text.bytes.len(),
        secs = t.elapsed().as_secs_f64(),
        "suffix array built"
    );
    let t = Instant::now();
    // Matching runs in small spans of new (independent of each other), taken in order by
    // whichever thread is free; the thread that finishes a block's last span turns the
    // block into streams and encodes it for the sink, while the others go on matching
    // the next block. So compression overlaps matching instead of trailing it.
    let block_size = opts.block_size as usize;
    let span = MATCH_SPAN.min(block_size);
    let spans_per_block = block_size.div_ceil(span);
    let blocks: Vec<&[u8]> = new_bytes.chunks(block_size).collect();
    let found: Vec<OnceLock<Vec<Op>>> = (0..new_bytes.len().div_ceil(span))
        .map(|_| OnceLock::new())
        .collect();
    let pending: Vec<AtomicUsize> = blocks
        .iter()
        .map(|b| AtomicUsize::new(b.len().div_ceil(span)))
        .collect();
    let out: Vec<OnceLock<Result<BlockOut, DeltaError>>> =
        blocks.iter().map(|_| OnceLock::new()).collect();
    rayon::scope_fifo(|scope| {
        for (i, part) in new_bytes.chunks(span).enumerate() {
            let (text, sa, found, pending, out, blocks) =
                (&text, &sa, &found, &pending, &out, &blocks);
            scope.spawn_fifo(move |_| {
                let _ = found[i].set(scan(&text.bytes, sa, part));
                let b = i / spans_per_block;
                if pending[b].fetch_sub(1, Ordering::AcqRel) != 1 {
                    return;
                }
                let first = b * spans_per_block;
                let last = (first + spans_per_block).min(found.len());
                let ops = found[first..last]
                    .iter()
                    .flat_map(|f| f.get().into_iter().flatten().copied());
                let ops = merge_small(ops, MIN_DIFF_RUN);
                let streams = block_streams(OldBytes::Text(text), blocks[b], &ops, None);
                let _ = out[b].set(streams.and_then(|s| prepare(s, opts)));
                tracing::trace!(block = b, secs = t.elapsed().as_secs_f64(), "block done");
            });
        }
    });
    tracing::debug!(secs = t.elapsed().as_secs_f64(), "blocks matched and coded");
    let blocks = out
        .into_iter()
        .map(|o| {
            o.into_inner()
                .unwrap_or_else(|| Err(DeltaError::Internal("block not produced".into())))
        })
        .collect::<Result<_, _>>()?;
    Ok((blocks, full, None))
}

/// A segment's blocks, the worth-it yardstick if it was coded, and the transform
/// section with its report if the segment used one.
type SegmentOut = (
    Vec<BlockOut>,
    Option<u64>,
    Option<(Vec<u8>, TransformReport)>,
);

/// Old's and new's executables and their references, when both are (or hold, as tar
/// members) x86-64 executables.
struct ExeInputs {
    old: exe::Image,
    new: exe::Image,
    refs: exe::Refs,
    /// New's references, found the same way (for matching on projections only).
    new_refs: exe::Refs,
}

impl ExeInputs {
    fn find<O: ReadAt + ?Sized, N: ReadAt + ?Sized>(
        old: &O,
        new: &N,
    ) -> Result<Option<ExeInputs>, DeltaError> {
        let (Some((o, ot)), Some((n, nt))) = (
            exe::Image::parse_with_tables(old),
            exe::Image::parse_with_tables(new),
        ) else {
            return Ok(None);
        };
        let t = Instant::now();
        let (refs, new_refs) = rayon::join(
            || exe::find_refs(old, &o, &ot),
            || exe::find_refs(new, &n, &nt),
        );
        let (refs, new_refs) = (refs?, new_refs?);
        tracing::debug!(
            refs = refs.fields.len(),
            secs = t.elapsed().as_secs_f64(),
            "references found"
        );
        Ok(Some(ExeInputs {
            old: o,
            new: n,
            refs,
            new_refs,
        }))
    }

    /// Memory the windowed transform holds besides a segment's: both sides' references
    /// (5 bytes each) and labels (4), and the largest executable read whole for labels.
    fn bytes(&self) -> u64 {
        let refs = (self.refs.fields.len() + self.new_refs.fields.len()) as u64;
        let largest = self
            .old
            .parts
            .iter()
            .chain(&self.new.parts)
            .map(|p| p.end - p.start)
            .max();
        9 * refs + 2 * largest.unwrap_or(0)
    }
}

/// The transform path in one piece: all of new matched first against old's projection
/// (the offset map needs every op), then each block's streams coded.
fn diff_with_transform(
    text: &RegionText,
    sa: &SuffixArray,
    (old_proj, new_proj): (&[u8], &[u8]),
    new_bytes: &[u8],
    exe: ExeInputs,
    opts: &DiffOptions,
    full: Option<u64>,
) -> Result<SegmentOut, DeltaError> {
    let t = Instant::now();
    let block_ops = match_blocks(old_proj, sa, new_proj, opts.block_size as usize);
    tracing::debug!(secs = t.elapsed().as_secs_f64(), "new matched");
    let (out, section, report) = code_with_transform(
        OldBytes::Text(text),
        NewBytes::Mem(new_bytes),
        block_ops,
        exe,
        opts,
    )?;
    Ok((out, full, Some((section, report))))
}

/// Every block's ops (old positions local to `old`), from matching `new` against `old`
/// in spans, in parallel.
fn match_blocks(old: &[u8], sa: &SuffixArray, new: &[u8], block_size: usize) -> Vec<Vec<Op>> {
    use rayon::prelude::*;
    let span = MATCH_SPAN.min(block_size);
    let spans_per_block = block_size.div_ceil(span);
    let found: Vec<Vec<Op>> = new
        .par_chunks(span)
        .map(|part| scan(old, sa, part))
        .collect();
    found
        .chunks(spans_per_block)
        .map(|f| merge_small(f.iter().flatten().copied(), MIN_DIFF_RUN))
        .collect()
}

/// The transform path for inputs diffed in windows (a file-system image holding
/// executables): each segment's old regions and new span are matched as projections
/// (references replaced by labels of what they point to), giving every block's ops in
/// old's offsets; then, with all ops known, blocks are coded as in one piece, reading
/// old's bytes by offset. Memory: the segment's as planned, plus the references and
/// their labels (`ExeInputs::bytes`).
fn diff_windowed_transform(
    old: &dyn ReadAt,
    new: &dyn ReadAt,
    segments: &[Segment],
    exe: ExeInputs,
    opts: &DiffOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(Vec<BlockOut>, Vec<u8>, TransformReport), DeltaError> {
    let t = Instant::now();
    let (old_labels, new_labels) = rayon::join(
        || exe::labels(old, &exe.old, &exe.refs),
        || exe::labels(new, &exe.new, &exe.new_refs),
    );
    let (old_labels, new_labels) = (old_labels?, new_labels?);
    tracing::debug!(secs = t.elapsed().as_secs_f64(), "labels found");
    let threads = opts.threads.min(u16::MAX as usize) as u16;
    let mut block_ops = Vec::new();
    let mut runs = Vec::new();
    for seg in segments {
        let t = Instant::now();
        let mut text = RegionText::load(old, &seg.regions)?;
        for &(cat, old_at, len) in &text.map {
            let r = &mut text.bytes[cat as usize..(cat + len) as usize];
            exe::project_into(r, old_at, &exe.refs, &old_labels);
        }
        let mut new_proj = read_vec(new, seg.new_start, (seg.new_end - seg.new_start) as usize)?;
        exe::project_into(&mut new_proj, seg.new_start, &exe.new_refs, &new_labels);
        let sa = SuffixArray::build(&text.bytes, threads)?;
        for ops in match_blocks(&text.bytes, &sa, &new_proj, opts.block_size as usize) {
            // Ops in old's offsets, split where the segment's regions join.
            let mut abs = Vec::with_capacity(ops.len());
            for op in ops {
                runs.clear();
                text.to_old(op.old_pos, op.diff_len, &mut runs);
                if runs.is_empty() {
                    runs.push((0, 0));
                }
                let last = runs.len() - 1;
                for (i, &(old_pos, diff_len)) in runs.iter().enumerate() {
                    let extra_len = if i == last { op.extra_len } else { 0 };
                    abs.push(Op {
                        old_pos,
                        diff_len,
                        extra_len,
                    });
                }
            }
            block_ops.push(abs);
        }
        tracing::debug!(
            secs = t.elapsed().as_secs_f64(),
            old = text.bytes.len(),
            "segment matched on projections"
        );
        progress((seg.new_end - seg.new_start) / 2);
    }
    drop((old_labels, new_labels));
    code_with_transform(
        OldBytes::File(old),
        NewBytes::File(new),
        block_ops,
        exe,
        opts,
    )
}

/// Where a block's old bytes come from: all of old in memory, or old itself (ops then
/// hold old's offsets).
#[derive(Clone, Copy)]
enum OldBytes<'a> {
    Text(&'a RegionText),
    File(&'a dyn ReadAt),
}

#[derive(Clone, Copy)]
enum NewBytes<'a> {
    Mem(&'a [u8]),
    File(&'a dyn ReadAt),
}

impl NewBytes<'_> {
    fn block(&self, b: usize, block_size: usize) -> Result<std::borrow::Cow<'_, [u8]>, DeltaError> {
        let start = b * block_size;
        Ok(match *self {
            NewBytes::Mem(m) => m[start..(start + block_size).min(m.len())].into(),
            NewBytes::File(f) => {
                let len = (f.size() - start as u64).min(block_size as u64) as usize;
                read_vec(f, start as u64, len)?.into()
            }
        })
    }
}

/// With every block's ops known: the offset map, the choice per executable, then each
/// block's streams with predicted references, coded in parallel. Returns the blocks,
/// the transform section and its report.
fn code_with_transform(
    old: OldBytes<'_>,
    new: NewBytes<'_>,
    block_ops: Vec<Vec<Op>>,
    exe: ExeInputs,
    opts: &DiffOptions,
) -> Result<(Vec<BlockOut>, Vec<u8>, TransformReport), DeltaError> {
    use rayon::prelude::*;
    let total = block_ops.iter().map(|ops| ops.len() as u64).sum::<u64>();
    if total > format::MAX_TRANSFORM_OPS {
        return Err(DeltaError::TransformBound(total));
    }
    let t = Instant::now();
    let block_size = opts.block_size as usize;
    let mut copies = Vec::new();
    let mut at = 0u64;
    for op in block_ops.iter().flatten() {
        copies.push((op.old_pos, at, op.diff_len));
        at += op.diff_len + op.extra_len;
    }
    let map = OffsetMap::from_copies(copies, exe::MAP_GAP);
    let mut predictor = Predictor::new(exe.old, exe.refs, exe.new, map, Vec::new());
    drop(exe.new_refs);
    // The choice per executable: predict its references only if that gets more of
    // them right than old's own bytes would (an unchanged executable gains nothing, and
    // leaving it out spares apply finding its references).
    let parts = predictor.old.parts.len();
    let gains = block_ops
        .par_iter()
        .enumerate()
        .map(|(b, ops)| -> Result<Vec<i64>, DeltaError> {
            let mut g = vec![0i64; parts];
            let block = new.block(b, block_size)?;
            let mut base = Vec::new();
            let mut at = 0usize;
            for op in ops {
                let d = op.diff_len as usize;
                let old_op = old.bytes(op.old_pos, d, &mut base)?;
                let new_at = (b * block_size + at) as u64;
                predictor.gains(
                    old_op,
                    &block[at..at + d],
                    (op.old_pos, op.diff_len, new_at),
                    &mut g,
                );
                at += d + op.extra_len as usize;
            }
            Ok(g)
        })
        .try_reduce(
            || vec![0i64; parts],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                Ok(a)
            },
        )?;
    predictor.skip = (0..parts).filter(|&i| gains[i] <= 0).collect();
    // New's executables that no predicted reference lands in are left out of the patch.
    let mut keep = vec![false; predictor.new.parts.len()];
    let mut at = 0u64;
    for op in block_ops.iter().flatten() {
        let (lo, hi) = (op.old_pos, op.old_pos + op.diff_len);
        let first = predictor.old.parts.partition_point(|p| p.end <= lo);
        let predicted = predictor.old.parts[first..]
            .iter()
            .take_while(|p| p.start < hi)
            .enumerate()
            .any(|(k, _)| predictor.skip.binary_search(&(first + k)).is_err());
        if predicted {
            let n = &predictor.new.parts;
            let i = n.partition_point(|p| p.end <= at);
            for (k, p) in n[i..].iter().enumerate() {
                if p.start >= at + op.diff_len {
                    break;
                }
                keep[i + k] = true;
            }
        }
        at += op.diff_len + op.extra_len;
    }
    let mut k = keep.iter();
    predictor
        .new
        .parts
        .retain(|_| k.next().copied().unwrap_or(false));
    let sections = predictor
        .new
        .parts
        .iter()
        .map(|p| p.sections.len())
        .sum::<usize>();
    if sections > exe::MAX_IMAGE_SECTIONS {
        return Err(DeltaError::TransformBound(total));
    }
    tracing::debug!(
        secs = t.elapsed().as_secs_f64(),
        spans = predictor.map.spans.len(),
        "offset map built, executables chosen"
    );
    let t = Instant::now();
    let stats: [AtomicUsize; 4] = Default::default();
    let out = block_ops
        .par_iter()
        .enumerate()
        .map(|(b, ops)| {
            let block = new.block(b, block_size)?;
            let s = block_streams(
                old,
                &block,
                ops,
                Some((&predictor, (b * block_size) as u64)),
            )?;
            for (sum, n) in stats.iter().zip(s.predicted) {
                sum.fetch_add(n, Ordering::Relaxed);
            }
            // The control stream goes to the transform section (apply needs every op
            // before the first block), the rest into the block.
            encode_block(&s, opts.zstd_level, false)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (out, ctrls): (Vec<BlockOut>, Vec<Vec<u8>>) = out
        .into_iter()
        .map(|(b, c)| (BlockOut::Encoded(b), c))
        .unzip();
    tracing::debug!(
        secs = t.elapsed().as_secs_f64(),
        "blocks coded with the transform"
    );
    let section = transform_section(&predictor.new, &predictor.skip, &ctrls);
    if section.len() > format::MAX_TRANSFORM_LEN as usize {
        return Err(DeltaError::Internal(
            "transform section exceeds the format bound".into(),
        ));
    }
    let coded = compress(&section, opts.zstd_level)?;
    let mut bytes = Vec::with_capacity(8 + coded.len());
    bytes.extend_from_slice(&(coded.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&(section.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&coded);
    let report = TransformReport {
        kind: "x86-64 refs",
        refs: predictor.refs.len() as u64,
        predicted: stats[0].load(Ordering::Relaxed) as u64,
        predicted_right: stats[1].load(Ordering::Relaxed) as u64,
        table_predicted: stats[2].load(Ordering::Relaxed) as u64,
        table_predicted_right: stats[3].load(Ordering::Relaxed) as u64,
        map_spans: predictor.map.spans.len() as u64,
        executables: parts as u64,
        executables_skipped: predictor.skip.len() as u64,
        section_bytes: bytes.len() as u64,
    };
    Ok((out, bytes, report))
}

impl OldBytes<'_> {
    /// Old's `len` bytes at `pos`: borrowed from memory, or read into `buf`.
    fn bytes<'b>(
        &'b self,
        pos: u64,
        len: usize,
        buf: &'b mut Vec<u8>,
    ) -> Result<&'b [u8], DeltaError> {
        match *self {
            OldBytes::Text(t) => Ok(&t.bytes[pos as usize..pos as usize + len]),
            OldBytes::File(f) => {
                buf.clear();
                buf.resize(len, 0);
                f.read_at(buf, pos)?;
                Ok(buf)
            }
        }
    }
}

/// New bytes matched per task: small enough to balance the threads, large enough that
/// the fresh alignment at each span's start costs nothing measurable.
const MATCH_SPAN: usize = 2 << 20;

/// A block's streams from its ops (old positions local to `text`, or old's offsets when
/// old is read by offset). With a predictor (and the block's offset in new), ops add
/// their diffs to old with references predicted; old is then all of old.
fn block_streams(
    old: OldBytes<'_>,
    block: &[u8],
    ops: &[Op],
    predictor: Option<(&Predictor, u64)>,
) -> Result<Streams, DeltaError> {
    let mut streams = Streams {
        ops: Vec::new(),
        diff: Vec::with_capacity(block.len()),
        extra: Vec::new(),
        new_len: block.len() as u64,
        predicted: [0; 4],
    };
    let mut at = 0usize;
    let mut runs = Vec::new();
    let mut base = Vec::new();
    let mut read = Vec::new();
    for &op in ops {
        let (d, e) = (op.diff_len as usize, op.extra_len as usize);
        let mut old_local = old.bytes(op.old_pos, d, &mut read)?;
        if let Some((p, block_at)) = predictor {
            base.clear();
            base.extend_from_slice(old_local);
            let new_at = block_at + at as u64;
            let n = p
                .rewrite(
                    old_local,
                    &mut base,
                    op.old_pos,
                    op.old_pos,
                    op.diff_len,
                    new_at,
                    &mut |_| Err(std::io::Error::other("field outside the op")),
                    Some(&block[at..at + d]),
                )
                .unwrap_or_default();
            for (sum, n) in streams.predicted.iter_mut().zip(n) {
                *sum += n;
            }
            old_local = &base;
        }
        streams.diff.extend(
            block[at..at + d]
                .iter()
                .zip(old_local)
                .map(|(n, o)| n.wrapping_sub(*o)),
        );
        streams.extra.extend_from_slice(&block[at + d..at + d + e]);
        at += d + e;
        let OldBytes::Text(text) = old else {
            streams.ops.push(op);
            continue;
        };
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
    debug_assert_eq!(at, block.len());
    Ok(streams)
}

/// A transform section, decoded (see `format`): new's executables, old's left
/// unpredicted, and every block's control stream.
pub fn transform_section(new: &exe::Image, skip: &[usize], ctrls: &[Vec<u8>]) -> Vec<u8> {
    let mut section = vec![format::TRANSFORM_X86_REFS];
    new.encode(&mut section);
    format::put_varint(&mut section, skip.len() as u64);
    for &i in skip {
        format::put_varint(&mut section, i as u64);
    }
    format::put_varint(&mut section, ctrls.len() as u64);
    for c in ctrls {
        format::put_varint(&mut section, c.len() as u64);
    }
    for c in ctrls {
        section.extend_from_slice(c);
    }
    section
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

/// Writes the native container: each block compressed on the worker that matched it.
struct NativeSink<'a> {
    out: &'a mut dyn Write,
    /// Written before the first block (or at the end if there is none).
    header: Option<Header>,
    written: u64,
}

impl NativeSink<'_> {
    fn write_header(&mut self, transform: Option<&[u8]>) -> Result<(), DeltaError> {
        let Some(mut h) = self.header.take() else {
            return Ok(());
        };
        h.transform = transform.is_some();
        self.out.write_all(&h.encode())?;
        self.written += format::HEADER_LEN as u64;
        if let Some(t) = transform {
            self.out.write_all(t)?;
            self.written += t.len() as u64;
        }
        Ok(())
    }
}

fn compress(data: &[u8], level: i32) -> Result<Vec<u8>, DeltaError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    thread_local! {
        /// One compression context per worker thread, reused across blocks: a fresh
        /// level-18 context allocates (and the kernel zeroes) tens of MiB each time.
        static CONTEXT: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { RefCell::new(None) };
    }
    CONTEXT.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            let mut cctx = zstd::bulk::Compressor::new(level)?;
            tune(&mut cctx, level)?;
            *c = Some((level, cctx));
        }
        let (_, cctx) = c
            .as_mut()
            .ok_or_else(|| DeltaError::Internal("no context".into()))?;
        Ok(cctx.compress(data)?)
    })
}

/// One native block: header, then the three compressed streams; without `with_ctrl`
/// (version 2), the block has an empty control stream and its control stream is
/// returned, for the transform section.
fn encode_block(
    b: &Streams,
    level: i32,
    with_ctrl: bool,
) -> Result<(Vec<u8>, Vec<u8>), DeltaError> {
    let ctrl = format::encode_ctrl(&b.ops);
    let coded_diff = format::encode_zero_runs(&b.diff);
    let (c, (d, e)) = rayon::join(
        || {
            if with_ctrl {
                compress(&ctrl, level)
            } else {
                Ok(Vec::new())
            }
        },
        || {
            rayon::join(
                || compress(&coded_diff, level),
                || compress(&b.extra, level),
            )
        },
    );
    let (c, d, e) = (c?, d?, e?);
    let len32 = |n: usize| {
        u32::try_from(n).map_err(|_| DeltaError::Internal("block stream over 4 GiB".into()))
    };
    let head = BlockHeader {
        new_len: len32(b.new_len as usize)?,
        ctrl_clen: len32(c.len())?,
        ctrl_len: if with_ctrl { len32(ctrl.len())? } else { 0 },
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
    let mut out = Vec::with_capacity(format::BLOCK_HEADER_LEN + c.len() + d.len() + e.len());
    out.extend_from_slice(&head.encode());
    out.extend_from_slice(&c);
    out.extend_from_slice(&d);
    out.extend_from_slice(&e);
    Ok((out, if with_ctrl { Vec::new() } else { ctrl }))
}

impl Sink for NativeSink<'_> {
    fn begin(&mut self, transform: Option<&[u8]>) -> Result<(), DeltaError> {
        self.write_header(transform)
    }

    fn block(&mut self, b: BlockOut) -> Result<(), DeltaError> {
        self.write_header(None)?;
        let BlockOut::Encoded(bytes) = b else {
            return Err(DeltaError::Internal("native sink got raw streams".into()));
        };
        self.out.write_all(&bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64, DeltaError> {
        self.write_header(None)?;
        self.out.flush()?;
        Ok(self.written)
    }
}

impl Sink for bsdiff40::Writer<'_> {
    fn block(&mut self, b: BlockOut) -> Result<(), DeltaError> {
        let BlockOut::Raw(s) = b else {
            return Err(DeltaError::Internal(
                "bsdiff40 sink got an encoded block".into(),
            ));
        };
        self.add(&s.ops, &s.diff, &s.extra)
    }

    fn finish(self: Box<Self>) -> Result<u64, DeltaError> {
        (*self).finish()
    }
}
