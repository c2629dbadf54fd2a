//! Streaming apply: one pass over the patch, old read by offset, new written in order.
//!
//! Memory is bounded by the format's limits, not by anything the patch claims: for two
//! blocks (the one being computed and the next, decoded meanwhile) at most
//! `MAX_BLOCK_SIZE` of extra and of zero-run coded diff and `MAX_CTRL_LEN` of control
//! each, and the compressed form of one, plus two batches (the one being computed, and
//! the one before it being written, then the one after it fetched), each with
//! `OLD_BATCH + OLD_SLACK` of old bytes (none when old is in memory: a file of at most
//! `MAP_MAX` bytes mapped, whose pages count in resident memory instead), `OLD_BATCH`
//! of diff turned into output and at most `BATCH_PIECES` ops, and four `OUT_PIECE`
//! buffers of output; buffers are reused across blocks. A block's ops are read from its
//! control stream a batch at a time, never held all at once: a control stream of 8 MiB
//! holds up to 2.8 million ops, and at 56 bytes each they were 150 MB. (The transform
//! section's offset map is built from all of its ops, 24 bytes each, and it holds at
//! most `MAX_TRANSFORM_OPS`.) Three threads work at once, four when old is on disk
//! (see `apply`), and a batch's ops are computed on all of them. Order of the errors
//! reported: header bounds → old size and blake3 → per block: header bounds, exact
//! decompressed lengths, then batch by batch every op inside the block and inside old,
//! and at its end the ops covering it exactly → total length → result blake3.

use std::io::{self, Read, Write};
use std::sync::mpsc;

use rayon::prelude::*;

use super::exe::{self, Predictor};
use super::format::{self, BlockHeader, CtrlReader, FormatError, Header};
use super::{hash_input, DeltaError, PieceHash, ReadAt};

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

/// At most this many pieces make one batch (batches are cut at `OLD_BATCH` diff bytes
/// too): a batch's lists, not a block's, are what apply holds of the ops, so a block of
/// millions of tiny ops (a valid patch can hold 2.8 million in its 8 MiB control
/// stream) costs no more memory than one of a few. Real patches have a few thousand
/// per batch.
const BATCH_PIECES: usize = 1 << 14;

/// A batch's ops in pieces of at most `OLD_BATCH` diff bytes, each checked.
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

impl Pieces {
    fn clear(&mut self) {
        self.ops.clear();
        self.whole.clear();
        self.op_no.clear();
    }

    fn push(&mut self, piece: Piece) {
        self.ops.push(piece.op);
        self.whole.push(piece.whole);
        self.op_no.push(piece.op_no);
    }
}

/// One piece of an op, as `Pieces` holds it.
#[derive(Debug, Clone, Copy)]
struct Piece {
    op: (u64, usize, usize),
    whole: (u64, u64, u64),
    op_no: usize,
}

