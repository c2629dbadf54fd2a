//! Streaming apply: one pass over the patch, old read by offset, new written in order.
//!
//! Memory is bounded by the format's limits, not by anything the patch claims: for two
//! blocks (the one being computed and the next, decoded meanwhile) at most
//! `MAX_BLOCK_SIZE` of extra and of zero-run coded diff and `MAX_CTRL_LEN` of control
//! each, and the compressed form of one, plus two batches (the one being computed, and
//! the one before it being written, then the one after it fetched), each with
//! `OLD_BATCH + OLD_SLACK` of old bytes (none when old is in memory: a file of at most
//! `MAP_MAX` bytes mapped, whose pages count in resident memory instead) and `OLD_BATCH`
//! of diff turned into output, and four `OUT_PIECE` buffers of output; buffers are
//! reused across blocks. Three threads
//! work at once (see `apply`), and a batch's ops are computed on all of them. Order of
//! the errors reported: header bounds → old size and blake3 → per block: header bounds,
//! exact decompressed lengths, every op inside the block and inside old → total length
//! → result blake3.

use std::io::{self, Read, Write};
use std::sync::mpsc;

use rayon::prelude::*;

use super::exe::{self, Predictor};
use super::format::{self, BlockHeader, CtrlReader, FormatError, Header};
use super::{hash_input, DeltaError, ReadAt};

/// Ops are applied in batches of up to this many diff bytes, each batch's old bytes
/// fetched together (a longer op is split into pieces this long). 1 MiB: a 600 MB file
/// system image's apply stays within 64 MiB (with 4 MiB batches it did not).
const OLD_BATCH: usize = 1 << 20;
/// Old ranges of a batch at most this far apart are fetched in one read...
const OLD_GAP: u64 = 4 << 10;
/// ...while the bytes read but not used stay within this (so the old buffer holds at
/// most `OLD_BATCH + OLD_SLACK`).
const OLD_SLACK: u64 = 1 << 20;
/// Output is hashed and written in pieces this large: blake3 hashes many 1 KiB chunks at
/// once only when handed them together (per-op updates of ~360 bytes took a quarter of
/// apply's time on the ruff pair). At most four exist (being filled, queued, being
/// written, handed back): 256 KiB keeps that at 1 MiB.
const OUT_PIECE: usize = 256 << 10;

#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplyReport {
    pub new_size: u64,
    pub new_blake3: String,
    pub blocks: u64,
}

fn corrupt(what: &str) -> DeltaError {
    DeltaError::Corrupt(what.to_string())
}

fn read_exact_or_truncated(r: &mut dyn Read, buf: &mut [u8]) -> Result<(), DeltaError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => DeltaError::Format(FormatError::Truncated),
        _ => DeltaError::Io(e),
    })
}