/// One batch of pieces: the old bytes its ops add their diffs to, and its output. When
/// old is in memory they are read where they are; otherwise they are fetched in few
/// large reads in old's order (nearby ops mostly read nearby old ranges, but not in
/// new's order: one `pread` per op made syscalls a quarter of apply's time on the ruff
/// pair). Two exist: while one is computed, the other is written (the
/// batch before) and then filled again (the batch after).
#[derive(Default)]
struct Batch {
    /// Its pieces.
    all: Pieces,
    /// Whether its last piece ends its op (a longer op goes on in the next batch).
    ends_op: bool,
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
    /// Reads what the pieces need: ranges sorted by old position, merged across gaps up
    /// to `OLD_GAP` while the unused bytes stay within `OLD_SLACK`.
    fn fetch(&mut self, old: &dyn ReadAt) -> Result<(), DeltaError> {
        let ops = &self.all.ops;
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

    /// Makes this the block's next batch: takes its pieces from `ops` (false when the
    /// block has none left, its ops then checked to cover it exactly), reads their old
    /// bytes and decodes their diff.
    fn prepare(
        &mut self,
        old: &dyn ReadAt,
        header: &Header,
        cur: &Decoded,
        ops: &mut BlockOps,
    ) -> Result<bool, DeltaError> {
        let bytes = ops.take_batch(header, cur, self)?;
        if self.all.ops.is_empty() {
            return Ok(false);
        }
        self.fetch(old)?;
        self.out.resize(bytes, 0);
        ops.runs.read(&cur.coded, &mut self.out);
        Ok(true)
    }

    /// Hands the batch's output to `emitter` in order, each piece's extra after it
    /// (`extra` from `*e_at` on). False when the writing thread has hung up.
    fn emit(&self, extra: &[u8], e_at: &mut usize, emitter: &mut Emitter<'_>) -> bool {
        let mut from = 0;
        for &(_, diff_len, extra_len) in &self.all.ops {
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

    /// The number of the last op this batch ends (none when its only op goes on in the
    /// next batch and is the first).
    fn ops_done(&self) -> Option<usize> {
        let last = *self.all.op_no.last()?;
        match self.ends_op {
            true => Some(last),
            false => last.checked_sub(1),
        }
    }

    /// The op number of its last piece (it has one once prepared).
    fn last_op(&self) -> usize {
        self.all.op_no.last().copied().unwrap_or_default()
    }

    /// Computes the batch on all threads (its ops are independent): each piece's diff
    /// plus its old bytes, with references predicted.
    fn compute(
        &mut self,
        old: &dyn ReadAt,
        predictor: Option<&Predictor>,
    ) -> Result<(), DeltaError> {
        let pieces = &self.all.ops;
        let whole = &self.all.whole;
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
    let (mut new_at, mut total) = (0u64, 0u64);
    for w in section.ctrl_at.windows(2) {
        let mut ops = CtrlReader::new(&section.ctrl[w[0]..w[1]])?;
        total += ops.ops_left();
        if total > format::MAX_TRANSFORM_OPS {
            return Err(DeltaError::Format(FormatError::Bounds(
                "transform op count",
            )));
        }
        // Within the bound just checked.
        copies.reserve(ops.ops_left() as usize);
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
    // Every block has an op (it holds a byte), so no more blocks than ops.
    if blocks > (section.len() as u64).min(format::MAX_TRANSFORM_OPS) {
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
/// threads); old is hashed by the pool in the gaps the worker leaves (or, when it is
/// not in memory, on a thread of its own). The worker is a task in rayon's global pool, so
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
    // Old in memory is hashed in pieces that the pool takes only when its threads have
    // nothing else to do (hashed from the start on a thread of its own, the 5 MB
    // pydantic-core pair's old cost 3-4 ms of apply's 25: it took a core from the
    // transform's preparation, which every batch waits for). Old on disk is read and
    // hashed on a thread of its own.
    let pieces = old.bytes().map(|b| (PieceHash::new(b.len() as u64), b));
    let (old_hash, worker, written) = std::thread::scope(|s| {
        // Read from the start, while the transform section is decoded (a section that
        // fails is reported as if old had not been read).
        let hashing = match pieces {
            None => Some(s.spawn(|| hash_input(old))),
            Some(_) => None,
        };
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
            // Spawned from outside the pool, these go to its shared queue, which a
            // thread looks at only when it has no work of its own and none to steal.
            if let Some((p, bytes)) = &pieces {
                for i in 0..p.len() {
                    r.spawn(move |_| p.hash_piece(i, bytes));
                }
            }
            let written = serve_worker(header, patch, out, &requests, &to_worker, &give_back);
            // Hanging up stops a worker that is still running (this thread failed).
            drop((requests, to_worker, give_back));
            written
        });
        // Set once the scope ends (a panic in the worker is resumed there).
        let worker = worker.unwrap_or_else(|| Err(corrupt("apply's worker stopped")));
        let old_hash = match hashing {
            Some(h) => h
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            // Every piece was hashed by the time the scope ended.
            None => pieces
                .as_ref()
                .and_then(|(p, _)| p.finish())
                .ok_or_else(|| io::Error::other("old's hash is incomplete")),
        };
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

/// Where the reading of a block's ops stands: they are read, checked and cut into
/// pieces a batch at a time (`take_batch`).
struct BlockOps {
    ctrl: format::CtrlPos,
    runs: format::ZeroRuns,
    /// Old position after the last op read (the next op's delta counts from it).
    cursor: u64,
    /// Diff and extra bytes of the ops read so far; their output.
    d_at: usize,
    e_at: usize,
    produced: u64,
    /// The next op's number; where the block starts in new.
    op_no: usize,
    written: u64,
    /// The next piece, read but not yet in a batch (the rest of an op longer than a
    /// batch, or an op the last batch had no room for).
    pending: Option<Piece>,
    /// The rest of an op being cut into pieces (its old position and diff length are
    /// what is left of it).
    rest: Option<Piece>,
}

impl BlockOps {
    /// Starts the decoded block `cur`, which holds ops numbered from `op_no` and starts
    /// at `written` in new: checks its control stream's layout and its diff's zero-run
    /// coding.
    fn new(cur: &Decoded, op_no: usize, written: u64) -> Result<BlockOps, DeltaError> {
        let b = cur.header;
        Ok(BlockOps {
            ctrl: CtrlReader::new(&cur.ctrl)?.pos(),
            runs: format::ZeroRuns::new(&cur.coded, b.diff_len as usize)?,
            cursor: 0,
            d_at: 0,
            e_at: 0,
            produced: 0,
            op_no,
            written,
            pending: None,
            rest: None,
        })
    }

    /// The next piece: the rest of a long op, or the next op (checked) cut to at most
    /// `OLD_BATCH` diff bytes. `None` after the last op, once the ops are checked to
    /// cover the block exactly.
    fn next_piece(&mut self, header: &Header, cur: &Decoded) -> Result<Option<Piece>, DeltaError> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        let cut = |p: Piece, rest: &mut Option<Piece>| {
            let (pos, len, extra) = p.op;
            if len > OLD_BATCH {
                *rest = Some(Piece {
                    op: (pos + OLD_BATCH as u64, len - OLD_BATCH, extra),
                    ..p
                });
                Piece {
                    op: (pos, OLD_BATCH, 0),
                    ..p
                }
            } else {
                p
            }
        };
        if let Some(r) = self.rest.take() {
            return Ok(Some(cut(r, &mut self.rest)));
        }
        let b = cur.header;
        let mut ops = CtrlReader::resume(&cur.ctrl, self.ctrl);
        let next = ops.next_op()?;
        self.ctrl = ops.pos();
        let Some((diff_len, extra_len, delta)) = next else {
            if self.produced != u64::from(b.new_len)
                || self.d_at != b.diff_len as usize
                || self.e_at != cur.extra.len()
            {
                return Err(corrupt("block ops do not cover the block exactly"));
            }
            return Ok(None);
        };
        let (old_pos, end) = op_range(self.cursor, delta, diff_len, header.old_size)?;
        if diff_len > b.diff_len as u64 - self.d_at as u64
            || extra_len > (cur.extra.len() - self.e_at) as u64
        {
            return Err(corrupt("op exceeds the block's streams"));
        }
        let piece = Piece {
            op: (old_pos, diff_len as usize, extra_len as usize),
            whole: (old_pos, diff_len, self.written + self.produced),
            op_no: self.op_no,
        };
        self.op_no += 1;
        self.d_at += diff_len as usize;
        self.e_at += extra_len as usize;
        self.cursor = end;
        self.produced += diff_len + extra_len;
        Ok(Some(cut(piece, &mut self.rest)))
    }

    /// Fills `batch`'s pieces: as many as fit in `OLD_BATCH` diff bytes, at most
    /// `BATCH_PIECES`; none once the block's ops are all taken. Returns their diff bytes.
    fn take_batch(
        &mut self,
        header: &Header,
        cur: &Decoded,
        batch: &mut Batch,
    ) -> Result<usize, DeltaError> {
        batch.all.clear();
        let mut bytes = 0;
        while batch.all.ops.len() < BATCH_PIECES {
            let Some(p) = self.next_piece(header, cur)? else {
                break;
            };
            if bytes + p.op.1 > OLD_BATCH {
                self.pending = Some(p);
                break;
            }
            bytes += p.op.1;
            batch.all.push(p);
        }
        // The op of the next piece, if it has been read already.
        let goes_on = self.pending.or(self.rest).map(|p| p.op_no);
        batch.ends_op = goes_on != batch.all.op_no.last().copied();
        Ok(bytes)
    }

    /// The first op after the block (once its ops are all taken).
    fn next_op(&self) -> usize {
        self.op_no
    }
}

/// Starts the decoded block `cur` (ops numbered from `op_no`, starting at `written` in
/// new) and prepares its first batch in `first`.
fn start_block(
    old: &dyn ReadAt,
    header: &Header,
    cur: &Decoded,
    first: &mut Batch,
    op_no: usize,
    written: u64,
) -> Result<BlockOps, DeltaError> {
    let mut ops = BlockOps::new(cur, op_no, written)?;
    if !first.prepare(old, header, cur, &mut ops)? {
        // A block holds at least one byte, so at least one op.
        return Err(corrupt("block ops do not cover the block exactly"));
    }
    Ok(ops)
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
        || -> Result<Option<BlockOps>, DeltaError> {
            let Some(raw) = first else {
                return Ok(None);
            };
            decode_block(&raw, section.as_ref(), 0, &mut dec, &mut decoded[0])?;
            start_block(old, header, &decoded[0], &mut bufs[0], 0, 0).map(Some)
        },
    );
    let (mut predictor, mut schedule) = match prepared? {
        Some((p, r)) => (Some(p), Some(r)),
        None => (None, None),
    };
    let Some(mut ops) = started? else {
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
        let (cur, ahead) = match block % 2 {
            0 => (&*d0, d1),
            _ => (&*d1, d0),
        };
        let mut e_at = 0usize;
        let mut next_decoded = None;
        let mut next_started = None;
        // Batch k of the block is computed in `this`; the block's first batch was
        // prepared when it was started.
        for k in 0.. {
            let [b0, b1] = &mut bufs;
            let (this, other) = if g % 2 == 0 { (b0, b1) } else { (b1, b0) };
            if let (Some(p), Some(r)) = (&mut predictor, &mut schedule) {
                r.load_through(this.last_op(), old, p)?;
            }
            let p = predictor.as_ref();
            let ops = &mut ops;
            let (computed, beside) = rayon::join(
                || this.compute(old, p),
                || -> Result<Option<bool>, DeltaError> {
                    if k > 0 && !other.emit(&cur.extra, &mut e_at, &mut emitter) {
                        return Ok(None);
                    }
                    let more = other.prepare(old, header, cur, ops)?;
                    if let Some(raw) = next.take().filter(|_| k == 0) {
                        let d = decode_block(&raw, section.as_ref(), block + 1, &mut dec, ahead);
                        next_decoded = Some(d);
                    }
                    if !more && matches!(next_decoded, Some(Ok(()))) {
                        let at = written + u64::from(cur.header.new_len);
                        let s = start_block(old, header, ahead, other, ops.next_op(), at);
                        next_started = Some(s);
                    }
                    Ok(Some(more))
                },
            );
            computed?;
            let Some(more) = beside? else {
                return Ok(false);
            };
            g += 1;
            if let (Some(p), Some(r)) = (&mut predictor, &mut schedule) {
                if let Some(done) = this.ops_done() {
                    r.drop_through(done, p);
                }
            }
            if !more {
                break;
            }
        }
        if !bufs[(g - 1) % 2].emit(&cur.extra, &mut e_at, &mut emitter) {
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
        // The block's ops were all taken, so they were checked to cover it.
        written += u64::from(cur.header.new_len);
        block += 1;
        // The next block's errors come after this block's.
        match next_decoded {
            Some(d) => {
                d?;
                ops = match next_started {
                    Some(s) => s?,
                    None => {
                        start_block(old, header, ahead, &mut bufs[g % 2], ops.next_op(), written)?
                    }
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
    use super::*;
    use crate::hash::Hash;

    /// A decoded block of ops with these diff lengths (all zero, no extra bytes), each
    /// copying old from 0, and a header for it.
    fn block(diffs: &[u64]) -> (Header, Decoded) {
        let ops: Vec<format::Op> = diffs
            .iter()
            .map(|&d| format::Op {
                old_pos: 0,
                diff_len: d,
                extra_len: 0,
            })
            .collect();
        let total: u64 = diffs.iter().sum();
        let coded = format::encode_zero_runs(&vec![0u8; total as usize]);
        let header = Header {
            zstd_level: 3,
            old_size: 4 << 20,
            new_size: total,
            old_hash: Hash::of(b"old"),
            new_hash: Hash::of(b"new"),
            block_size: total as u32,
            block_count: 1,
            memory_limit: 0,
            transform: false,
        };
        let decoded = Decoded {
            header: BlockHeader {
                new_len: total as u32,
                diff_coded_len: coded.len() as u32,
                diff_len: total as u32,
                ..BlockHeader::default()
            },
            ctrl: format::encode_ctrl(&ops),
            coded,
            extra: Vec::new(),
        };
        (header, decoded)
    }

    /// Each batch the block's ops make: its pieces' op numbers and diff lengths, and the
    /// last op it ends.
    fn batches(diffs: &[u64]) -> Vec<(Vec<usize>, Vec<usize>, Option<usize>)> {
        let (header, d) = block(diffs);
        let mut ops = BlockOps::new(&d, 7, 0).expect("a valid block");
        let mut batch = Batch::default();
        let mut seen = Vec::new();
        loop {
            let bytes = ops.take_batch(&header, &d, &mut batch).expect("valid ops");
            if batch.all.ops.is_empty() {
                break;
            }
            let lens: Vec<usize> = batch.all.ops.iter().map(|o| o.1).collect();
            assert_eq!(bytes, lens.iter().sum::<usize>());
            seen.push((batch.all.op_no.clone(), lens, batch.ops_done()));
        }
        assert_eq!(ops.next_op(), 7 + diffs.len());
        seen
    }

    #[test]
    fn a_batch_ends_an_op_only_with_its_last_piece() {
        const MIB: usize = OLD_BATCH;
        // Ops numbered from 7: 100 bytes, 3 MiB + 5 (four pieces), 10 bytes.
        let got = batches(&[100, 3 * MIB as u64 + 5, 10]);
        let want = vec![
            (vec![7], vec![100], Some(7)),
            (vec![8], vec![MIB], Some(7)),
            (vec![8], vec![MIB], Some(7)),
            (vec![8], vec![MIB], Some(7)),
            (vec![8, 9], vec![5, 10], Some(9)),
        ];
        assert_eq!(got, want);
        // The first op of the patch, unfinished: no op is done yet.
        let (header, d) = block(&[2 * MIB as u64]);
        let mut ops = BlockOps::new(&d, 0, 0).expect("a valid block");
        let mut batch = Batch::default();
        ops.take_batch(&header, &d, &mut batch).expect("valid ops");
        assert_eq!((batch.all.op_no.clone(), batch.ops_done()), (vec![0], None));
    }

    #[test]
    fn a_batch_holds_at_most_its_piece_count_however_small_the_ops() {
        let n = BATCH_PIECES + 100;
        let got = batches(&vec![1; n]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.len(), BATCH_PIECES);
        assert_eq!(got[0].2, Some(7 + BATCH_PIECES - 1));
        assert_eq!(got[1].0.len(), 100);
        assert_eq!(got[1].2, Some(7 + n - 1));
    }

    #[test]
    fn ops_that_do_not_cover_the_block_are_an_error_at_its_end() {
        let (header, mut d) = block(&[100, 200]);
        // A byte of extra that no op adds.
        d.header.new_len += 1;
        d.header.extra_len += 1;
        d.extra.push(1);
        let mut ops = BlockOps::new(&d, 0, 0).expect("the layout is valid");
        let err = ops.take_batch(&header, &d, &mut Batch::default());
        assert!(
            err.as_ref()
                .is_err_and(|e| e.to_string().contains("do not cover the block exactly")),
            "{:?}",
            err.map(|_| ())
        );
    }
}