/// Reads and checks a patch header.
pub fn read_header(patch: &mut dyn Read) -> Result<Header, DeltaError> {
    let mut head = [0u8; format::HEADER_LEN];
    let mut got = 0;
    while got < head.len() {
        let n = patch.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(Header::decode(&head[..got])?)
}

/// Decompresses exactly `len` bytes from `src` into `dst` (reused).
fn inflate(
    dec: &mut zstd::bulk::Decompressor<'_>,
    src: &[u8],
    len: u32,
    dst: &mut Vec<u8>,
) -> Result<(), DeltaError> {
    dst.clear();
    if len == 0 {
        return if src.is_empty() {
            Ok(())
        } else {
            Err(corrupt("data for an empty stream"))
        };
    }
    dst.reserve(len as usize);
    let n = dec
        .decompress_to_buffer(src, dst)
        .map_err(|e| corrupt(&format!("zstd: {e}")))?;
    if n != len as usize {
        return Err(corrupt("stream length differs from its header"));
    }
    Ok(())
}

/// A block's ops in pieces of at most `OLD_BATCH` diff bytes, each checked.
#[derive(Default)]
struct Pieces {
    /// (old position, diff length, extra length).
    ops: Vec<(u64, usize, usize)>,
    /// For each entry of `ops`, the whole op it is a piece of: (old position, diff
    /// length, position in new).
    whole: Vec<(u64, u64, u64)>,
    /// For each entry of `ops`, its op's number in the patch (counting from 0).
    op_no: Vec<usize>,
}

/// One batch of pieces: the old bytes its ops add their diffs to, and its output. When
/// old is in memory they are read where they are; otherwise they are fetched in few
/// large reads in old's order (nearby ops mostly read nearby old ranges, but not in
/// new's order: one `pread` per op made syscalls a quarter of apply's time on the ruff
/// pair). Two exist: while one is computed, the other is written (the
/// batch before) and then filled again (the batch after).
#[derive(Default)]
struct Batch {
    /// Its pieces (indexes into `Pieces`).
    pieces: std::ops::Range<usize>,
    /// Where each piece's old bytes start in `buf`.
    at: Vec<usize>,
    buf: Vec<u8>,
    /// The pieces' diffs, in order; computing the batch turns them into new's bytes.
    out: Vec<u8>,
    /// Scratch: piece indexes sorted by old position; merged ranges (old start, end,
    /// offset).
    order: Vec<usize>,
    ranges: Vec<(u64, u64, usize)>,
}

impl Batch {
    /// Reads what the pieces `ops` need: ranges sorted by old position, merged across
    /// gaps up to `OLD_GAP` while the unused bytes stay within `OLD_SLACK`.
    fn fetch(&mut self, old: &dyn ReadAt, ops: &[(u64, usize, usize)]) -> Result<(), DeltaError> {
        self.at.clear();
        if old.bytes().is_some() {
            // In memory: each piece is read where it is.
            self.at.extend(ops.iter().map(|o| o.0 as usize));
            return Ok(());
        }
        self.order.clear();
        self.order.extend((0..ops.len()).filter(|&i| ops[i].1 > 0));
        self.order.sort_unstable_by_key(|&i| ops[i].0);
        self.ranges.clear();
        self.at.resize(ops.len(), 0);
        let (mut size, mut slack) = (0usize, OLD_SLACK);
        for &i in &self.order {
            let (start, end) = (ops[i].0, ops[i].0 + ops[i].1 as u64);
            match self.ranges.last_mut() {
                Some(r) if start <= r.1 => r.1 = r.1.max(end),
                Some(r) if start - r.1 <= OLD_GAP.min(slack) => {
                    slack -= start - r.1;
                    r.1 = end;
                }
                _ => self.ranges.push((start, end, size)),
            }
            let r = self.ranges.last().copied().unwrap_or_default();
            self.at[i] = r.2 + (start - r.0) as usize;
            size = r.2 + (r.1 - r.0) as usize;
        }
        self.buf.resize(size, 0);
        for &(start, end, at) in &self.ranges {
            old.read_at(&mut self.buf[at..at + (end - start) as usize], start)?;
        }
        Ok(())
    }

    /// Makes this the batch of `pieces` (indexes into `all`, `bytes` diff bytes): its
    /// old bytes read and its diff decoded.
    fn prepare(
        &mut self,
        old: &dyn ReadAt,
        all: &Pieces,
        pieces: std::ops::Range<usize>,
        bytes: usize,
        (coded, runs): (&[u8], &mut format::ZeroRuns),
    ) -> Result<(), DeltaError> {
        self.fetch(old, &all.ops[pieces.clone()])?;
        self.pieces = pieces;
        self.out.resize(bytes, 0);
        runs.read(coded, &mut self.out);
        Ok(())
    }

    /// Hands the batch's output to `emitter` in order, each piece's extra after it
    /// (`extra` from `*e_at` on). False when the writing thread has hung up.
    fn emit(
        &self,
        all: &Pieces,
        extra: &[u8],
        e_at: &mut usize,
        emitter: &mut Emitter<'_>,
    ) -> bool {
        let mut from = 0;
        for &(_, diff_len, extra_len) in &all.ops[self.pieces.clone()] {
            if !emitter.emit(&self.out[from..from + diff_len])
                || !emitter.emit(&extra[*e_at..*e_at + extra_len])
            {
                return false;
            }
            from += diff_len;
            *e_at += extra_len;
        }
        true
    }

    /// Computes the batch on all threads (its ops are independent): each piece's diff
    /// plus its old bytes, with references predicted.
    fn compute(
        &mut self,
        old: &dyn ReadAt,
        all: &Pieces,
        predictor: Option<&Predictor>,
    ) -> Result<(), DeltaError> {
        let pieces = &all.ops[self.pieces.clone()];
        let whole = &all.whole[self.pieces.clone()];
        let mut slots = Vec::with_capacity(pieces.len());
        let mut rest = &mut self.out[..];
        for (i, &(_, diff_len, _)) in pieces.iter().enumerate() {
            let (slot, tail) = rest.split_at_mut(diff_len);
            slots.push((i, slot));
            rest = tail;
        }
        let (at, buf) = (&self.at, old.bytes().unwrap_or(&self.buf));
        slots
            .into_par_iter()
            .with_min_len(64)
            .try_for_each(|(i, slot)| -> Result<(), DeltaError> {
                let (piece_at, diff_len, _) = pieces[i];
                let base = &buf[at[i]..at[i] + diff_len];
                for (b, o) in slot.iter_mut().zip(base) {
                    *b = b.wrapping_add(*o);
                }
                if let Some(p) = predictor {
                    let (op_old, op_len, op_new) = whole[i];
                    let mut read = |f: u64| {
                        let mut b = [0u8; 8];
                        let n = (old.size().saturating_sub(f)).min(8) as usize;
                        old.read_at(&mut b[..n], f)?;
                        Ok(b)
                    };
                    p.rewrite(
                        base, slot, piece_at, op_old, op_len, op_new, &mut read, None,
                    )?;
                }
                Ok(())
            })
    }
}

/// An op's old range from the control stream's cursor and delta, checked against old.
fn op_range(
    cursor: u64,
    delta: i64,
    diff_len: u64,
    old_size: u64,
) -> Result<(u64, u64), DeltaError> {
    let old_pos = cursor
        .checked_add_signed(delta)
        .ok_or_else(|| corrupt("old position out of range"))?;
    let end = old_pos
        .checked_add(diff_len)
        .ok_or_else(|| corrupt("old position out of range"))?;
    if end > old_size {
        return Err(corrupt("op reads past the end of old"));
    }
    Ok((old_pos, end))
}

/// A patch's transform section, decoded.
pub struct TransformSection {
    /// New's executables.
    pub new: exe::Image,
    /// Old's executables left unpredicted (ascending indexes).
    pub skip: Vec<usize>,
    /// Every block's control stream, and where each block's starts.
    pub ctrl: Vec<u8>,
    pub ctrl_at: Vec<usize>,
    /// Its size in the patch.
    pub bytes: u64,
}

/// Reads the transform section that follows a version 2 header.
pub fn read_transform_section(patch: &mut dyn Read) -> Result<TransformSection, DeltaError> {
    let mut dec = zstd::bulk::Decompressor::new()?;
    read_section(patch, &mut dec)
}

/// When apply finds and drops each predicted executable's references: before the first
/// op that copies from it and after the last (an image's executables are mostly copied
/// in turn, so apply holds a few executables' references, not all of them).
struct RefSchedule {
    tables: Vec<exe::Tables>,
    /// (first op, executable) and (last op, executable), each sorted by op.
    loads: Vec<(usize, usize)>,
    drops: Vec<(usize, usize)>,
    next_load: usize,
    next_drop: usize,
}

impl RefSchedule {
    /// From old's executables, those left unpredicted and the ops' old ranges (old
    /// position, length), in the patch's order.
    fn new(
        old: &exe::Image,
        skip: &[usize],
        tables: Vec<exe::Tables>,
        ops: impl Iterator<Item = (u64, u64)>,
    ) -> RefSchedule {
        let parts = &old.parts;
        let mut uses = vec![(usize::MAX, 0usize); parts.len()];
        for (n, (old_pos, len)) in ops.enumerate() {
            let mut k = parts.partition_point(|p| p.end <= old_pos);
            while len > 0 && k < parts.len() && parts[k].start < old_pos + len {
                uses[k].0 = uses[k].0.min(n);
                uses[k].1 = n;
                k += 1;
            }
        }
        let (mut loads, mut drops) = (Vec::new(), Vec::new());
        for (k, &(first, last)) in uses.iter().enumerate() {
            if first != usize::MAX && skip.binary_search(&k).is_err() {
                loads.push((first, k));
                drops.push((last, k));
            }
        }
        loads.sort_unstable();
        drops.sort_unstable();
        RefSchedule {
            tables,
            loads,
            drops,
            next_load: 0,
            next_drop: 0,
        }
    }

    /// Finds the references of every executable first copied from by op `op` or before.
    fn load_through(&mut self, op: usize, old: &dyn ReadAt, p: &mut Predictor) -> io::Result<()> {
        for (i, refs) in self.find_through(op, old, &p.old)? {
            p.set_part_refs(i, refs);
        }
        Ok(())
    }

    /// `load_through`'s references, returned (executable, references) rather than set.
    fn find_through(
        &mut self,
        op: usize,
        old: &dyn ReadAt,
        image: &exe::Image,
    ) -> io::Result<Vec<(usize, exe::Refs)>> {
        let mut found = Vec::new();
        while let Some(&(_, i)) = self.loads.get(self.next_load).filter(|l| l.0 <= op) {
            found.push((i, exe::find_refs_in(old, image, &self.tables, |k| k == i)?));
            self.next_load += 1;
        }
        Ok(found)
    }

    /// Drops the references of every executable last copied from by op `op` or before.
    fn drop_through(&mut self, op: usize, p: &mut Predictor) {
        while let Some(&(_, i)) = self.drops.get(self.next_drop).filter(|d| d.0 <= op) {
            p.set_part_refs(i, exe::Refs::default());
            self.next_drop += 1;
        }
    }
}

/// The last op whose every piece is applied once the pieces before `last` are (`op_no`:
/// each piece's op): the one before the next piece's (a long op's pieces can span
/// batches) or, after the block's last piece, the one before `next_op`.
fn ops_done(op_no: &[usize], last: usize, next_op: usize) -> Option<usize> {
    op_no.get(last).copied().unwrap_or(next_op).checked_sub(1)
}

/// Rebuilds the offset map from the transform section's ops and parses old's
/// executables: what apply needs to predict references. Finds the references of the
/// executables the first block copies from; the schedule says when to find the others'.
fn prepare_transform(
    old: &dyn ReadAt,
    header: &Header,
    section: &TransformSection,
) -> Result<(Predictor, RefSchedule), DeltaError> {
    if header.old_size > exe::MAX_IMAGE {
        return Err(DeltaError::WrongOld(
            "the patch predicts x86-64 references but old is too large to hold executables".into(),
        ));
    }
    if section.ctrl_at.len() as u64 != header.block_count + 1 {
        return Err(corrupt(
            "transform section's block count differs from the header's",
        ));
    }
    let mut copies = Vec::new();
    let mut first_block_ops = 0;
    let mut new_at = 0u64;
    for w in section.ctrl_at.windows(2) {
        let mut ops = CtrlReader::new(&section.ctrl[w[0]..w[1]])?;
        copies.reserve(
            usize::try_from(ops.ops_left())
                .unwrap_or(usize::MAX)
                .min(1 << 20),
        );
        let mut cursor = 0u64;
        while let Some((diff_len, extra_len, delta)) = ops.next_op()? {
            let (old_pos, end) = op_range(cursor, delta, diff_len, header.old_size)?;
            copies.push((old_pos, new_at, diff_len));
            new_at = new_at
                .checked_add(diff_len)
                .and_then(|n| n.checked_add(extra_len))
                .filter(|&n| n <= header.new_size)
                .ok_or_else(|| corrupt("ops exceed the new size"))?;
            cursor = end;
        }
        if w[0] == 0 {
            first_block_ops = copies.len();
        }
    }
    let new = section.new.clone();
    let (old_layout, tables) = exe::Image::parse_with_tables(old).ok_or_else(|| {
        DeltaError::WrongOld(
            "the patch predicts x86-64 references but old is not an x86-64 ELF or PE file".into(),
        )
    })?;
    if section
        .skip
        .last()
        .is_some_and(|&i| i >= old_layout.parts.len())
    {
        return Err(corrupt("transform skips an executable old does not have"));
    }
    // Only the references of executables the patch predicts are needed (in a file
    // system image, most executables are unchanged and left unpredicted).
    let ops = copies.iter().map(|c| (c.0, c.2));
    let mut schedule = RefSchedule::new(&old_layout, &section.skip, tables, ops);
    // The first block's references are found while the offset map is built (both
    // before the first op; one after the other, they held it up on the ruff pair).
    let (map, first) = rayon::join(
        || exe::OffsetMap::from_copies(copies, exe::MAP_GAP),
        || match first_block_ops {
            0 => Ok(Vec::new()),
            n => schedule.find_through(n - 1, old, &old_layout),
        },
    );
    let mut p = Predictor::new(
        old_layout,
        exe::Refs::default(),
        new,
        map,
        section.skip.clone(),
    );
    for (i, refs) in first? {
        p.set_part_refs(i, refs);
    }
    Ok((p, schedule))
}

fn read_section(
    patch: &mut dyn Read,
    dec: &mut zstd::bulk::Decompressor<'_>,
) -> Result<TransformSection, DeltaError> {
    let mut lens = [0u8; 8];
    read_exact_or_truncated(patch, &mut lens)?;
    let clen = u32::from_le_bytes([lens[0], lens[1], lens[2], lens[3]]);
    let len = u32::from_le_bytes([lens[4], lens[5], lens[6], lens[7]]);
    if len == 0 || len > format::MAX_TRANSFORM_LEN || u64::from(clen) > u64::from(len) + 1024 {
        return Err(DeltaError::Format(FormatError::Bounds(
            "transform section length",
        )));
    }
    let mut packed = vec![0u8; clen as usize];
    read_exact_or_truncated(patch, &mut packed)?;
    let mut section = Vec::new();
    inflate(dec, &packed, len, &mut section)?;
    if section[0] != format::TRANSFORM_X86_REFS {
        return Err(DeltaError::Format(FormatError::Bounds("transform kind")));
    }
    let mut at = 1;
    let new = exe::Image::decode(&section, &mut at)?;
    let skipped = format::get_varint(&section, &mut at)?;
    if skipped > section.len() as u64 {
        return Err(DeltaError::Format(FormatError::Bounds(
            "transform skip count",
        )));
    }
    let mut skip = Vec::with_capacity(skipped as usize);
    for _ in 0..skipped {
        let i = format::get_varint(&section, &mut at)?;
        if skip.last().is_some_and(|&l| l >= i) || i >= 1 << 16 {
            return Err(DeltaError::Format(FormatError::Bounds(
                "transform skip list",
            )));
        }
        skip.push(i);
    }
    let skip = skip.into_iter().map(|i| i as usize).collect();
    let blocks = format::get_varint(&section, &mut at)?;
    if blocks > section.len() as u64 {
        return Err(DeltaError::Format(FormatError::Bounds(
            "transform block count",
        )));
    }
    let mut ctrl_at = Vec::with_capacity(blocks as usize + 1);
    let mut end = 0usize;
    ctrl_at.push(0);
    for _ in 0..blocks {
        let n = format::get_varint(&section, &mut at)?;
        if n > u64::from(format::MAX_CTRL_LEN) {
            return Err(DeltaError::Format(FormatError::Bounds("block ctrl_len")));
        }
        end += n as usize;
        ctrl_at.push(end);
    }
    if section.len() - at != end {
        return Err(corrupt("transform section's control streams do not add up"));
    }
    Ok(TransformSection {
        new,
        skip,
        ctrl: section[at..].to_vec(),
        ctrl_at,
        bytes: 8 + u64::from(clen),
    })
}

/// A block as read from the patch: its header and its three compressed streams.
struct RawBlock {
    header: BlockHeader,
    packed: Vec<u8>,
}

/// What the worker asks of the thread that owns the patch and the output.
enum Request {
    /// The next block (or `None` after the last).
    Block,
    /// Hash and write these `OUT_PIECE` bytes (fewer at the end), then hand the buffer back.
    Out(Vec<u8>),
}

/// Applies `patch` to `old`, writing the result to `out`. On error, what was written to
/// `out` must be discarded (the CLI writes to a temp file and renames on success).
///
/// Three stages run at once: this thread reads the patch and hashes and writes the
/// result; a worker decodes each block and computes its output (a batch's ops on all
/// threads); old is hashed on a third. The worker is a task in rayon's global pool, so
/// the joins it makes per batch run on its own thread and its neighbours'. As a thread
/// of its own, each join woke a pool thread and then the worker again: 27 % more
/// context switches, 4 ms more on the pydantic-core pair's 26 ms. The worker asks for
/// block k + 1 as it starts on block k and decodes it beside block k's first batch, so
/// at most two blocks' decoded streams, one block's compressed streams and four
/// `OUT_PIECE` buffers of output are held at once. Errors are reported in the patch's
/// order: a wrong old first, then the worker's (earlier blocks), then this thread's.
/// The calling thread waits on the worker: call it from outside rayon's pool (a caller
/// inside a one-thread pool would wait forever).
pub fn apply(
    old: &dyn ReadAt,
    patch: &mut dyn Read,
    out: &mut dyn Write,
) -> Result<ApplyReport, DeltaError> {
    let header = read_header(patch)?;
    if old.size() != header.old_size {
        return Err(DeltaError::WrongOld(format!(
            "size {} but the patch expects {}",
            old.size(),
            header.old_size
        )));
    }
    let mut dec = zstd::bulk::Decompressor::new()?;
    let (old_hash, worker, written) = std::thread::scope(|s| {
        // Old is hashed from the start, while the transform section is decoded (a
        // section that fails is reported as if old had not been read).
        let hashing = s.spawn(|| hash_input(old));
        let section = match header.transform {
            true => Some(read_section(patch, &mut dec)?),
            false => None,
        };
        let (to_main, requests) = mpsc::sync_channel::<Request>(1);
        let (to_worker, blocks) = mpsc::sync_channel::<Option<RawBlock>>(1);
        let (give_back, free) = mpsc::channel::<Vec<u8>>();
        let header = &header;
        let mut worker = None;
        let written = rayon::in_place_scope(|r| {
            let worker = &mut worker;
            r.spawn(move |_| {
                *worker = Some(produce(old, header, section, &blocks, &to_main, free));
            });
            let written = serve_worker(header, patch, out, &requests, &to_worker, &give_back);
            // Hanging up stops a worker that is still running (this thread failed).
            drop((requests, to_worker, give_back));
            written
        });
        // Set once the scope ends (a panic in the worker is resumed there).
        let worker = worker.unwrap_or_else(|| Err(corrupt("apply's worker stopped")));
        let old_hash = hashing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok::<_, DeltaError>((old_hash, worker, written))
    })?;
    if old_hash? != header.old_hash {
        return Err(DeltaError::WrongOld(format!(
            "blake3 differs from {}",
            header.old_hash
        )));
    }
    let finished = worker?;
    let (written, hasher) = written?;
    if !finished {
        return Err(corrupt("apply stopped early"));
    }
    if written != header.new_size {
        return Err(corrupt("blocks do not add up to the new size"));
    }
    let mut probe = [0u8; 1];
    if patch.read(&mut probe)? != 0 {
        return Err(corrupt("trailing bytes after the last block"));
    }
    out.flush()?;
    let got = crate::hash::Hash::from(hasher.finalize());
    if got != header.new_hash {
        return Err(DeltaError::ResultMismatch);
    }
    Ok(ApplyReport {
        new_size: written,
        new_blake3: got.to_hex(),
        blocks: header.block_count,
    })
}

/// The patch and output side of `apply`: answers the worker's requests until it is
/// done. Returns the bytes written and their hash so far.
fn serve_worker(
    header: &Header,
    patch: &mut dyn Read,
    out: &mut dyn Write,
    requests: &mpsc::Receiver<Request>,
    to_worker: &mpsc::SyncSender<Option<RawBlock>>,
    give_back: &mpsc::Sender<Vec<u8>>,
) -> Result<(u64, blake3::Hasher), DeltaError> {
    let mut hasher = blake3::Hasher::new();
    let (mut written, mut announced, mut read) = (0u64, 0u64, 0u64);
    // The worker hangs up when it is done or has failed (its error is reported then).
    while let Ok(request) = requests.recv() {
        match request {
            Request::Block if read == header.block_count => {
                let _ = to_worker.send(None);
            }
            Request::Block => {
                let mut bh = [0u8; format::BLOCK_HEADER_LEN];
                read_exact_or_truncated(patch, &mut bh)?;
                let b = BlockHeader::decode(&bh, header.block_size)?;
                announced += u64::from(b.new_len);
                if announced > header.new_size {
                    return Err(corrupt("blocks exceed the declared new size"));
                }
                let mut packed = vec![0u8; b.payload_len() as usize];
                read_exact_or_truncated(patch, &mut packed)?;
                read += 1;
                // A worker that has hung up has failed; the loop ends when it is gone.
                let _ = to_worker.send(Some(RawBlock { header: b, packed }));
            }
            Request::Out(piece) => {
                hasher.update(&piece);
                out.write_all(&piece)?;
                written += piece.len() as u64;
                let _ = give_back.send(piece);
            }
        }
    }
    Ok((written, hasher))
}

/// Output in `OUT_PIECE` buffers handed to the writing thread as they fill.
struct Emitter<'a> {
    buf: Vec<u8>,
    to_main: &'a mpsc::SyncSender<Request>,
    free: mpsc::Receiver<Vec<u8>>,
}

impl Emitter<'_> {
    /// Appends `bytes`; false when the writing thread has hung up.
    fn emit(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            let n = (OUT_PIECE - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.buf.len() == OUT_PIECE && !self.send() {
                return false;
            }
        }
        true
    }

    /// Hands the buffer over (if it holds anything) and takes an empty one.
    fn send(&mut self) -> bool {
        if self.buf.is_empty() {
            return true;
        }
        let mut next = self.free.try_recv().unwrap_or_default();
        next.clear();
        next.reserve_exact(OUT_PIECE);
        let full = std::mem::replace(&mut self.buf, next);
        self.to_main.send(Request::Out(full)).is_ok()
    }
}

/// A block's ops, in pieces and batches.
#[derive(Default)]
struct Side {
    all: Pieces,
    /// The block's batches: (pieces, diff bytes).
    bounds: Vec<(std::ops::Range<usize>, usize)>,
}

/// A started block: where its diff's decoding stands, the number of the first op after
/// it and its length in new.
struct Started {
    runs: format::ZeroRuns,
    next_op: usize,
    produced: u64,
}

/// Starts the decoded block `cur`: checks its diff's zero-run coding and its ops
/// (numbered from `op_no`, the block starting at `written` in new), splits them into
/// pieces and batches in `side`, and prepares its first batch in `first`.
#[allow(clippy::too_many_arguments)]
fn start_block(
    old: &dyn ReadAt,
    header: &Header,
    cur: &Decoded,
    side: &mut Side,
    first: &mut Batch,
    mut op_no: usize,
    written: u64,
) -> Result<Started, DeltaError> {
    let b = cur.header;
    let extra = &cur.extra;
    let mut runs = format::ZeroRuns::new(&cur.coded, b.diff_len as usize)?;
    let (mut d_at, mut e_at, mut cursor, mut produced) = (0usize, 0usize, 0u64, 0u64);
    let mut ops = CtrlReader::new(&cur.ctrl)?;
    let all = &mut side.all;
    all.ops.clear();
    all.whole.clear();
    all.op_no.clear();
    // A piece per op (more only for ops longer than a batch): room made once, not
    // grown by doubling (its copies were a tenth of the ruff pair's page faults). At
    // most a piece per 16 bytes of the block is expected: a stream of empty ops grows
    // the lists as before, as far as it gets.
    let n = usize::try_from(ops.ops_left())
        .unwrap_or(usize::MAX)
        .min(b.new_len as usize / 16 + 1);
    all.ops.reserve(n);
    all.whole.reserve(n);
    all.op_no.reserve(n);
    while let Some((diff_len, extra_len, delta)) = ops.next_op()? {
        let (old_pos, end) = op_range(cursor, delta, diff_len, header.old_size)?;
        if diff_len > b.diff_len as u64 - d_at as u64 || extra_len > (extra.len() - e_at) as u64 {
            return Err(corrupt("op exceeds the block's streams"));
        }
        let mut piece = (old_pos, diff_len as usize);
        let whole = (old_pos, diff_len, written + produced);
        while piece.1 > OLD_BATCH {
            all.ops.push((piece.0, OLD_BATCH, 0));
            all.whole.push(whole);
            all.op_no.push(op_no);
            piece = (piece.0 + OLD_BATCH as u64, piece.1 - OLD_BATCH);
        }
        all.ops.push((piece.0, piece.1, extra_len as usize));
        all.whole.push(whole);
        all.op_no.push(op_no);
        op_no += 1;
        d_at += diff_len as usize;
        e_at += extra_len as usize;
        cursor = end;
        produced += diff_len + extra_len;
    }
    if produced != u64::from(b.new_len) || d_at != b.diff_len as usize || e_at != extra.len() {
        return Err(corrupt("block ops do not cover the block exactly"));
    }
    side.bounds.clear();
    let mut from = 0;
    while from < all.ops.len() {
        let (mut last, mut bytes) = (from, 0);
        while last < all.ops.len() && bytes + all.ops[last].1 <= OLD_BATCH {
            bytes += all.ops[last].1;
            last += 1;
        }
        side.bounds.push((from..last, bytes));
        from = last;
    }
    if let Some((pieces, bytes)) = side.bounds.first() {
        first.prepare(old, all, pieces.clone(), *bytes, (&cur.coded, &mut runs))?;
    }
    Ok(Started {
        runs,
        next_op: op_no,
        produced,
    })
}

/// The worker side of `apply`: decodes blocks and computes the output. Ok(false) when
/// the other side hung up (it reports why).
///
/// Blocks alternate between two sets of buffers (block b's are `[b % 2]`); a block is
/// decoded beside the first batch of the one before it and started (`start_block`)
/// beside its last, the first block beside the transform's preparation. Batch k is
/// computed on all threads while, beside it, batch k − 1 is written and batch k + 1
/// fetched and its diff decoded (one after the other, these left a core idle for their
/// length). Errors are reported in the patch's order: a block's after the block before
/// it has been computed and written.
fn produce(
    old: &dyn ReadAt,
    header: &Header,
    section: Option<TransformSection>,
    blocks: &mpsc::Receiver<Option<RawBlock>>,
    to_main: &mpsc::SyncSender<Request>,
    free: mpsc::Receiver<Vec<u8>>,
) -> Result<bool, DeltaError> {
    let mut dec = zstd::bulk::Decompressor::new()?;
    let mut emitter = Emitter {
        buf: Vec::with_capacity(OUT_PIECE),
        to_main,
        free,
    };
    let mut decoded: [Decoded; 2] = Default::default();
    let mut sides: [Side; 2] = Default::default();
    let mut bufs: [Batch; 2] = Default::default();
    // Batches computed so far: the next is computed in `bufs[g % 2]`.
    let mut g = 0usize;
    if to_main.send(Request::Block).is_err() {
        return Ok(false);
    }
    let first = match blocks.recv() {
        Ok(raw) => raw,
        Err(_) => return Ok(false),
    };
    let (prepared, started) = rayon::join(
        || {
            section
                .as_ref()
                .map(|s| prepare_transform(old, header, s))
                .transpose()
        },
        || -> Result<Option<Started>, DeltaError> {
            let Some(raw) = first else {
                return Ok(None);
            };
            decode_block(&raw, section.as_ref(), 0, &mut dec, &mut decoded[0])?;
            start_block(old, header, &decoded[0], &mut sides[0], &mut bufs[0], 0, 0).map(Some)
        },
    );
    let (mut predictor, mut schedule) = match prepared? {
        Some((p, r)) => (Some(p), Some(r)),
        None => (None, None),
    };
    let Some(mut started) = started? else {
        return Ok(emitter.send());
    };
    let (mut written, mut block) = (0u64, 0usize);
    loop {
        // The next block is read while this one is computed.
        if to_main.send(Request::Block).is_err() {
            return Ok(false);
        }
        let mut next = match blocks.recv() {
            Ok(raw) => raw,
            Err(_) => return Ok(false),
        };
        let [d0, d1] = &mut decoded;
        let [s0, s1] = &mut sides;
        let ((cur, ahead), (side, side_next)) = match block % 2 {
            0 => ((&*d0, d1), (&*s0, s1)),
            _ => ((&*d1, d0), (&*s1, s0)),
        };
        let Started {
            mut runs,
            next_op,
            produced,
        } = started;
        let mut e_at = 0usize;
        let mut next_decoded = None;
        let mut next_started = None;
        let n = side.bounds.len();
        for k in 0..n {
            if let (Some(p), Some(r)) = (&mut predictor, &mut schedule) {
                r.load_through(side.all.op_no[side.bounds[k].0.end - 1], old, p)?;
            }
            let [b0, b1] = &mut bufs;
            let (this, other) = if g % 2 == 0 { (b0, b1) } else { (b1, b0) };
            let p = predictor.as_ref();
            let (computed, beside) = rayon::join(
                || this.compute(old, &side.all, p),
                || -> Result<bool, DeltaError> {
                    if k > 0 && !other.emit(&side.all, &cur.extra, &mut e_at, &mut emitter) {
                        return Ok(false);
                    }
                    if let Some((pieces, bytes)) = side.bounds.get(k + 1) {
                        let diff = (&cur.coded[..], &mut runs);
                        other.prepare(old, &side.all, pieces.clone(), *bytes, diff)?;
                    }
                    if let Some(raw) = next.take().filter(|_| k == 0) {
                        let d = decode_block(&raw, section.as_ref(), block + 1, &mut dec, ahead);
                        next_decoded = Some(d);
                    }
                    if k + 1 == n && matches!(next_decoded, Some(Ok(()))) {
                        let at = written + produced;
                        let s = start_block(old, header, ahead, side_next, other, next_op, at);
                        next_started = Some(s);
                    }
                    Ok(true)
                },
            );
            computed?;
            if !beside? {
                return Ok(false);
            }
            g += 1;
            if let (Some(p), Some(r)) = (&mut predictor, &mut schedule) {
                if let Some(done) = ops_done(&side.all.op_no, side.bounds[k].0.end, next_op) {
                    r.drop_through(done, p);
                }
            }
        }
        if n > 0 && !bufs[(g - 1) % 2].emit(&side.all, &cur.extra, &mut e_at, &mut emitter) {
            return Ok(false);
        }
        if let Some(raw) = next.take() {
            next_decoded = Some(decode_block(
                &raw,
                section.as_ref(),
                block + 1,
                &mut dec,
                ahead,
            ));
        }
        written += produced;
        block += 1;
        // The next block's errors come after this block's.
        match next_decoded {
            Some(d) => {
                d?;
                started = match next_started {
                    Some(s) => s?,
                    None => start_block(
                        old,
                        header,
                        ahead,
                        side_next,
                        &mut bufs[g % 2],
                        next_op,
                        written,
                    )?,
                };
            }
            None => break,
        }
    }
    Ok(emitter.send())
}

/// A block's streams, decompressed (buffers reused from block to block).
#[derive(Default)]
struct Decoded {
    header: BlockHeader,
    ctrl: Vec<u8>,
    coded: Vec<u8>,
    extra: Vec<u8>,
}

/// Decompresses block `block` of the patch into `into`, checking each stream's length
/// (the diff's zero-run coding is checked when the block is computed).
fn decode_block(
    raw: &RawBlock,
    section: Option<&TransformSection>,
    block: usize,
    dec: &mut zstd::bulk::Decompressor<'_>,
    into: &mut Decoded,
) -> Result<(), DeltaError> {
    let b = raw.header;
    into.header = b;
    let (c, rest) = raw.packed.split_at(b.ctrl_clen as usize);
    let (d, e) = rest.split_at(b.diff_clen as usize);
    match section {
        // Version 2: the block's control stream is in the transform section.
        Some(s) if b.ctrl_clen == 0 && b.ctrl_len == 0 => {
            into.ctrl.clear();
            into.ctrl
                .extend_from_slice(&s.ctrl[s.ctrl_at[block]..s.ctrl_at[block + 1]]);
        }
        Some(_) => return Err(corrupt("version 2 block with its own control stream")),
        None => inflate(dec, c, b.ctrl_len, &mut into.ctrl)?,
    }
    inflate(dec, d, b.diff_coded_len, &mut into.coded)?;
    inflate(dec, e, b.extra_len, &mut into.extra)
}

#[cfg(test)]
mod tests {
    use super::ops_done;

    #[test]
    fn an_op_is_done_only_when_its_last_piece_is() {
        // Op 7 in three pieces, then op 8; the block's next op is 9.
        let op_no = [6, 7, 7, 7, 8];
        assert_eq!(ops_done(&op_no, 1, 9), Some(6), "op 7 has not started");
        assert_eq!(ops_done(&op_no, 2, 9), Some(6), "op 7 is half done");
        assert_eq!(ops_done(&op_no, 4, 9), Some(7));
        assert_eq!(ops_done(&op_no, 5, 9), Some(8), "the block is done");
        assert_eq!(ops_done(&[0, 0], 1, 1), None, "nothing is done yet");
    }
}
