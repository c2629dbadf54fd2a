//! Executable-aware prediction of internal references (the `x86-64 refs` transform of
//! patch format version 2).
//!
//! A few changed lines of source move all the code after them, and every reference into
//! moved code (call and jump targets, RIP-relative addresses) changes value, so
//! byte-level matching sees approximate matches full of small differences. As in
//! Zucchini, the patch does not carry those differences: both sides find the references
//! in *old* (the container's sections, then x86-64 code scanned for rel32 branches and
//! RIP-relative operands), and for every reference that an op copies from old, the value
//! it should have in new is predicted: its old target is moved through the old→new
//! offset map (which the patch carries, coalesced from its own ops) and re-expressed at
//! the reference's new address with new's section addresses (also carried). The diff
//! stream then holds `new − predicted`, zero wherever the prediction holds.
//!
//! The reference finder is part of the patch format: version 2 patches apply only with
//! exactly this finder (it is ours, not a disassembler crate's, so no dependency upgrade
//! can change what an old patch means). A wrong prediction costs bytes, never
//! correctness: apply checks the result's blake3 as for any patch.
//!
//! Container headers are parsed with the `object` crate; anything it does not take as a
//! well-formed x86-64 ELF or PE file gets no transform (plain byte diffing). A tar
//! archive (walked with the `tar` crate) or a zip archive's stored entries (its central
//! directory read with the `zip` crate; APKs and JARs store native libraries so) are
//! transformed member by member: each ELF or PE member is an executable of its own,
//! with its own addresses, and the offset map is the file's. Deflated zip entries are
//! diffed as bytes: re-deflating them bit-exactly on the device is not possible in
//! general. Members need no pairing by path: the suffix array over all of old
//! finds each member's old version (or a renamed or moved one) by content.

use std::io::{self, Read, Seek, SeekFrom};

use object::{Object, ObjectSection, SectionFlags};

use super::format::{get_varint, put_varint, FormatError};
use super::{ext4, ReadAt};

/// Inputs larger than this get no transform (the references of old are held in memory
/// during apply: 5 bytes each, at most one per 5 bytes of code).
pub const MAX_INPUT: u64 = 1 << 30;
/// Largest file whose members (archive members, executables in a file-system image) are
/// transformed: reference fields are 32-bit offsets.
pub const MAX_IMAGE: u64 = u32::MAX as u64;
/// Most sections an image of a patch may describe, all its executables together (64
/// bytes each in memory once decoded: 16 MiB; the section's length alone allowed 13
/// million). The encoder writes a patch without the transform past it; the corpus's 629
/// MB image describes 2,477 (106 executables).
pub const MAX_IMAGE_SECTIONS: usize = 1 << 18;
/// Most sections a layout may have (and the patch may describe).
const MAX_SECTIONS: usize = 4096;

/// One loaded section: file bytes `off..off + file_len` at addresses `va..va + mem_len`
/// (mem_len ≥ file_len; the rest is zero-filled, like `.bss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    pub off: u64,
    pub file_len: u64,
    pub va: u64,
    pub mem_len: u64,
    pub exec: bool,
}

/// Where an executable's sections live in the file and in memory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Layout {
    /// The file range the executable occupies (all of it, or a tar member's data).
    pub start: u64,
    pub end: u64,
    /// Sorted by `va`, non-overlapping in memory; `off` counts from the file's start.
    pub sections: Vec<Section>,
    /// What base-relative references count from: the address of ELF `.eh_frame_hdr`
    /// (its table is `datarel`), or a PE file's image base (RVAs).
    pub base: u64,
    /// The sections with file bytes as (file offset, file length, address), by file
    /// offset, when their file ranges are disjoint (as linkers lay them out):
    /// `off_to_va` then searches instead of scanning. Derived from `sections`.
    by_off: Option<Vec<(u64, u64, u64)>>,
}

/// Tables of references a container has besides its code (file ranges).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tables {
    /// ELF `SHT_RELA` sections: 24-byte entries whose offset (and, for relative
    /// relocations, addend) are addresses.
    pub rela: Vec<(u64, u64)>,
    /// ELF `.eh_frame` (with its address): CIE pointers, FDE start addresses and LSDA
    /// pointers.
    pub eh_frame: Option<(u64, u64, u64)>,
    /// ELF `.eh_frame_hdr` (with its address): the sorted table of (start, FDE) pairs.
    pub eh_frame_hdr: Option<(u64, u64, u64)>,
    /// PE `.pdata`: 12-byte entries of three RVAs (function start, end, unwind info).
    pub pdata: Option<(u64, u64)>,
    /// PE `.reloc`: base relocation blocks; each DIR64 entry names a 64-bit address.
    pub reloc: Option<(u64, u64)>,
}

/// `Read + Seek` over a `ReadAt`, for `object`'s read cache.
struct Cursor<'a, R: ReadAt + ?Sized> {
    src: &'a R,
    pos: u64,
}

impl<R: ReadAt + ?Sized> Read for Cursor<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.src.size().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        self.src.read_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: ReadAt + ?Sized> Seek for Cursor<'_, R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let base = match to {
            SeekFrom::Start(n) => {
                self.pos = n;
                return Ok(n);
            }
            SeekFrom::End(d) => (self.src.size(), d),
            SeekFrom::Current(d) => (self.pos, d),
        };
        self.pos = base
            .0
            .checked_add_signed(base.1)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        Ok(self.pos)
    }
}

impl Layout {
    /// The layout of an x86-64 ELF or PE file; `None` for anything else (other
    /// architectures, other formats, malformed headers, overlapping sections).
    pub fn parse<R: ReadAt + ?Sized>(src: &R) -> Option<Layout> {
        Layout::parse_with_tables(src).map(|(l, _)| l)
    }

    /// The layout and where the container's reference tables are.
    pub fn parse_with_tables<R: ReadAt + ?Sized>(src: &R) -> Option<(Layout, Tables)> {
        let (mut l, t) = Layout::parse_container(src)?;
        l.end = src.size();
        Some((l, t))
    }

    fn parse_container<R: ReadAt + ?Sized>(src: &R) -> Option<(Layout, Tables)> {
        if src.size() > MAX_INPUT || src.size() < 64 {
            return None;
        }
        let mut magic = [0u8; 4];
        src.read_at(&mut magic, 0).ok()?;
        // Only what could be ours: ELF or MZ (the object crate would also take archives
        // and other formats).
        if &magic != b"\x7fELF" && &magic[..2] != b"MZ" {
            return None;
        }
        let cache = object::ReadCache::new(Cursor { src, pos: 0 });
        let file = object::File::parse(&cache).ok()?;
        if file.architecture() != object::Architecture::X86_64 {
            return None;
        }
        let mut sections = Vec::new();
        let mut tables = Tables::default();
        let pe = file.format() == object::BinaryFormat::Pe;
        let mut base = if pe { file.relative_address_base() } else { 0 };
        for s in file.sections() {
            let name = s.name().unwrap_or("");
            if let (Some((off, len)), false) = (s.file_range(), pe) {
                if name.starts_with(".rela") {
                    tables.rela.push((off, len));
                }
            }
            match (s.file_range(), name, pe) {
                (Some((off, len)), ".eh_frame", false) => {
                    tables.eh_frame = Some((off, len, s.address()))
                }
                (Some((off, len)), ".eh_frame_hdr", false) => {
                    tables.eh_frame_hdr = Some((off, len, s.address()));
                    base = s.address();
                }
                (Some((off, len)), ".pdata", true) => tables.pdata = Some((off, len)),
                (Some((off, len)), ".reloc", true) => tables.reloc = Some((off, len)),
                _ => {}
            }
            let (alloc, exec) = match s.flags() {
                // Thread-local sections are templates, not addresses references use
                // (.tbss overlaps the sections after it).
                SectionFlags::Elf { sh_flags, .. }
                    if sh_flags & u64::from(object::elf::SHF_TLS) != 0 =>
                {
                    (false, false)
                }
                SectionFlags::Elf { sh_flags, .. } => (
                    sh_flags & u64::from(object::elf::SHF_ALLOC) != 0,
                    sh_flags & u64::from(object::elf::SHF_EXECINSTR) != 0,
                ),
                SectionFlags::Coff { characteristics } => (
                    true,
                    characteristics
                        & (object::pe::IMAGE_SCN_MEM_EXECUTE | object::pe::IMAGE_SCN_CNT_CODE)
                        != 0,
                ),
                _ => return None,
            };
            if !alloc || s.size() == 0 {
                continue;
            }
            let (off, file_len) = s.file_range().unwrap_or((0, 0));
            let file_len = file_len.min(s.size());
            if off.checked_add(file_len)? > src.size() {
                return None;
            }
            sections.push(Section {
                off,
                file_len,
                va: s.address(),
                mem_len: s.size(),
                exec,
            });
            if sections.len() > MAX_SECTIONS {
                return None;
            }
        }
        let layout = Layout::new(sections, base)?;
        // Tables that are not wholly in the file are not read.
        let size = src.size();
        let inside = |off: u64, len: u64| off.checked_add(len).is_some_and(|e| e <= size);
        tables.rela.retain(|&(o, l)| inside(o, l));
        tables.eh_frame = tables.eh_frame.filter(|t| inside(t.0, t.1));
        tables.eh_frame_hdr = tables.eh_frame_hdr.filter(|t| inside(t.0, t.1));
        tables.pdata = tables.pdata.filter(|t| inside(t.0, t.1));
        tables.reloc = tables.reloc.filter(|t| inside(t.0, t.1));
        Some((layout, tables))
    }

    /// A layout from sections (any order); `None` if they overlap in memory or wrap.
    pub fn new(mut sections: Vec<Section>, base: u64) -> Option<Layout> {
        sections.sort_by_key(|s| s.va);
        for w in sections.windows(2) {
            if w[0].va.checked_add(w[0].mem_len)? > w[1].va {
                return None;
            }
        }
        for s in &sections {
            s.va.checked_add(s.mem_len)?;
            s.off.checked_add(s.file_len)?;
            if s.file_len > s.mem_len {
                return None;
            }
        }
        let mut by_off: Vec<(u64, u64, u64)> = sections
            .iter()
            .filter(|s| s.file_len > 0)
            .map(|s| (s.off, s.file_len, s.va))
            .collect();
        by_off.sort_unstable();
        let disjoint = by_off.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0);
        (!sections.is_empty()).then_some(Layout {
            start: 0,
            end: u64::MAX,
            sections,
            base,
            by_off: disjoint.then_some(by_off),
        })
    }

    /// The section holding address `va`.
    fn section_at(&self, va: u64) -> Option<&Section> {
        let i = self.sections.partition_point(|s| s.va <= va);
        let s = self.sections.get(i.checked_sub(1)?)?;
        (va - s.va < s.mem_len).then_some(s)
    }

    /// The same executable at `by` bytes into a larger file.
    fn shift(&mut self, tables: &mut Tables, by: u64) {
        self.start += by;
        self.end = self.end.saturating_add(by);
        for s in &mut self.sections {
            s.off += by;
        }
        for s in self.by_off.iter_mut().flatten() {
            s.0 += by;
        }
        for r in &mut tables.rela {
            r.0 += by;
        }
        for t in [&mut tables.eh_frame, &mut tables.eh_frame_hdr]
            .into_iter()
            .flatten()
        {
            t.0 += by;
        }
        for t in [&mut tables.pdata, &mut tables.reloc].into_iter().flatten() {
            t.0 += by;
        }
    }

    /// File offset of the byte at `va`, if it comes from the file.
    pub fn va_to_off(&self, va: u64) -> Option<u64> {
        let s = self.section_at(va)?;
        (va - s.va < s.file_len).then(|| s.off + (va - s.va))
    }

    /// The run of file bytes at consecutive addresses holding `off`, when the sections'
    /// file ranges are disjoint (`off_to_va` then maps every offset of the run by it).
    fn run_at(&self, off: u64) -> Option<Run> {
        let by_off = self.by_off.as_ref()?;
        let i = by_off.partition_point(|s| s.0 <= off);
        let r = *by_off.get(i.checked_sub(1)?)?;
        (off - r.0 < r.1).then_some(r)
    }

    /// `off_to_va`, looked up in `run` (from `run_at`) first.
    fn off_to_va_near(&self, run: Option<Run>, off: u64) -> Option<u64> {
        run_va(run, off).or_else(|| self.off_to_va(off))
    }

    /// Address of the file byte at `off` (the first section holding it).
    pub fn off_to_va(&self, off: u64) -> Option<u64> {
        if let Some(by_off) = &self.by_off {
            let i = by_off.partition_point(|s| s.0 <= off);
            let &(start, len, va) = by_off.get(i.checked_sub(1)?)?;
            return (off - start < len).then(|| va + (off - start));
        }
        self.sections
            .iter()
            .find(|s| off >= s.off && off - s.off < s.file_len)
            .map(|s| s.va + (off - s.off))
    }

    /// Encodes the layout for the patch.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.start);
        put_varint(out, self.end - self.start);
        put_varint(out, self.base);
        put_varint(out, self.sections.len() as u64);
        for s in &self.sections {
            put_varint(out, s.off);
            put_varint(out, s.file_len);
            put_varint(out, s.va);
            put_varint(out, s.mem_len);
            out.push(u8::from(s.exec));
        }
    }

    pub fn decode(b: &[u8], at: &mut usize) -> Result<Layout, FormatError> {
        let start = get_varint(b, at)?;
        let end = start
            .checked_add(get_varint(b, at)?)
            .ok_or(FormatError::Bounds("layout file range"))?;
        let base = get_varint(b, at)?;
        let n = get_varint(b, at)?;
        if n == 0 || n > MAX_SECTIONS as u64 {
            return Err(FormatError::Bounds("layout section count"));
        }
        let mut sections = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let off = get_varint(b, at)?;
            let file_len = get_varint(b, at)?;
            let va = get_varint(b, at)?;
            let mem_len = get_varint(b, at)?;
            let exec = match b.get(*at) {
                Some(0) => false,
                Some(1) => true,
                Some(_) => return Err(FormatError::Bounds("layout section flag")),
                None => return Err(FormatError::Truncated),
            };
            *at += 1;
            sections.push(Section {
                off,
                file_len,
                va,
                mem_len,
                exec,
            });
        }
        let mut l =
            Layout::new(sections, base).ok_or(FormatError::Bounds("layout sections overlap"))?;
        (l.start, l.end) = (start, end);
        Ok(l)
    }
}

/// A view of `len` bytes of a larger input from `start` (a tar member's data).
struct Sub<'a, R: ?Sized> {
    src: &'a R,
    start: u64,
    len: u64,
}

impl<R: ReadAt + ?Sized> ReadAt for Sub<'_, R> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.src.read_at(buf, self.start + offset)
    }
}

/// The data ranges (start, length) of a tar archive's regular files, walked with the
/// `tar` crate, in file order; a damaged header ends the walk.
fn tar_members<R: ReadAt + ?Sized>(src: &R) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut archive = tar::Archive::new(Cursor { src, pos: 0 });
    let Ok(entries) = archive.entries_with_seek() else {
        return out;
    };
    for entry in entries {
        let Ok(entry) = entry else { break };
        if !entry.header().entry_type().is_file() || entry.size() < 64 {
            continue;
        }
        let (start, len) = (entry.raw_file_position(), entry.size());
        if start.checked_add(len).is_none_or(|e| e > src.size()) {
            break;
        }
        out.push((start, len));
        if out.len() >= MAX_PARTS * 4 {
            break;
        }
    }
    out
}

/// The data ranges of a zip archive's stored (uncompressed) entries, from its central
/// directory (read with the `zip` crate), sorted by start. Compressed entries are left
/// as they are: their bytes are deflate output, diffed as bytes.
fn zip_members<R: ReadAt + ?Sized>(src: &R) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let Ok(mut z) = zip::ZipArchive::new(Cursor { src, pos: 0 }) else {
        return out;
    };
    for i in 0..z.len().min(MAX_PARTS * 4) {
        let Ok(f) = z.by_index_raw(i) else { continue };
        if f.compression() != zip::CompressionMethod::Stored || f.size() < 64 {
            continue;
        }
        let Some(start) = f.data_start() else {
            continue;
        };
        if start.checked_add(f.size()).is_some_and(|e| e <= src.size()) {
            out.push((start, f.size()));
        }
    }
    out.sort_unstable();
    out
}

/// Most executables one file may hold (tar members).
const MAX_PARTS: usize = 1 << 16;

/// Files are found at multiples of this in inputs that are neither an executable nor an
/// archive: file systems (ext4, XFS, btrfs, FAT and NTFS clusters) start every file's
/// data on a block, so a disk or partition image's ELF and PE files start on 4 KiB.
pub const ALIGN: u64 = 4096;

/// Bytes an x86-64 ELF or PE file found at `at` takes, from its own headers: the end of
/// its last section, program header, section header table or (PE) certificate table.
/// `None` if `at` does not start one. Reads a few hundred bytes of headers (and the
/// section header table) only.
fn extent_at<R: ReadAt + ?Sized>(src: &R, at: u64) -> Option<u64> {
    let size = src.size();
    let left = size.checked_sub(at)?;
    let mut h = [0u8; 64];
    if left < 64 {
        return None;
    }
    src.read_at(&mut h, at).ok()?;
    let u16_at = |b: &[u8], i: usize| u64::from(u16::from_le_bytes([b[i], b[i + 1]]));
    let u32_at = |b: &[u8], i: usize| {
        u64::from(u32::from_le_bytes(
            b[i..i + 4].try_into().unwrap_or_default(),
        ))
    };
    let u64_at =
        |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let mut end = 0u64;
    if h[..4] == *b"\x7fELF" {
        // ELFCLASS64, little-endian, EM_X86_64.
        if h[4] != 2 || h[5] != 1 || u16_at(&h, 18) != 62 {
            return None;
        }
        let (phoff, shoff) = (u64_at(&h, 32), u64_at(&h, 40));
        let (phsz, phn) = (u16_at(&h, 54), u16_at(&h, 56));
        let (shsz, shn) = (u16_at(&h, 58), u16_at(&h, 60));
        // ELF64 header sizes: anything else is not a file we take.
        if shoff == 0
            || shn == 0
            || shsz != 64
            || (phn > 0 && phsz != 56)
            || shn > MAX_SECTIONS as u64
            || phn > MAX_SECTIONS as u64
        {
            return None;
        }
        end = end.max(phoff.checked_add(phsz * phn)?);
        end = end.max(shoff.checked_add(shsz * shn)?);
        if end > left {
            return None;
        }
        let mut t = vec![0u8; (shsz * shn) as usize];
        src.read_at(&mut t, at + shoff).ok()?;
        for sh in t.chunks_exact(shsz as usize) {
            // SHT_NOBITS sections take no file bytes.
            if u32_at(sh, 4) != 8 {
                end = end.max(u64_at(sh, 24).checked_add(u64_at(sh, 32))?);
            }
        }
        let mut t = vec![0u8; (56 * phn) as usize];
        src.read_at(&mut t, at + phoff).ok()?;
        for ph in t.chunks_exact(56) {
            end = end.max(u64_at(ph, 8).checked_add(u64_at(ph, 32))?);
        }
    } else if h[..2] == *b"MZ" {
        let pe = u32_at(&h, 0x3c);
        let mut c = [0u8; 24 + 240];
        if pe.checked_add(c.len() as u64)? > left {
            return None;
        }
        src.read_at(&mut c, at + pe).ok()?;
        // "PE\0\0", IMAGE_FILE_MACHINE_AMD64, a PE32+ optional header.
        if c[..4] != *b"PE\0\0" || u16_at(&c, 4) != 0x8664 || u16_at(&c, 24) != 0x20b {
            return None;
        }
        let (nsec, opt) = (u16_at(&c, 6), u16_at(&c, 20));
        if nsec == 0 || nsec > MAX_SECTIONS as u64 {
            return None;
        }
        end = u32_at(&c, 24 + 60); // SizeOfHeaders
                                   // The certificate table's entry holds a file offset, not an address.
        if opt >= 112 + 5 * 8 {
            end = end.max(u32_at(&c, 24 + 112 + 32) + u32_at(&c, 24 + 112 + 36));
        }
        let mut t = vec![0u8; 40 * nsec as usize];
        src.read_at(&mut t, at + pe + 24 + opt).ok()?;
        for sec in t.chunks_exact(40) {
            end = end.max(u32_at(sec, 20) + u32_at(sec, 16));
        }
    } else {
        return None;
    }
    (end >= 64 && end <= left && end <= MAX_INPUT).then_some(end)
}

/// The executables of an ext4 image: each ELF or PE file's layout read through its
/// extents, then moved to where its bytes are in the image (a section the file's holes
/// split becomes several).
fn ext4_parts<R: ReadAt + ?Sized>(
    src: &R,
    files: &[ext4::FileMap],
) -> Option<(Image, Vec<Tables>)> {
    let mut found: Vec<(Layout, Tables)> = files
        .iter()
        .filter_map(|map| {
            let (l, t) = Layout::parse_with_tables(&ext4::Mapped { src, map })?;
            in_image(&l, &t, map)
        })
        .collect();
    found.sort_by_key(|(l, _)| l.start);
    let (mut parts, mut tables) = (Vec::new(), Vec::new());
    for (l, t) in found {
        // Parts stay disjoint: a file interleaved with an earlier one is left out.
        if parts.last().is_some_and(|p: &Layout| p.end > l.start) || parts.len() >= MAX_PARTS {
            continue;
        }
        parts.push(l);
        tables.push(t);
    }
    (!parts.is_empty()).then_some((Image { parts }, tables))
}

/// A file's layout and tables (in the file's offsets) in the image's offsets.
fn in_image(l: &Layout, t: &Tables, map: &ext4::FileMap) -> Option<(Layout, Tables)> {
    let start = map.extents.first()?.1;
    let end = map.extents.iter().map(|e| e.1 + e.2).max()?;
    if end - start > MAX_INPUT || map.extents.iter().any(|e| e.1 < start) {
        return None;
    }
    let mut sections = Vec::new();
    for s in &l.sections {
        for (off, rel, len) in map.pieces(s.off, s.file_len) {
            sections.push(Section {
                off,
                file_len: len,
                va: s.va + rel,
                mem_len: len,
                exec: s.exec,
            });
        }
        if s.mem_len > s.file_len {
            sections.push(Section {
                off: start,
                file_len: 0,
                va: s.va + s.file_len,
                mem_len: s.mem_len - s.file_len,
                exec: s.exec,
            });
        }
        if sections.len() > MAX_SECTIONS {
            return None;
        }
    }
    let mut layout = Layout::new(sections, l.base)?;
    (layout.start, layout.end) = (start, end);
    // A table is read in one piece: one the file's holes split is left out.
    let whole = |off: u64, len: u64| match map.pieces(off, len)[..] {
        [(at, 0, n)] if n == len => Some(at),
        _ => None,
    };
    let tables = Tables {
        rela: t
            .rela
            .iter()
            .filter_map(|&(o, n)| Some((whole(o, n)?, n)))
            .collect(),
        eh_frame: t
            .eh_frame
            .and_then(|(o, n, va)| Some((whole(o, n)?, n, va))),
        eh_frame_hdr: t
            .eh_frame_hdr
            .and_then(|(o, n, va)| Some((whole(o, n)?, n, va))),
        pdata: t.pdata.and_then(|(o, n)| Some((whole(o, n)?, n))),
        reloc: t.reloc.and_then(|(o, n)| Some((whole(o, n)?, n))),
    };
    Some((layout, tables))
}

/// The x86-64 ELF and PE files of an input that is neither (a file system or disk
/// image): each multiple of `ALIGN` is checked for one, whose extent its headers give;
/// the search goes on after it. A file whose blocks are not contiguous is taken as
/// laid out contiguously: its references past the break are wrong, which costs bytes
/// (the encoder then leaves it unpredicted), never correctness.
fn aligned_members<R: ReadAt + ?Sized>(src: &R) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = 0u64;
    let mut head = [0u8; 2];
    while at + 64 <= src.size() && out.len() < MAX_PARTS * 4 {
        if src.read_at(&mut head, at).is_err() {
            break;
        }
        if head == *b"\x7fE" || head == *b"MZ" {
            if let Some(len) = extent_at(src, at) {
                out.push((at, len));
                at = (at + len).div_ceil(ALIGN) * ALIGN;
                continue;
            }
        }
        at += ALIGN;
    }
    out
}

/// The executables a file is or holds: the whole file, or the ELF and PE members of a
/// tar archive or the stored entries of a zip archive (each then transformed on its
/// own, with its own addresses).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    /// Sorted by file range, disjoint.
    pub parts: Vec<Layout>,
}

impl Image {
    pub fn parse<R: ReadAt + ?Sized>(src: &R) -> Option<Image> {
        Image::parse_with_tables(src).map(|(i, _)| i)
    }

    /// The executables and their tables; `None` if there is none.
    pub fn parse_with_tables<R: ReadAt + ?Sized>(src: &R) -> Option<(Image, Vec<Tables>)> {
        if src.size() > MAX_IMAGE || src.size() < 64 {
            return None;
        }
        if let Some((l, t)) = Layout::parse_with_tables(src) {
            return Some((Image { parts: vec![l] }, vec![t]));
        }
        let mut magic = [0u8; 5];
        src.read_at(&mut magic[..4], 0).ok()?;
        let members = if &magic[..4] == b"PK\x03\x04" {
            zip_members(src)
        } else if src.size() >= 512 && src.read_at(&mut magic, 257).is_ok() && &magic == b"ustar" {
            tar_members(src)
        } else if let Some(files) = ext4::files(src, |m| m == b"\x7fELF" || m[..2] == *b"MZ") {
            return ext4_parts(src, &files);
        } else {
            aligned_members(src)
        };
        let mut parts: Vec<Layout> = Vec::new();
        let mut tables = Vec::new();
        for (start, len) in members {
            // Members sorted by start; one overlapping the previous (a crafted zip) is
            // left out, so the parts stay disjoint.
            if parts.last().is_some_and(|p| p.end > start) {
                continue;
            }
            let sub = Sub { src, start, len };
            if let Some((mut l, mut t)) = Layout::parse_with_tables(&sub) {
                l.shift(&mut t, start);
                parts.push(l);
                tables.push(t);
                if parts.len() >= MAX_PARTS {
                    break;
                }
            }
        }
        (!parts.is_empty()).then_some((Image { parts }, tables))
    }

    /// The executable holding file offset `off`.
    pub fn part(&self, off: u64) -> Option<&Layout> {
        self.part_index(off).map(|i| &self.parts[i])
    }

    /// Which of the executables holds file offset `off`.
    pub fn part_index(&self, off: u64) -> Option<usize> {
        let i = self
            .parts
            .partition_point(|p| p.start <= off)
            .checked_sub(1)?;
        (off < self.parts[i].end).then_some(i)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint(out, self.parts.len() as u64);
        for p in &self.parts {
            p.encode(out);
        }
    }

    pub fn decode(b: &[u8], at: &mut usize) -> Result<Image, FormatError> {
        let n = get_varint(b, at)?;
        if n == 0 || n > MAX_PARTS as u64 {
            return Err(FormatError::Bounds("image part count"));
        }
        let mut parts = Vec::with_capacity(n as usize);
        let mut sections = 0;
        for _ in 0..n {
            let p = Layout::decode(b, at)?;
            sections += p.sections.len();
            if sections > MAX_IMAGE_SECTIONS {
                return Err(FormatError::Bounds("image section count"));
            }
            if parts.last().is_some_and(|l: &Layout| l.end > p.start) || p.start > p.end {
                return Err(FormatError::Bounds("image parts overlap"));
            }
            parts.push(p);
        }
        Ok(Image { parts })
    }
}

/// Reference kinds (how a field's value follows from its target). 0–15: a signed
/// 32-bit displacement from the end of an x86-64 instruction, `field + 4 + kind` (the
/// kind is the immediate length after the displacement).
pub const K_PCREL32: u8 = 16;
/// Signed 32-bit, from the field itself to the target (DWARF `pcrel|sdata4`).
/// Signed 32-bit, from the target to the field (an FDE's CIE pointer).
pub const K_NEGREL32: u8 = 17;
/// A 64-bit address.
pub const K_ABS64: u8 = 18;
/// Signed 32-bit, from the layout's base (DWARF `datarel|sdata4` in `.eh_frame_hdr`).
pub const K_DATAREL32: u8 = 19;
/// Unsigned 32-bit, from the layout's base (a PE RVA).
pub const K_RVA32: u8 = 20;

/// Bytes a reference of `kind` occupies.
pub fn width(kind: u8) -> u64 {
    if kind == K_ABS64 {
        8
    } else {
        4
    }
}

/// Immediate length after a RIP-relative displacement for one-byte opcodes that take a
/// ModRM operand, or `None` for opcodes not scanned.
fn imm_after_modrm(op: u8, modrm: u8) -> Option<u8> {
    match op {
        // ALU r/m forms, test, xchg, mov, lea, movsxd.
        0x00..=0x03
        | 0x08..=0x0b
        | 0x10..=0x13
        | 0x18..=0x1b
        | 0x20..=0x23
        | 0x28..=0x2b
        | 0x30..=0x33
        | 0x38..=0x3b
        | 0x63
        | 0x84..=0x8b
        | 0x8d => Some(0),
        0x80 | 0x83 | 0xc6 | 0xc0 | 0xc1 => Some(1),
        0x81 | 0xc7 => Some(4),
        // inc, dec, call, jmp, push [rip+disp].
        0xff => matches!(modrm, 0x05 | 0x0d | 0x15 | 0x25 | 0x35).then_some(0),
        _ => None,
    }
}

/// The same for two-byte (0F-prefixed) opcodes: SSE moves and arithmetic, movzx/movsx,
/// cmov, imul, and the prefetch/nop group.
fn imm_after_modrm_0f(op: u8) -> Option<u8> {
    match op {
        0x10..=0x18
        | 0x1f
        | 0x28..=0x2f
        | 0x40..=0x4f
        | 0x51..=0x6f
        | 0x7e
        | 0x7f
        | 0xaf
        | 0xb6
        | 0xb7
        | 0xbe
        | 0xbf
        | 0xd4..=0xff => Some(0),
        0x70 | 0xc2 | 0xc6 => Some(1),
        _ => None,
    }
}

/// The references found in a file: field offsets (sorted, fields not overlapping) and
/// their kinds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Refs {
    pub fields: Vec<u32>,
    pub kinds: Vec<u8>,
}

/// Bytes of code per reference the scan expects at most: its lists are sized for that
/// up front (real code has one per 20–30 bytes). Grown by doubling instead, they were a
/// sixth of apply's page faults, most of them in copies; room never written to costs
/// no page.
const CODE_BYTES_PER_REF: u64 = 16;
/// Room is made for at most this much code (20 MiB of lists); past it they grow as
/// needed, so a layout claiming huge sections reserves nothing it does not fill.
const MAX_ROOM_CODE: u64 = 64 << 20;

/// Bytes of code the scan reads in `layout` within the file range `lo..hi` (sections
/// cut at the layout's end), at most `MAX_ROOM_CODE`.
fn code_bytes(layout: &Layout, (lo, hi): (u64, u64)) -> u64 {
    let hi = hi.min(layout.end);
    let code = layout.sections.iter().filter(|s| s.exec);
    let sum: u64 = code
        .map(|s| {
            (s.off.saturating_add(s.file_len))
                .min(hi)
                .saturating_sub(s.off.max(lo))
        })
        .fold(0, u64::saturating_add);
    sum.min(MAX_ROOM_CODE)
}

impl Refs {
    /// Empty, with room for the references of `code` bytes of code.
    fn with_room(code: u64) -> Refs {
        let n = usize::try_from(code / CODE_BYTES_PER_REF).unwrap_or(0);
        Refs {
            fields: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, field: u64, kind: u8) {
        if let Ok(f) = u32::try_from(field) {
            self.fields.push(f);
            self.kinds.push(kind);
        }
    }

    /// Reference `i`'s (field, kind) in one integer, which sorts as the pair does.
    fn key(&self, i: usize) -> u64 {
        u64::from(self.fields[i]) << 8 | u64::from(self.kinds[i])
    }

    /// Sorted by field, then kind.
    fn sorted(self) -> Refs {
        // Fields strictly ascending (what the code scan gives) is sorted; otherwise the
        // pairs are compared whole.
        if self.fields.windows(2).all(|w| w[0] < w[1])
            || (1..self.fields.len()).all(|i| self.key(i - 1) <= self.key(i))
        {
            return self;
        }
        let mut both: Vec<u64> = (0..self.fields.len()).map(|i| self.key(i)).collect();
        both.sort_unstable();
        Refs {
            fields: both.iter().map(|&p| (p >> 8) as u32).collect(),
            kinds: both.iter().map(|&p| p as u8).collect(),
        }
    }

    /// Appends to `out` (whose fields all lie before these) the references of `a` and
    /// `b` sorted by field and kind, leaving out any field overlapping the one before
    /// it or reaching past `size`. The code scan's list comes sorted, and is merged
    /// with the sorted table list rather than sorted again: in `a`'s space (no second
    /// list of the whole size), and as one move when one list lies wholly before the
    /// other (an executable's tables mostly lie before or after its code).
    fn settle_into(a: Refs, b: Refs, size: u64, out: &mut Refs) {
        let (mut a, b) = (a.sorted(), b.sorted());
        let (na, nb) = (a.fields.len(), b.fields.len());
        if na == 0 || nb == 0 || a.key(na - 1) <= b.key(0) {
            a.fields.extend_from_slice(&b.fields);
            a.kinds.extend_from_slice(&b.kinds);
        } else if b.key(nb - 1) < a.key(0) {
            a.fields.splice(0..0, b.fields.iter().copied());
            a.kinds.splice(0..0, b.kinds.iter().copied());
        } else {
            // Merged from the back into `a`'s space, then filtered in place.
            a.fields.resize(na + nb, 0);
            a.kinds.resize(na + nb, 0);
            let (mut i, mut j) = (na, nb);
            while j > 0 {
                let k = i + j - 1;
                if i > 0 && a.key(i - 1) > b.key(j - 1) {
                    a.fields[k] = a.fields[i - 1];
                    a.kinds[k] = a.kinds[i - 1];
                    i -= 1;
                } else {
                    a.fields[k] = b.fields[j - 1];
                    a.kinds[k] = b.kinds[j - 1];
                    j -= 1;
                }
            }
        }
        drop(b);
        let (mut kept, mut end) = (0, 0u64);
        let n = a.fields.len();
        let (fields, kinds) = (&mut a.fields[..n], &mut a.kinds[..n]);
        for i in 0..n {
            let (f, k) = (fields[i], kinds[i]);
            let w = width(k);
            if u64::from(f) >= end && u64::from(f) + w <= size {
                end = u64::from(f) + w;
                fields[kept] = f;
                kinds[kept] = k;
                kept += 1;
            }
        }
        a.fields.truncate(kept);
        a.kinds.truncate(kept);
        if out.fields.is_empty() {
            *out = a;
        } else {
            out.fields.extend_from_slice(&a.fields);
            out.kinds.extend_from_slice(&a.kinds);
        }
    }
}

/// For each first byte: 2 if it starts a branch or a two-byte opcode (`E8`, `E9`, `0F`),
/// 1 if it is a one-byte opcode `imm_after_modrm` takes (a candidate then needs a
/// RIP-relative ModRM byte next: `modrm & 0xC7 == 0x05`), 0 if no candidate starts
/// with it. A filter in front of `candidate`, which decides as before.
static FIRST_BYTE: std::sync::LazyLock<[u8; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [0u8; 256];
    for (b, class) in t.iter_mut().enumerate() {
        let b = b as u8;
        *class = if matches!(b, 0xe8 | 0xe9 | 0x0f) {
            2
        } else {
            u8::from((0..=255u8).any(|m| imm_after_modrm(b, m).is_some()))
        };
    }
    t
});

/// `a + b` byte by byte, each byte wrapping on its own (no carry into the next).
fn bytewise_add(a: u64, b: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    ((a & LOW7) + (b & LOW7)) ^ ((a ^ b) & !LOW7)
}

/// `a - b` byte by byte, each byte wrapping on its own (no borrow from the next).
fn bytewise_sub(a: u64, b: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    ((a | !LOW7) - (b & LOW7)) ^ ((a ^ !b) & !LOW7)
}

/// 0x80 in each byte of `v` that is zero, 0 in the others (exact: no carries cross
/// bytes).
fn zero_bytes(v: u64) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    !(((v & LOW7) + LOW7) | v | LOW7)
}

/// Where a scanned reference may point, page by page (4 KiB of address space from the
/// image's lowest address): most candidates the scan finds are false and point outside
/// every section, and a table lookup rejects them or accepts them without searching the
/// sections. Pages that a section covers only in part are decided by the search.
struct TargetPages {
    lowest: u64,
    highest: u64,
    /// Per page: `PAGE_NONE`, `PAGE_DATA`, `PAGE_CODE` or `PAGE_SEARCH`; empty when the
    /// address space is too large for a table (every candidate is then searched).
    pages: Vec<u8>,
}

const PAGE_SHIFT: u32 = 12;
/// No section holds any address of the page.
const PAGE_NONE: u8 = 0;
/// One section without code holds all of the page.
const PAGE_DATA: u8 = 1;
/// One code section holds all of the page.
const PAGE_CODE: u8 = 2;
/// The page is partly in a section: `Layout::section_at` decides.
const PAGE_SEARCH: u8 = 3;
/// At most this many pages (1 GiB of address space, a 256 KiB table).
const MAX_TARGET_PAGES: u64 = 1 << 18;

impl TargetPages {
    fn new(layout: &Layout) -> TargetPages {
        let lowest = layout.sections.first().map_or(0, |s| s.va);
        let highest = layout
            .sections
            .iter()
            .map(|s| s.va.saturating_add(s.mem_len))
            .max()
            .unwrap_or(0);
        let span = highest.saturating_sub(lowest);
        let mut pages = Vec::new();
        if span.div_ceil(1 << PAGE_SHIFT) <= MAX_TARGET_PAGES {
            pages = vec![PAGE_NONE; span.div_ceil(1 << PAGE_SHIFT) as usize];
            for s in layout.sections.iter().filter(|s| s.mem_len > 0) {
                let (from, to) = (s.va - lowest, s.va - lowest + s.mem_len);
                let (first, last) = (from >> PAGE_SHIFT, (to - 1) >> PAGE_SHIFT);
                for page in first..=last {
                    let (p_from, p_to) = (page << PAGE_SHIFT, (page + 1) << PAGE_SHIFT);
                    let whole = from <= p_from && p_to <= to;
                    // A page two sections touch is searched (a layout's sections do
                    // not overlap, so that is a page neither covers whole).
                    let class = &mut pages[page as usize];
                    *class = match (whole && *class == PAGE_NONE, s.exec) {
                        (true, true) => PAGE_CODE,
                        (true, false) => PAGE_DATA,
                        (false, _) => PAGE_SEARCH,
                    };
                }
            }
        }
        TargetPages {
            lowest,
            highest,
            pages,
        }
    }

    /// Whether address `t` is in a section of `layout` (the layout the table was made
    /// from), and in code when `code` asks for it.
    #[inline]
    fn takes(&self, layout: &Layout, t: u64, code: bool) -> bool {
        if t < self.lowest || t >= self.highest {
            return false;
        }
        let class = match self.pages.get(((t - self.lowest) >> PAGE_SHIFT) as usize) {
            Some(&c) => c,
            None => PAGE_SEARCH,
        };
        match class {
            PAGE_NONE => false,
            PAGE_DATA => !code,
            PAGE_CODE => true,
            _ => layout.section_at(t).is_some_and(|s| s.exec || !code),
        }
    }
}

/// Positions the code scan tries at once (`block_starts`).
const BLOCK: usize = 64;

/// Bit k set when position k of `b` (`BLOCK` positions and the byte after them) may
/// start a candidate: E8, E9 or 0F there, or a RIP-relative ModRM byte after it
/// (`modrm & 0xC7 == 0x05`). Every candidate's position is flagged; `candidate` decides.
#[inline]
fn block_starts(b: &[u8]) -> u64 {
    let word = |k: usize| u64::from_le_bytes(b[k..k + 8].try_into().unwrap_or_default());
    let mut flags = 0u64;
    for w in 0..BLOCK / 8 {
        let (x, next) = (word(8 * w), word(8 * w + 1));
        let maybe = zero_bytes((x & 0xfefe_fefe_fefe_fefe) ^ 0xe8e8_e8e8_e8e8_e8e8)
            | zero_bytes(x ^ 0x0f0f_0f0f_0f0f_0f0f)
            | zero_bytes((next & 0xc7c7_c7c7_c7c7_c7c7) ^ 0x0505_0505_0505_0505);
        // Each flagged byte's top bit, gathered into one bit per byte in order.
        flags |= ((maybe >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * w);
    }
    flags
}

/// A candidate at `i` in `code` (a code section's bytes): (field start, imm length,
/// whether the target must be code).
#[inline]
fn candidate(code: &[u8], i: usize) -> Option<(usize, u8, bool)> {
    let b0 = code[i];
    let b1 = *code.get(i + 1)?;
    match b0 {
        0xe8 | 0xe9 => Some((i + 1, 0, true)),
        0x0f if b1 & 0xf0 == 0x80 => Some((i + 2, 0, true)),
        0x0f => {
            let modrm = *code.get(i + 2)?;
            let imm = imm_after_modrm_0f(b1)?;
            (modrm & 0xc7 == 0x05).then_some((i + 3, imm, false))
        }
        _ => {
            let imm = imm_after_modrm(b0, b1)?;
            (b1 & 0xc7 == 0x05).then_some((i + 2, imm, false))
        }
    }
}

/// Scans the layout's executable sections of `src` for references: at each byte, the
/// first pattern that matches (rel32 call/jmp, rel32 jcc, a RIP-relative ModRM operand)
/// whose target lies in the image (in code, for branches) is taken, and the scan goes on
/// after its instruction. Reads the code in bounded pieces.
fn scan_code<R: ReadAt + ?Sized>(
    src: &R,
    layout: &Layout,
    refs: &mut Refs,
    piece: usize,
) -> io::Result<()> {
    scan_code_in(src, layout, refs, piece, (0, u64::MAX), &mut None)
}

/// `scan_code` over the file range `lo..hi` of the code only (a section is scanned from
/// `lo` when it holds it); `hits`, when given, gets the (instruction start, end) of each
/// reference whose instruction starts in its range `.0..`.
fn scan_code_in<R: ReadAt + ?Sized>(
    src: &R,
    layout: &Layout,
    refs: &mut Refs,
    piece: usize,
    (lo, hi): (u64, u64),
    hits: &mut Option<(u64, Vec<(u64, u64)>)>,
) -> io::Result<()> {
    const LOOKAHEAD: usize = 16;
    let piece = piece.max(LOOKAHEAD);
    let mut buf = vec![0u8; piece + LOOKAHEAD];
    let mut code: Vec<&Section> = layout.sections.iter().filter(|s| s.exec).collect();
    code.sort_by_key(|s| s.off);
    let mut done_to = 0u64; // sections sharing file bytes are scanned once
    let targets = TargetPages::new(layout);
    for s in code {
        let start = s.off.max(done_to);
        let end = s.off + s.file_len;
        if start >= end {
            continue;
        }
        done_to = end;
        let (start, end) = (start.max(lo), end.min(hi));
        if start >= end {
            continue;
        }
        let mut at = start; // file offset of buf[0]
        let mut next = start; // the scan resumes here
        while at < end {
            let n = ((end - at) as usize).min(piece + LOOKAHEAD);
            let chunk = src.view(&mut buf[..n], at)?;
            let scan_to = if at + n as u64 == end { n } else { piece };
            let mut i = (next - at) as usize;
            let first = &*FIRST_BYTE;
            // The reference whose instruction starts at `i`, if one does: recorded, and
            // the end of its instruction returned.
            let mut take = |i: usize| -> Option<usize> {
                // Most bytes start no candidate: decided by the table and, for ModRM
                // opcodes, the next byte (a candidate's ModRM is RIP-relative).
                match first[usize::from(chunk[i])] {
                    0 => return None,
                    1 if chunk.get(i + 1).is_none_or(|&m| m & 0xc7 != 0x05) => return None,
                    _ => {}
                }
                let (field, imm, branch) = candidate(chunk, i)?;
                let after = field + 4 + usize::from(imm);
                if after > chunk.len() {
                    return None;
                }
                let disp = i32::from_le_bytes([
                    chunk[field],
                    chunk[field + 1],
                    chunk[field + 2],
                    chunk[field + 3],
                ]);
                let anchor_va = s.va + (at + after as u64 - s.off);
                let hit = anchor_va
                    .checked_add_signed(i64::from(disp))
                    .is_some_and(|t| targets.takes(layout, t, branch));
                if !hit {
                    return None;
                }
                refs.push(at + field as u64, imm);
                if let Some((from, h)) = hits {
                    if at + i as u64 >= *from && h.len() < SPLIT_HITS {
                        h.push((at + i as u64, at + after as u64));
                    }
                }
                Some(after)
            };
            while i < scan_to {
                // 64 positions at a time: only those `block_starts` flags can start a
                // reference, and a reference found skips the positions its instruction
                // covers (the same positions are tried as one by one).
                if i + BLOCK <= scan_to && i + BLOCK < chunk.len() {
                    let base = i;
                    let mut flags = block_starts(&chunk[base..=base + BLOCK]);
                    i += BLOCK;
                    while flags != 0 {
                        let at_flag = base + flags.trailing_zeros() as usize;
                        match take(at_flag) {
                            Some(after) if after >= base + BLOCK => {
                                i = after;
                                break;
                            }
                            Some(after) => flags &= !0u64 << (after - base),
                            None => flags &= flags - 1,
                        }
                    }
                    continue;
                }
                i = take(i).unwrap_or(i + 1);
            }
            next = at + i as u64;
            at += scan_to as u64;
        }
    }
    Ok(())
}

/// Every reference of a file with this layout and these tables: code scanned as in
/// `scan_code`, then the tables' address fields.
pub fn find_refs<R: ReadAt + ?Sized>(
    src: &R,
    image: &Image,
    tables: &[Tables],
) -> io::Result<Refs> {
    find_refs_in(src, image, tables, |_| true)
}

/// The references of the executables `want` takes (by index), as `find_refs` finds
/// them: apply needs none of those the patch leaves unpredicted.
pub fn find_refs_in<R: ReadAt + ?Sized>(
    src: &R,
    image: &Image,
    tables: &[Tables],
    want: impl Fn(usize) -> bool,
) -> io::Result<Refs> {
    // Settled part by part (parts are disjoint and in file order, so the result is
    // sorted): the sort's scratch is one executable's, not the image's.
    let mut refs = Refs::default();
    for (i, (layout, tables)) in image.parts.iter().zip(tables).enumerate() {
        if want(i) {
            let (code, table) = part_refs(src, layout, tables)?;
            Refs::settle_into(code, table, src.size(), &mut refs);
        }
    }
    Ok(refs)
}

/// Code at least this large (in its largest section) is scanned as two halves on two
/// threads (`code_refs_split`).
const SPLIT_CODE: u64 = 1 << 20;
/// The first half's scan goes this far into the second's, to find where the two agree...
const SPLIT_WINDOW: u64 = 4096;
/// ...recording at most this many instructions (more than the window can hold).
const SPLIT_HITS: usize = 1024;
/// Code is read in pieces this large.
const SCAN_PIECE: usize = 256 << 10;

/// Where to split `layout`'s code scan: the middle of its largest executable section,
/// if that is large and shares its file bytes with no other executable section.
fn split_point(layout: &Layout) -> Option<u64> {
    let code = || layout.sections.iter().filter(|s| s.exec);
    let big = code().max_by_key(|s| s.file_len)?;
    let (start, end) = (big.off, big.off + big.file_len);
    let alone = code()
        .filter(|s| !std::ptr::eq(*s, big))
        .all(|s| s.off + s.file_len <= start || s.off >= end);
    (big.file_len >= SPLIT_CODE && alone).then_some(start + big.file_len / 2)
}

/// The code references `code_refs` finds, found by two scans on two threads: one up to
/// `split` (a file offset inside an executable section no other one shares bytes with)
/// and a little past it, one from it. A scan's only state is its position, so from the
/// first position at or after `split` that both scans stop at (each skips only the
/// inside of the instructions it takes), they find the same references; the first
/// scan's are kept before it and the second's from it. If they do not agree within
/// `SPLIT_WINDOW` (not seen on real code), one scan does it all.
pub fn code_refs_split<R: ReadAt + ?Sized>(
    src: &R,
    layout: &Layout,
    piece: usize,
    split: u64,
) -> io::Result<Refs> {
    // The first half's list gets room for the second's too: it is appended there.
    let scan =
        |range: (u64, u64), from: u64, room: (u64, u64)| -> io::Result<(Refs, Vec<(u64, u64)>)> {
            let mut refs = Refs::with_room(code_bytes(layout, room));
            let mut hits = Some((from, Vec::new()));
            scan_code_in(src, layout, &mut refs, piece, range, &mut hits)?;
            Ok((refs, hits.map(|h| h.1).unwrap_or_default()))
        };
    let past = split.saturating_add(SPLIT_WINDOW);
    let (first, second) = rayon::join(
        || scan((0, past), split.saturating_sub(32), (0, u64::MAX)),
        || scan((split, u64::MAX), split, (split, u64::MAX)),
    );
    let ((mut a, a_hits), (b, b_hits)) = (first?, second?);
    let mut agree = split;
    while let Some(&(_, end)) = a_hits
        .iter()
        .chain(&b_hits)
        .find(|&&(start, end)| start < agree && agree < end)
    {
        agree = end;
    }
    if agree + 32 > past {
        return code_refs(src, layout, piece);
    }
    let keep = a.fields.partition_point(|&f| u64::from(f) < agree);
    a.fields.truncate(keep);
    a.kinds.truncate(keep);
    let from = b.fields.partition_point(|&f| u64::from(f) < agree);
    a.fields.extend_from_slice(&b.fields[from..]);
    a.kinds.extend_from_slice(&b.kinds[from..]);
    Ok(a)
}

/// One executable's references: its code's and its tables' (found on two threads).
fn part_refs<R: ReadAt + ?Sized>(
    src: &R,
    layout: &Layout,
    tables: &Tables,
) -> io::Result<(Refs, Refs)> {
    // The tables first on this thread, the code offered to another: rayon's thieves
    // take the oldest task, and with the code first they took the tables, then the
    // code scan's second half, leaving one thread idle for its length (ruff pair).
    let (table, code) = rayon::join(
        // Sorted here, beside the longer code scan, not after it (on the ruff pair the
        // sort after the scan held up apply's first op by milliseconds).
        || -> io::Result<Refs> {
            let mut r = Refs::default();
            table_refs(src, layout, tables, &mut r)?;
            Ok(r.sorted())
        },
        || match split_point(layout) {
            Some(split) => code_refs_split(src, layout, SCAN_PIECE, split),
            None => code_refs(src, layout, SCAN_PIECE),
        },
    );
    Ok((code?, table?))
}

/// The address fields of an executable's tables (relocations, unwind tables).
fn table_refs<R: ReadAt + ?Sized>(
    src: &R,
    layout: &Layout,
    tables: &Tables,
    refs: &mut Refs,
) -> io::Result<()> {
    // In file order: each table's references come in order, so the list is then
    // sorted as it is made (`Refs::sorted` checks, and sorts only if not; with
    // `.eh_frame` before the `.eh_frame_hdr` that precedes it, a sort of all of them
    // held up apply's start by milliseconds on the ruff pair).
    enum Table {
        Rela,
        Pdata,
        Reloc,
        EhFrame,
        EhFrameHdr,
    }
    let mut all: Vec<(u64, u64, Table)> = tables
        .rela
        .iter()
        .map(|&(off, len)| (off, len, Table::Rela))
        .collect();
    all.extend(tables.pdata.map(|(off, len)| (off, len, Table::Pdata)));
    all.extend(tables.reloc.map(|(off, len)| (off, len, Table::Reloc)));
    all.extend(
        tables
            .eh_frame
            .map(|(off, len, _)| (off, len, Table::EhFrame)),
    );
    all.extend(
        tables
            .eh_frame_hdr
            .map(|(off, len, _)| (off, len, Table::EhFrameHdr)),
    );
    all.sort_by_key(|t| t.0);
    for (off, len, table) in all {
        match table {
            Table::Rela => for_pieces(src, off, len - len % 24, 24, |at, e| {
                refs.push(at, K_ABS64);
                // R_X86_64_RELATIVE: the addend is an address too.
                if u32::from_le_bytes([e[8], e[9], e[10], e[11]]) == object::elf::R_X86_64_RELATIVE
                {
                    refs.push(at + 16, K_ABS64);
                }
            })?,
            Table::Pdata => for_pieces(src, off, len - len % 12, 12, |at, _| {
                for k in 0..3 {
                    refs.push(at + 4 * k, K_RVA32);
                }
            })?,
            _ if len > MAX_TABLE => {}
            Table::Reloc => pe_relocs(&read_vec(src, off, len)?, layout, refs),
            Table::EhFrame => eh_frame(&read_vec(src, off, len)?, off, refs),
            Table::EhFrameHdr => eh_frame_hdr(&read_vec(src, off, len)?, off, refs),
        }
    }
    Ok(())
}

fn read_vec<R: ReadAt + ?Sized>(src: &R, off: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len as usize];
    src.read_at(&mut v, off)?;
    Ok(v)
}

/// The code references alone, read in pieces of `piece` bytes (what is found does not
/// depend on it; tests check that).
pub fn code_refs<R: ReadAt + ?Sized>(src: &R, layout: &Layout, piece: usize) -> io::Result<Refs> {
    let mut refs = Refs::with_room(code_bytes(layout, (0, u64::MAX)));
    scan_code(src, layout, &mut refs, piece)?;
    Ok(refs)
}

/// Largest table read whole (`.eh_frame`, `.reloc`).
const MAX_TABLE: u64 = 256 << 20;

/// Calls `each(file offset, entry)` for the `size`-byte entries of `src[off..off+len]`,
/// read in bounded pieces.
fn for_pieces<R: ReadAt + ?Sized>(
    src: &R,
    off: u64,
    len: u64,
    size: usize,
    mut each: impl FnMut(u64, &[u8]),
) -> io::Result<()> {
    let piece = (1 << 20) / size * size;
    let mut buf = vec![0u8; piece];
    let mut at = 0u64;
    while at < len {
        let n = ((len - at) as usize).min(piece);
        let entries = src.view(&mut buf[..n], off + at)?;
        for (i, e) in entries.chunks_exact(size).enumerate() {
            each(off + at + (i * size) as u64, e);
        }
        at += n as u64;
    }
    Ok(())
}

/// PE base relocation blocks: (page RVA, block size, then 16-bit entries of type and
/// page offset); a DIR64 entry's location holds a 64-bit address.
fn pe_relocs(t: &[u8], layout: &Layout, refs: &mut Refs) {
    let mut at = 0usize;
    while at + 8 <= t.len() {
        let page = u32::from_le_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]]);
        let size = u32::from_le_bytes([t[at + 4], t[at + 5], t[at + 6], t[at + 7]]) as usize;
        if size < 8 || at + size > t.len() {
            return;
        }
        for e in t[at + 8..at + size].chunks_exact(2) {
            let e = u16::from_le_bytes([e[0], e[1]]);
            if e >> 12 == object::pe::IMAGE_REL_BASED_DIR64 {
                let va = layout.base + u64::from(page) + u64::from(e & 0xfff);
                if let Some(off) = layout.va_to_off(va) {
                    refs.push(off, K_ABS64);
                }
            }
        }
        at += size;
    }
}

fn uleb(t: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *t.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Size of a DWARF pointer encoding's value, for the encodings this reads.
fn enc_size(enc: u8) -> Option<usize> {
    match enc & 0x0f {
        0x03 | 0x0b => Some(4),
        0x04 | 0x0c | 0x00 => Some(8),
        0x02 | 0x0a => Some(2),
        _ => None,
    }
}

/// `.eh_frame`: each FDE's CIE pointer, and its start address and LSDA pointer when
/// they are `pcrel` 4-byte values (what compilers emit for x86-64). Records it cannot
/// read end the walk (what was found stays valid: apply finds the same).
fn eh_frame(t: &[u8], base_off: u64, refs: &mut Refs) {
    // CIE offset → (FDE pointer encoding, LSDA encoding, has augmentation data)
    let mut cies: Vec<(usize, u8, u8, bool)> = Vec::new();
    let mut at = 0usize;
    while at + 8 <= t.len() {
        let len = u32::from_le_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]]) as usize;
        if len == 0 || len == 0xffff_ffff || at + 4 + len > t.len() {
            return;
        }
        let rec = &t[at + 4..at + 4 + len];
        let id = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
        if id == 0 {
            match cie(rec) {
                Some((fde_enc, lsda_enc, z, personality)) => {
                    if let Some(p) = personality {
                        refs.push(base_off + (at + 4 + p) as u64, K_PCREL32);
                    }
                    cies.push((at, fde_enc, lsda_enc, z))
                }
                None => return,
            }
        } else {
            let field = at + 4;
            let Some(cie_at) = field.checked_sub(id as usize) else {
                return;
            };
            let Some(&(_, fde_enc, lsda_enc, z)) = cies.iter().rev().find(|c| c.0 == cie_at) else {
                return;
            };
            refs.push(base_off + field as u64, K_NEGREL32);
            let Some(size) = enc_size(fde_enc) else {
                return;
            };
            if fde_enc & 0x70 == 0x10 && size == 4 {
                refs.push(base_off + (field + 4) as u64, K_PCREL32);
            }
            let mut p = 4 + 2 * size;
            if z {
                let Some(_) = uleb(rec, &mut p) else { return };
                if lsda_enc != 0xff
                    && lsda_enc & 0x70 == 0x10
                    && enc_size(lsda_enc) == Some(4)
                    && p + 4 <= rec.len()
                {
                    refs.push(base_off + (at + 4 + p) as u64, K_PCREL32);
                }
            }
        }
        at += 4 + len;
    }
}

/// A CIE record (after its length): FDE pointer encoding, LSDA encoding (0xff: none),
/// whether FDEs carry augmentation data, and where a `pcrel` 4-byte personality pointer
/// sits in the record.
fn cie(rec: &[u8]) -> Option<(u8, u8, bool, Option<usize>)> {
    let version = *rec.get(4)?;
    let mut p = 5;
    let aug_end = p + rec.get(p..)?.iter().position(|&b| b == 0)?;
    let aug = &rec[p..aug_end];
    p = aug_end + 1;
    uleb(rec, &mut p)?; // code alignment
    uleb(rec, &mut p)?; // data alignment (sleb, same length)
    if version == 1 {
        p += 1;
    } else {
        uleb(rec, &mut p)?;
    }
    let (mut fde_enc, mut lsda_enc, mut personality) = (0u8, 0xffu8, None);
    let z = aug.first() == Some(&b'z');
    if z {
        uleb(rec, &mut p)?;
        for &c in &aug[1..] {
            match c {
                b'R' => {
                    fde_enc = *rec.get(p)?;
                    p += 1;
                }
                b'L' => {
                    lsda_enc = *rec.get(p)?;
                    p += 1;
                }
                b'P' => {
                    let enc = *rec.get(p)?;
                    let size = enc_size(enc)?;
                    if enc & 0x70 == 0x10 && size == 4 {
                        personality = Some(p + 1);
                    }
                    p += 1 + size;
                }
                b'S' | b'B' | b'G' => {}
                _ => return None,
            }
        }
    }
    Some((fde_enc, lsda_enc, z, personality))
}

/// `.eh_frame_hdr`: the `.eh_frame` pointer and, for a `datarel|sdata4` table, both
/// values of every (start, FDE) pair.
fn eh_frame_hdr(t: &[u8], base_off: u64, refs: &mut Refs) {
    if t.len() < 12 || t[0] != 1 {
        return;
    }
    let (ptr_enc, count_enc, table_enc) = (t[1], t[2], t[3]);
    if ptr_enc == 0x1b {
        refs.push(base_off + 4, K_PCREL32);
    }
    if enc_size(ptr_enc) != Some(4) || count_enc != 0x03 || table_enc != 0x3b {
        return;
    }
    let count = u32::from_le_bytes([t[8], t[9], t[10], t[11]]) as usize;
    let n = count.min((t.len() - 12) / 8);
    for i in 0..n {
        refs.push(base_off + 12 + 8 * i as u64, K_DATAREL32);
        refs.push(base_off + 16 + 8 * i as u64, K_DATAREL32);
    }
}

/// Kinds below this are code references; the others come from tables.
pub const CODE_KINDS: u8 = 16;

/// The address a reference of `kind` at `field` with `value` points to, in a file with
/// this layout.
fn target_of(layout: &Layout, field: u64, kind: u8, value: u64) -> Option<u64> {
    target_near(layout, None, field, kind, value)
}

/// `target_of`, with file offsets looked up in `run` first.
fn target_near(layout: &Layout, run: Option<Run>, field: u64, kind: u8, value: u64) -> Option<u64> {
    let v32 = i64::from(value as u32 as i32);
    let va = |off| layout.off_to_va_near(run, off);
    match kind {
        0..CODE_KINDS => va(field + 4 + u64::from(kind))?.checked_add_signed(v32),
        K_PCREL32 => va(field)?.checked_add_signed(v32),
        K_NEGREL32 => va(field)?.checked_add_signed(-v32),
        K_ABS64 => Some(value),
        K_DATAREL32 => layout.base.checked_add_signed(v32),
        K_RVA32 => layout.base.checked_add(value & 0xffff_ffff),
        _ => None,
    }
}

/// A label for each reference of `src` (in `refs`' order): a hash of the 16 bytes at
/// its target, with code references zeroed (0 when the target is not in the file).
/// Matching projections — the bytes with every reference replaced by its label (see
/// `project_into`) — aligns code and tables whose references moved but point to the same
/// things (Zucchini matches on projections too). Used by the encoder only: the patch
/// does not depend on how its ops were found. Reads one executable at a time.
pub fn labels<R: ReadAt + ?Sized>(src: &R, image: &Image, refs: &Refs) -> io::Result<Vec<u32>> {
    let f = &refs.fields;
    let mut out = vec![0u32; f.len()];
    let mut buf = Vec::new();
    let mut values = Vec::new();
    for layout in &image.parts {
        let lo = f.partition_point(|&x| u64::from(x) < layout.start);
        let hi = f.partition_point(|&x| u64::from(x) < layout.end);
        if lo == hi {
            continue;
        }
        buf.clear();
        buf.resize((layout.end - layout.start) as usize, 0);
        src.read_at(&mut buf, layout.start)?;
        let local = |i: usize| (u64::from(f[i]) - layout.start) as usize;
        values.clear();
        for i in lo..hi {
            let (at, w) = (local(i), width(refs.kinds[i]) as usize);
            let mut value = [0u8; 8];
            if let Some(b) = buf.get(at..at + w) {
                value[..w].copy_from_slice(b);
            }
            values.push(u64::from_le_bytes(value));
        }
        for i in lo..hi {
            if refs.kinds[i] < CODE_KINDS {
                if let Some(b) = buf.get_mut(local(i)..local(i) + 4) {
                    b.fill(0);
                }
            }
        }
        for (i, &value) in (lo..hi).zip(&values) {
            let field = u64::from(f[i]);
            out[i] = target_of(layout, field, refs.kinds[i], value)
                .and_then(|t| layout.va_to_off(t))
                .and_then(|t| t.checked_sub(layout.start))
                .and_then(|t| buf.get(t as usize..t as usize + 16))
                .map_or(0, |b| {
                    let a = u64::from_le_bytes(b[..8].try_into().unwrap_or_default());
                    let c = u64::from_le_bytes(b[8..].try_into().unwrap_or_default());
                    ((a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ c)
                        .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
                        >> 32) as u32
                });
        }
    }
    Ok(out)
}

/// Replaces, in `buf` (the input's bytes from offset `buf_off` on), every reference
/// field (or the part of one that `buf` holds) by its label.
pub fn project_into(buf: &mut [u8], buf_off: u64, refs: &Refs, labels: &[u32]) {
    let f = &refs.fields;
    let end = buf_off + buf.len() as u64;
    let mut i = f.partition_point(|&x| u64::from(x) + 8 <= buf_off);
    while i < f.len() && u64::from(f[i]) < end {
        let (field, w) = (u64::from(f[i]), width(refs.kinds[i]));
        let label = u64::from(labels[i]).to_le_bytes();
        for (k, &byte) in label.iter().enumerate().take(w as usize) {
            let pos = field + k as u64;
            if pos >= buf_off && pos < end {
                buf[(pos - buf_off) as usize] = byte;
            }
        }
        i += 1;
    }
}

/// `bytes` (a whole input) with every reference replaced by its label.
pub fn project(bytes: &[u8], image: &Image, refs: &Refs) -> io::Result<Vec<u8>> {
    let labels = labels(bytes, image, refs)?;
    let mut out = bytes.to_vec();
    project_into(&mut out, 0, refs, &labels);
    Ok(out)
}

/// Spans of the offset map with the same delta closer than this are joined (the gap
/// then maps with that delta too). Part of the format: apply builds the same map.
pub const MAP_GAP: u64 = 256;

/// Old offset → new offset, from the ops: intervals of old, each moved by one delta.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetMap {
    /// (old start, length, new start), sorted by old start, non-overlapping.
    pub spans: Vec<(u64, u64, u64)>,
    /// For each `1 << shift` bytes of old, how many spans start at or before the
    /// bucket's start: `map` searches only the spans between two buckets.
    index: Vec<u32>,
    shift: u32,
}

/// Bytes of old per entry of the offset map's index: 256 (a few spans, on compiled code)
/// up to 4096, so that the index stays within `MAP_INDEX` entries (512 KiB) for old
/// files up to 512 MiB; beyond that it grows as before.
const MAP_SHIFT: std::ops::RangeInclusive<u32> = 8..=12;
const MAP_INDEX: u64 = 1 << 17;

impl OffsetMap {
    /// From (old start, new start, length) copies in any order: sorted by old position,
    /// the parts of later copies that overlap earlier ones dropped, and neighbours with
    /// the same delta separated by less than `gap` bytes joined.
    pub fn from_copies(mut copies: Vec<(u64, u64, u64)>, gap: u64) -> OffsetMap {
        copies.retain(|c| c.2 > 0);
        copies.sort_unstable();
        // Spans are built in place (apply holds one entry per op, not two).
        let mut n = 0usize;
        for i in 0..copies.len() {
            let (mut old, mut new, mut len) = copies[i];
            if n > 0 {
                let last = &mut copies[n - 1];
                let last_end = last.0 + last.1;
                if old < last_end {
                    let cut = (last_end - old).min(len);
                    old += cut;
                    new += cut;
                    len -= cut;
                    if len == 0 {
                        continue;
                    }
                }
                if new.wrapping_sub(old) == last.2.wrapping_sub(last.0) && old - last_end < gap {
                    last.1 = old + len - last.0;
                    continue;
                }
            }
            copies[n] = (old, len, new);
            n += 1;
        }
        copies.truncate(n);
        copies.shrink_to_fit();
        let top = copies.last().map_or(0, |s| s.0);
        let mut shift = *MAP_SHIFT.start();
        while shift < *MAP_SHIFT.end() && top >> shift >= MAP_INDEX {
            shift += 1;
        }
        let buckets = copies.last().map_or(0, |s| (s.0 >> shift) + 1);
        let mut index = Vec::with_capacity(buckets as usize);
        let mut k = 0usize;
        for b in 0..buckets {
            while k < copies.len() && copies[k].0 <= b << shift {
                k += 1;
            }
            index.push(k as u32);
        }
        OffsetMap {
            spans: copies,
            index,
            shift,
        }
    }

    /// `map`, trying span `*near` first (the one the previous lookup used), which is
    /// then the one this lookup used. Searches the spans between the two index entries
    /// around `off`.
    fn map_near(&self, off: u64, near: &mut usize) -> Option<u64> {
        if let Some(s) = self.spans.get(*near) {
            if s.0 <= off && self.spans.get(*near + 1).is_none_or(|n| off < n.0) {
                return Some(s.2.wrapping_add(off - s.0));
            }
        }
        let b = usize::try_from(off >> self.shift).unwrap_or(usize::MAX);
        let lo = self.index.get(b).map_or(self.spans.len(), |&k| k as usize);
        let hi = self
            .index
            .get(b + 1)
            .map_or(self.spans.len(), |&k| k as usize);
        *near = (lo + self.spans[lo..hi].partition_point(|s| s.0 <= off)).checked_sub(1)?;
        let s = self.spans[*near];
        Some(s.2.wrapping_add(off - s.0))
    }

    /// Where old offset `off` went: its span's delta, or between spans the preceding
    /// span's.
    pub fn map(&self, off: u64) -> Option<u64> {
        let mut no_hint = usize::MAX;
        self.map_near(off, &mut no_hint)
    }
}

/// Everything apply needs to predict references: old's executables and references
/// (found from old itself), new's executables and the offset map (from the patch).
#[derive(Debug, Clone)]
pub struct Predictor {
    pub old: Image,
    pub refs: PackedRefs,
    pub new: Image,
    pub map: OffsetMap,
    /// Old's executables (indexes into `old.parts`, ascending) whose references are not
    /// predicted: the encoder found predicting them gets fewer right than old's bytes.
    pub skip: Vec<usize>,
}

/// Bytes of old per bucket of `PackedRefs`: a field's offset in its bucket takes 11 bits.
const REF_BUCKET: u64 = 2048;

/// References as the predictor holds them: 2 bytes each instead of 5 (a 600 MB image's
/// predicted executables have 3.7 M; apply's memory bound is 64 MiB). Each is its
/// field's offset within its `REF_BUCKET`-byte bucket of old (high 11 bits) and its
/// kind (low 5 bits); `index[b]` counts the references in the buckets before `b`, so an
/// op's first reference is found without a search of all of them (a search per op was
/// a tenth of apply's time on the ruff pair).
#[derive(Debug, Clone, Default)]
pub struct PackedRefs {
    packed: Vec<u16>,
    index: Vec<u32>,
}

impl PackedRefs {
    fn pack(field: u64, kind: u8) -> u16 {
        ((field % REF_BUCKET) as u16) << 5 | u16::from(kind & 31)
    }

    pub fn new(refs: &Refs) -> PackedRefs {
        let mut p = PackedRefs::default();
        p.replace(0, u64::MAX, refs);
        p
    }

    pub fn len(&self) -> usize {
        self.packed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    fn bucket_start(&self, b: usize) -> usize {
        self.index.get(b).map_or(self.packed.len(), |&k| k as usize)
    }

    /// The references whose fields lie in `from..`, in order: (field, kind).
    fn iter_from(&self, from: u64) -> impl Iterator<Item = (u64, u8)> + '_ {
        let mut b = usize::try_from(from / REF_BUCKET).unwrap_or(usize::MAX);
        let mut i = self.bucket_start(b);
        let mut next_bucket = self.bucket_start(b.saturating_add(1));
        std::iter::from_fn(move || loop {
            if i >= self.packed.len() {
                return None;
            }
            while i >= next_bucket {
                b += 1;
                next_bucket = self.bucket_start(b + 1);
            }
            let v = self.packed[i];
            i += 1;
            let field = b as u64 * REF_BUCKET + u64::from(v >> 5);
            if field >= from {
                return Some((field, (v & 31) as u8));
            }
        })
    }

    /// Replaces the references with fields in `start..end` by `refs` (sorted, every
    /// field in that range; kinds below 32).
    fn replace(&mut self, start: u64, end: u64, refs: &Refs) {
        let last = refs.fields.last().map_or(0, |&f| u64::from(f));
        let buckets = (self.index.len() as u64).max(last / REF_BUCKET + 2);
        self.index
            .resize(buckets as usize, self.packed.len() as u32);
        // The buckets holding the range, unpacked, edited and packed again.
        let bs = (start / REF_BUCKET) as usize;
        let be = ((end.min(buckets * REF_BUCKET) - 1) / REF_BUCKET + 1).min(buckets) as usize;
        let (lo, hi) = (self.bucket_start(bs), self.bucket_start(be));
        // Only the first and last of those buckets can hold references outside the
        // range (dropping an executable's references does not read them all).
        let mut kept_before = Vec::new();
        let mut kept_after = Vec::new();
        let mut edges = vec![bs];
        if be > bs + 1 {
            edges.push(be - 1);
        }
        for b in edges {
            for &v in &self.packed[self.bucket_start(b)..self.bucket_start(b + 1)] {
                let (field, kind) = (b as u64 * REF_BUCKET + u64::from(v >> 5), (v & 31) as u8);
                match field {
                    f if f < start => kept_before.push((f, kind)),
                    f if f >= end => kept_after.push((f, kind)),
                    _ => {}
                }
            }
        }
        // The new contents of buckets bs..be, packed, and the index entries inside them,
        // in one pass.
        let mut seg = Vec::with_capacity(kept_before.len() + refs.fields.len() + kept_after.len());
        let mut b = bs + 1;
        let mut put = |f: u64, k: u8, seg: &mut Vec<u16>| {
            while b < be && f >= b as u64 * REF_BUCKET {
                self.index[b] = (lo + seg.len()) as u32;
                b += 1;
            }
            seg.push(PackedRefs::pack(f, k));
        };
        for &(f, k) in &kept_before {
            put(f, k, &mut seg);
        }
        for (&f, &k) in refs.fields.iter().zip(&refs.kinds) {
            put(u64::from(f), k, &mut seg);
        }
        for &(f, k) in &kept_after {
            put(f, k, &mut seg);
        }
        for at in &mut self.index[b.min(be)..be] {
            *at = (lo + seg.len()) as u32;
        }
        let new_len = seg.len();
        if self.packed.is_empty() {
            // The first executable's references (apply's usual case): no copy.
            self.packed = seg;
        } else {
            self.packed.splice(lo..hi, seg);
        }
        for at in self.index.iter_mut().skip(be) {
            *at = (*at as usize + new_len - (hi - lo)) as u32;
        }
        self.packed.shrink_to_fit();
    }
}

/// A run of file bytes at consecutive addresses: (file offset, length, address).
type Run = (u64, u64, u64);

/// The address of file offset `off` if `run` holds it.
fn run_va(run: Option<Run>, off: u64) -> Option<u64> {
    run.filter(|r| off >= r.0 && off - r.0 < r.1)
        .map(|r| r.2 + (off - r.0))
}

/// What the previous reference of an op was looked up in: its target's section of old,
/// span of the offset map, executable and run of new. A reference tries them first
/// (each checked to hold its target, so the answer is the search's).
#[derive(Debug, Default, Clone, Copy)]
struct Near {
    /// (old executable's start, the section), for targets in a section's file bytes:
    /// the last code section and the last other one (references alternate between
    /// calls into code and loads of data; one slot missed on most of them).
    old_section: [Option<(u64, Section)>; 2],
    span: usize,
    new_part: usize,
    new_run: Option<Run>,
}

impl Predictor {
    pub fn new(old: Image, refs: Refs, new: Image, map: OffsetMap, skip: Vec<usize>) -> Predictor {
        Predictor {
            old,
            refs: PackedRefs::new(&refs),
            new,
            map,
            skip,
        }
    }

    /// Replaces the references held for old's executable `i` (those inside its file
    /// range) with `part` (sorted, inside that range; empty to drop them): apply holds
    /// only the references of the executables its ops are copying from.
    pub fn set_part_refs(&mut self, i: usize, part: Refs) {
        let (start, end) = (self.old.parts[i].start, self.old.parts[i].end);
        self.refs.replace(start, end, &part);
    }

    /// Where address `target` of old's executable `old` is in new: through the offset
    /// map into whichever of new's executables holds it, when the file holds its byte;
    /// for zero-filled space (`.bss`), by its section in `new` (the executable the
    /// reference lands in) when both have as many sections.
    fn new_target(&self, old: &Layout, target: u64, new: &Layout, near: &mut Near) -> Option<u64> {
        let hit = |slot: Option<(u64, Section)>| {
            slot.filter(|&(start, s)| start == old.start && target.wrapping_sub(s.va) < s.file_len)
                .map(|(_, s)| s.off + (target - s.va))
        };
        let off = match hit(near.old_section[0]).or_else(|| hit(near.old_section[1])) {
            Some(off) => Some(off),
            None => old.section_at(target).and_then(|s| {
                near.old_section[usize::from(!s.exec)] = Some((old.start, *s));
                (target - s.va < s.file_len).then(|| s.off + (target - s.va))
            }),
        };
        match off {
            Some(t) => {
                let t = self.map.map_near(t, &mut near.span)?;
                let parts = &self.new.parts;
                if !parts
                    .get(near.new_part)
                    .is_some_and(|p| p.start <= t && t < p.end)
                {
                    near.new_part = self.new.part_index(t)?;
                }
                let part = &parts[near.new_part];
                // A run is a file range: another executable's holds none of this one's.
                if let Some(va) = run_va(near.new_run, t) {
                    return Some(va);
                }
                match part.run_at(t) {
                    Some(run) => {
                        near.new_run = Some(run);
                        run_va(Some(run), t)
                    }
                    None => part.off_to_va(t),
                }
            }
            None => {
                let i = old
                    .sections
                    .partition_point(|s| s.va <= target)
                    .checked_sub(1)?;
                let s = &old.sections[i];
                if target - s.va >= s.mem_len || old.sections.len() != new.sections.len() {
                    return None;
                }
                Some(new.sections[i].va.wrapping_add(target - s.va))
            }
        }
    }

    /// The value (little-endian, `width(kind)` bytes) the reference at old field
    /// `field` with old value `value` should have when it sits at new offset
    /// `new_field`.
    fn predict(&self, field: u64, kind: u8, value: u64, new_field: u64) -> Option<u64> {
        let (old, new) = self.parts_of(field, 1, new_field)?;
        let near = &mut Near::default();
        self.predict_in(
            (old, None),
            (new, None),
            field,
            kind,
            value,
            new_field,
            near,
        )
    }

    /// The old executable holding `old_at..old_at + len` (if predicted) and the new one
    /// holding `new_at..new_at + len`; `None` if either range is not wholly inside one.
    fn parts_of(&self, old_at: u64, len: u64, new_at: u64) -> Option<(&Layout, &Layout)> {
        let i = self.old.part_index(old_at)?;
        let old = &self.old.parts[i];
        let new = self.new.part(new_at)?;
        let inside = |p: &Layout, at: u64| at + len <= p.end;
        (self.skip.binary_search(&i).is_err() && inside(old, old_at) && inside(new, new_at))
            .then_some((old, new))
    }

    /// What an op copying old `op_old..op_old + op_len` to new `op_new..` needs for its
    /// references: `Some(Some(parts))` when both ranges lie in one executable each (every
    /// reference then uses them), `Some(None)` when references must each be looked up,
    /// `None` when none of them is predicted (its old range lies in an executable left
    /// unpredicted, or in none).
    #[allow(clippy::option_option)]
    fn op_parts(
        &self,
        op_old: u64,
        op_len: u64,
        op_new: u64,
    ) -> Option<Option<(&Layout, &Layout)>> {
        if let Some(parts) = self.parts_of(op_old, op_len, op_new) {
            return Some(Some(parts));
        }
        match self.old.part_index(op_old) {
            Some(i)
                if self.old.parts[i].end >= op_old + op_len
                    && self.skip.binary_search(&i).is_ok() =>
            {
                None
            }
            None if {
                let p = &self.old.parts;
                let k = p.partition_point(|p| p.end <= op_old);
                p.get(k).is_none_or(|p| p.start >= op_old + op_len)
            } =>
            {
                None
            }
            _ => Some(None),
        }
    }

    /// `predict` with the executables already found, runs of old's and new's file
    /// offsets (`Layout::run_at`, for the op's start) to look fields up in first, and
    /// where the op's previous target was found.
    #[allow(clippy::too_many_arguments)]
    fn predict_in(
        &self,
        (old, old_run): (&Layout, Option<Run>),
        (new, new_run): (&Layout, Option<Run>),
        field: u64,
        kind: u8,
        value: u64,
        new_field: u64,
        near: &mut Near,
    ) -> Option<u64> {
        let target = target_near(old, old_run, field, kind, value)?;
        let t = self.new_target(old, target, new, near)?;
        let new_va = || new.off_to_va_near(new_run, new_field);
        let fit32 = |v: i64| i32::try_from(v).ok().map(|v| u64::from(v as u32));
        match kind {
            0..CODE_KINDS => {
                let anchor = new.off_to_va_near(new_run, new_field + 4 + u64::from(kind))?;
                fit32(t.wrapping_sub(anchor) as i64)
            }
            K_PCREL32 => fit32(t.wrapping_sub(new_va()?) as i64),
            K_NEGREL32 => fit32(new_va()?.wrapping_sub(t) as i64),
            K_ABS64 => Some(t),
            K_DATAREL32 => fit32(t.wrapping_sub(new.base) as i64),
            K_RVA32 => u32::try_from(t.checked_sub(new.base)?).ok().map(u64::from),
            _ => None,
        }
    }

    /// For the choice per executable: adds to `gains[i]`, for each reference of old's
    /// executable `i` that the op copying old `op_old..op_old + op_len` to new `op_new..`
    /// carries, 1 if its prediction is new's value and −1 if old's value is (both or
    /// neither: 0).
    /// `old` and `new` are the op's bytes (`op_len` of each).
    pub fn gains(
        &self,
        old: &[u8],
        new: &[u8],
        (op_old, op_len, op_new): (u64, u64, u64),
        gains: &mut [i64],
    ) {
        for (field, kind) in self.refs.iter_from(op_old) {
            if field >= op_old + op_len {
                break;
            }
            let w = width(kind) as usize;
            let new_field = op_new + (field - op_old);
            let at = (field - op_old) as usize;
            let (Some(o), Some(n)) = (old.get(at..at + w), new.get(at..at + w)) else {
                continue;
            };
            if field + w as u64 > op_old + op_len {
                continue;
            }
            let mut value = [0u8; 8];
            value[..w].copy_from_slice(o);
            let Some(p) = self.predict(field, kind, u64::from_le_bytes(value), new_field) else {
                continue;
            };
            let Some(part) = self.old.part_index(field) else {
                continue;
            };
            gains[part] += i64::from(p.to_le_bytes()[..w] == *n) - i64::from(o == n);
        }
    }

    /// Adds to each byte of `out` that a reference's field covers the difference
    /// between its predicted value and old's: `base` is old's bytes from `base_old` on,
    /// which an op copying old `op_old..op_old + op_len` to new `op_new..` adds its diff
    /// to, and `out` is as long (a copy of `base` becomes `base` with its references
    /// predicted; `base` plus the diff becomes new). Only references wholly inside the
    /// op are predicted; `old_field` reads a field's old bytes where `base` holds only
    /// part of it. Returns [code references predicted, right, table references
    /// predicted, right]; "right" is counted only when `new` (new's bytes where `base`
    /// goes) is given.
    #[allow(clippy::too_many_arguments)]
    pub fn rewrite(
        &self,
        base: &[u8],
        out: &mut [u8],
        base_old: u64,
        op_old: u64,
        op_len: u64,
        op_new: u64,
        old_field: &mut dyn FnMut(u64) -> io::Result<[u8; 8]>,
        new: Option<&[u8]>,
    ) -> io::Result<[usize; 4]> {
        let base_end = base_old + base.len() as u64;
        let out = &mut out[..base.len()];
        let lo = base_old.saturating_sub(7).max(op_old);
        let hi = base_end.min(op_old + op_len);
        let mut predicted = [0; 4];
        let Some(parts) = self.op_parts(op_old, op_len, op_new) else {
            return Ok(predicted);
        };
        // Most of an op's fields lie in the section its start does, on both sides.
        let parts = parts.map(|(old, new)| ((old, old.run_at(op_old)), (new, new.run_at(op_new))));
        let mut near = Near::default();
        for (field, kind) in self.refs.iter_from(lo) {
            if field >= hi {
                break;
            }
            let w = width(kind);
            if field + w > op_old + op_len || field + w <= base_old {
                continue;
            }
            // The field's old value, its bytes past its width zero.
            let mask = u64::MAX >> (64 - 8 * w);
            let inside =
                (field >= base_old && field + w <= base_end).then(|| (field - base_old) as usize);
            let value = match inside {
                Some(at) => match base.get(at..at + 8) {
                    Some(b) => u64::from_le_bytes(b.try_into().unwrap_or_default()) & mask,
                    None => {
                        let mut b = [0u8; 8];
                        b[..w as usize].copy_from_slice(&base[at..at + w as usize]);
                        u64::from_le_bytes(b)
                    }
                },
                None => u64::from_le_bytes(old_field(field)?) & mask,
            };
            let new_field = op_new + (field - op_old);
            let v = match parts {
                Some((old, new)) => {
                    self.predict_in(old, new, field, kind, value, new_field, &mut near)
                }
                None => self.predict(field, kind, value, new_field),
            };
            let Some(v) = v else {
                continue;
            };
            // Each byte of the field gets the prediction's byte minus old's added.
            let diff = bytewise_sub(v, value) & mask;
            match inside.and_then(|at| out.get_mut(at..at + 8)) {
                Some(o) => {
                    let cur = u64::from_le_bytes((&*o).try_into().unwrap_or_default());
                    o.copy_from_slice(&bytewise_add(cur, diff).to_le_bytes());
                }
                None => {
                    for k in 0..w {
                        let pos = field + k;
                        if pos >= base_old && pos < base_end {
                            let at = (pos - base_old) as usize;
                            out[at] = out[at].wrapping_add((diff >> (8 * k)) as u8);
                        }
                    }
                }
            }
            let class = 2 * usize::from(kind >= CODE_KINDS);
            predicted[class] += 1;
            let right = new
                .filter(|_| field >= base_old)
                .and_then(|n| n.get((field - base_old) as usize..(field - base_old + w) as usize))
                .is_some_and(|n| n == &v.to_le_bytes()[..w as usize]);
            predicted[class + 1] += usize::from(right);
        }
        Ok(predicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_byte_filter_rejects_only_what_candidate_rejects() {
        // Every first two bytes, and a third that is RIP-relative ModRM or not.
        let mut rejected = 0;
        for b0 in 0..=255u8 {
            for b1 in 0..=255u8 {
                for b2 in [0x05u8, 0x15, 0x00, 0xc0] {
                    let code = [b0, b1, b2, 0, 0, 0, 0, 0];
                    let filtered = match FIRST_BYTE[usize::from(b0)] {
                        0 => true,
                        1 => b1 & 0xc7 != 0x05,
                        _ => false,
                    };
                    if filtered {
                        rejected += 1;
                        assert_eq!(candidate(&code, 0), None, "{b0:02x} {b1:02x} {b2:02x}");
                    }
                }
            }
        }
        // The filter does reject most bytes (else it is no filter).
        assert!(rejected > 200_000, "{rejected}");
    }

    /// A small deterministic generator (xorshift) for the comparisons below.
    fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
        let mut x = seed | 1;
        move |n| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        }
    }

    fn random_refs(next: &mut impl FnMut(u64) -> u64, n: usize, sorted: bool) -> Refs {
        let kinds = [0u8, 1, 4, K_PCREL32, K_ABS64, K_RVA32];
        let mut r = Refs::default();
        let mut at = 0u64;
        for _ in 0..n {
            at += next(12);
            let f = if sorted { at } else { next(4000) };
            r.fields.push(f as u32);
            r.kinds.push(kinds[next(kinds.len() as u64) as usize]);
        }
        r
    }

    #[test]
    fn settling_two_lists_is_sorting_them_together_then_dropping_overlaps() {
        let mut next = rng(7);
        let mut dropped = 0;
        for round in 0..200 {
            // The code list comes sorted; the table list sorted or not (both kinds of
            // input take the merge's paths).
            let (n_code, n_table) = (next(300) as usize, next(300) as usize);
            let mut code = random_refs(&mut next, n_code, round % 3 != 0);
            let mut table = random_refs(&mut next, n_table, round % 2 == 0);
            // Lists that lie wholly after or before the other (one move, no merge),
            // touching or overlapping only at the seam.
            let past = |r: &Refs| {
                r.fields
                    .iter()
                    .max()
                    .map_or(0, |&f| f as i64 - 2 + round % 5)
            };
            match round % 4 {
                1 => {
                    let by = past(&code);
                    table
                        .fields
                        .iter_mut()
                        .for_each(|f| *f = (*f as i64 + by).max(0) as u32);
                }
                2 => {
                    let by = past(&table);
                    code.fields
                        .iter_mut()
                        .for_each(|f| *f = (*f as i64 + by).max(0) as u32);
                }
                _ => {}
            }
            let size = 3000 + next(1000) + 4000 * u64::from(round % 4 == 1 || round % 4 == 2);
            let mut pairs: Vec<(u32, u8)> = code
                .fields
                .iter()
                .zip(&code.kinds)
                .chain(table.fields.iter().zip(&table.kinds))
                .map(|(&f, &k)| (f, k))
                .collect();
            pairs.sort();
            let all = pairs.len();
            let mut want = Refs::default();
            let mut end = 0u64;
            for (f, k) in pairs {
                if u64::from(f) >= end && u64::from(f) + width(k) <= size {
                    end = u64::from(f) + width(k);
                    want.fields.push(f);
                    want.kinds.push(k);
                }
            }
            let mut got = Refs::default();
            Refs::settle_into(code, table, size, &mut got);
            assert_eq!(got, want, "round {round}");
            dropped += all - want.fields.len();
        }
        // Overlapping fields were there to drop.
        assert!(dropped > 1000, "{dropped}");
    }

    #[test]
    fn packed_references_are_the_list_they_were_made_from_and_edit_like_it() {
        let mut next = rng(11);
        let mut random = |from: u64, n: usize| {
            let mut r = Refs::default();
            let mut at = from;
            for _ in 0..n {
                // Gaps from none to many buckets.
                let far = next(10) == 0;
                at += 1 + next(if far { 40_000 } else { 700 });
                r.fields.push(at as u32);
                r.kinds
                    .push([0u8, 1, 4, K_PCREL32, K_ABS64, K_RVA32][next(6) as usize]);
            }
            r
        };
        let mut model: Vec<(u64, u8)> = Vec::new();
        let as_pairs = |r: &Refs| -> Vec<(u64, u8)> {
            r.fields
                .iter()
                .zip(&r.kinds)
                .map(|(&f, &k)| (u64::from(f), k))
                .collect()
        };
        let first = random(0, 5000);
        model.extend(as_pairs(&first));
        let mut packed = PackedRefs::new(&first);
        let mut probe = rng(5);
        for round in 0..60 {
            let last = model.last().map_or(0, |r| r.0);
            // An edit: the references in a range replaced (or dropped, or added past
            // the end), as apply does per executable.
            let mut start = probe(last + 50_000);
            // Ranges that start right after a reference (which stays).
            if round % 3 == 1 {
                start = model
                    .iter()
                    .map(|r| r.0 + 1)
                    .find(|&f| f > start)
                    .unwrap_or(start);
            }
            let mut end = start + 1 + probe(300_000);
            // Ranges that end exactly at a reference (which stays).
            if round % 3 == 0 {
                end = model
                    .iter()
                    .map(|r| r.0)
                    .find(|&f| f > start)
                    .unwrap_or(end);
            }
            let mut part = random(start, probe(800) as usize);
            let keep = part
                .fields
                .iter()
                .take_while(|&&f| u64::from(f) < end)
                .count();
            part.fields.truncate(if round % 7 == 0 { 0 } else { keep });
            part.kinds.truncate(part.fields.len());
            model.retain(|r| r.0 < start || r.0 >= end);
            model.extend(as_pairs(&part));
            model.sort();
            packed.replace(start, end, &part);
            assert_eq!(packed.len(), model.len(), "round {round}");
            for _ in 0..40 {
                let from = probe(last + 60_000);
                let want: Vec<_> = model
                    .iter()
                    .copied()
                    .filter(|r| r.0 >= from)
                    .take(50)
                    .collect();
                let got: Vec<_> = packed.iter_from(from).take(50).collect();
                assert_eq!(got, want, "round {round} from {from}");
            }
        }
        assert_eq!(packed.iter_from(0).collect::<Vec<_>>(), model);
    }

    #[test]
    fn targets_found_through_the_previous_lookup_are_those_found_without() {
        // Two executables on each side (the same addresses in both, as in an image),
        // one op's worth of targets after another with one `Near` carried through all,
        // against a fresh one for each.
        let mut next = rng(7);
        let part = |start: u64| {
            let sections = (0..4)
                .map(|k| Section {
                    off: k * 0x1000,
                    file_len: 0x800 + 0x200 * (k % 2),
                    va: 0x10_0000 + k * 0x2000,
                    mem_len: 0x1800,
                    exec: k == 0,
                })
                .collect();
            let mut l = Layout::new(sections, 0x10_0000).expect("layout");
            let mut t = Tables::default();
            l.shift(&mut t, start);
            l.end = start + 0x4000;
            l
        };
        let image = |a, b| Image {
            parts: vec![part(a), part(b)],
        };
        let copies = (0..300)
            .map(|_| (next(0x9000), next(0x9000), 1 + next(0x300)))
            .collect();
        let p = Predictor::new(
            image(0, 0x5000),
            Refs::default(),
            image(0x400, 0x6000),
            OffsetMap::from_copies(copies, MAP_GAP),
            Vec::new(),
        );
        let (mut near, mut found, mut target) = (Near::default(), 0, 0);
        let (mut span, mut off) = (0, 0);
        for _ in 0..20_000 {
            let (old, new) = (
                &p.old.parts[next(2) as usize],
                &p.new.parts[next(2) as usize],
            );
            // Half near the previous target (the hints then mostly hold), half anywhere.
            target = match next(2) {
                0 => target + next(0x40),
                _ => 0x10_0000 - 0x100 + next(0x8200),
            };
            let want = p.new_target(old, target, new, &mut Near::default());
            assert_eq!(
                p.new_target(old, target, new, &mut near),
                want,
                "{target:#x}"
            );
            found += usize::from(want.is_some());
            off = match next(2) {
                0 => off + next(0x40),
                _ => next(0xa000),
            };
            if next(8) == 0 {
                span = next(400) as usize;
            }
            assert_eq!(p.map.map_near(off, &mut span), p.map.map(off), "{off:#x}");
        }
        assert!(found > 5_000, "{found} targets found");
    }

    /// A layout whose sections start and end inside pages, with gaps, code and data,
    /// an empty section, and a page shared by code and data.
    fn uneven_layout() -> Layout {
        let section = |off, file_len, va, mem_len, exec| Section {
            off,
            file_len,
            va,
            mem_len,
            exec,
        };
        Layout::new(
            vec![
                section(0x0, 0x2345, 0x40_1100, 0x2345, true),
                section(0x2345, 0x0, 0x40_3500, 0x0, false),
                section(0x2400, 0x1800, 0x40_3800, 0x1800, false),
                section(0x3c00, 0x3000, 0x40_5000, 0x3000, true),
                section(0x6c00, 0x400, 0x40_8000, 0x6100, false),
                section(0x7000, 0x1000, 0x40_e130, 0x1000, true),
            ],
            0x40_0000,
        )
        .expect("layout")
    }

    #[test]
    fn an_image_past_its_section_bound_does_not_decode() {
        let per_part = MAX_SECTIONS as u64;
        let part = |k: u64| {
            let sections = (0..per_part)
                .map(|i| Section {
                    off: k * 1_000_000 + i * 16,
                    file_len: 16,
                    va: 0x1000 + i * 16,
                    mem_len: 16,
                    exec: i % 2 == 0,
                })
                .collect();
            let mut l = Layout::new(sections, 0).expect("a layout");
            (l.start, l.end) = (k * 1_000_000, (k + 1) * 1_000_000);
            l
        };
        let parts = (MAX_IMAGE_SECTIONS as u64).div_ceil(per_part);
        let at_bound = Image {
            parts: (0..parts).map(part).collect(),
        };
        let mut b = Vec::new();
        at_bound.encode(&mut b);
        let got = Image::decode(&b, &mut 0).expect("at the bound");
        assert_eq!(got.parts.len(), parts as usize);
        let past = Image {
            parts: (0..=parts).map(part).collect(),
        };
        let mut b = Vec::new();
        past.encode(&mut b);
        assert_eq!(
            Image::decode(&b, &mut 0).map(|i| i.parts.len()),
            Err(FormatError::Bounds("image section count"))
        );
    }

    #[test]
    fn scan_room_counts_code_inside_the_range_and_the_file_only() {
        let mut l = uneven_layout();
        // Code: 0x0..0x2345, 0x3c00..0x6c00, 0x7000..0x8000.
        assert_eq!(code_bytes(&l, (0, u64::MAX)), 0x2345 + 0x3000 + 0x1000);
        assert_eq!(code_bytes(&l, (0x2000, 0x4000)), 0x345 + 0x400);
        assert_eq!(code_bytes(&l, (0x2345, 0x3c00)), 0, "no code there");
        l.end = 0x7800;
        assert_eq!(code_bytes(&l, (0, u64::MAX)), 0x2345 + 0x3000 + 0x800);
        // A section claiming more than the file holds, or than any file could: room
        // for what the file holds, and never more than the cap.
        l.sections[0].file_len = 1 << 62;
        l.sections[0].mem_len = 1 << 62;
        assert_eq!(code_bytes(&l, (0, u64::MAX)), 0x7800 + 0x3000 + 0x800);
        l.end = u64::MAX;
        assert_eq!(code_bytes(&l, (0, u64::MAX)), MAX_ROOM_CODE);
        let r = Refs::with_room(code_bytes(&l, (0, u64::MAX)));
        assert!(r.fields.capacity() as u64 <= MAX_ROOM_CODE / CODE_BYTES_PER_REF);
        assert!(r.fields.capacity() as u64 >= MAX_ROOM_CODE / CODE_BYTES_PER_REF);
    }

    #[test]
    fn target_pages_decide_as_the_section_search_does() {
        let l = uneven_layout();
        let pages = TargetPages::new(&l);
        assert!(!pages.pages.is_empty());
        let (mut code, mut data) = (0, 0);
        for t in 0x40_0000..0x41_0000u64 {
            for want_code in [false, true] {
                let want = l.section_at(t).is_some_and(|s| s.exec || !want_code);
                assert_eq!(pages.takes(&l, t, want_code), want, "{t:#x} {want_code}");
                code += usize::from(want && want_code);
                data += usize::from(want && !want_code);
            }
        }
        assert!(code > 0x5000 && data > code, "{code} {data}");
        // Too large an address space for a table: every address is searched.
        let mut far = l.clone();
        far.sections.last_mut().expect("a section").va = 0x40_0000 + (1 << 40);
        let pages = TargetPages::new(&far);
        assert!(pages.pages.is_empty());
        assert!(pages.takes(&far, 0x40_1100, true));
        assert!(!pages.takes(&far, 0x40_3600, false));
        assert!(pages.takes(&far, 0x40_0000 + (1 << 40), true));
    }

    #[test]
    fn scanning_by_blocks_finds_what_a_byte_by_byte_scan_finds() {
        let l = uneven_layout();
        let size = 0x8000usize;
        let mut next = rng(13);
        let (mut found, mut skipped) = (0, 0);
        for round in 0..12 {
            // Bytes rich in candidates: calls, jumps, jcc, RIP-relative ModRM operands,
            // with displacements that land in code, in data and outside.
            let mut file = vec![0u8; size];
            for b in file.iter_mut() {
                // Zeros and 0xFF make displacements small enough to land in the image.
                *b = match next(20) {
                    0..=5 => 0,
                    6..=8 => 0xff,
                    9 => 0xe8,
                    10 => 0x0f,
                    11 => 0x05,
                    12 => 0x8b,
                    13 => 0x80 + next(16) as u8,
                    _ => next(256) as u8,
                };
            }
            // A byte-by-byte scan: the first candidate at each position whose target
            // is in a section (in code, for a branch), then on after its instruction.
            let mut want = Refs::default();
            let mut code: Vec<&Section> = l.sections.iter().filter(|s| s.exec).collect();
            code.sort_by_key(|s| s.off);
            for s in code {
                let bytes = &file[s.off as usize..(s.off + s.file_len) as usize];
                let mut i = 0;
                while i < bytes.len() {
                    let hit = candidate(bytes, i).and_then(|(field, imm, branch)| {
                        let after = field + 4 + usize::from(imm);
                        let disp =
                            i32::from_le_bytes(bytes.get(field..field + 4)?.try_into().ok()?);
                        (after <= bytes.len()).then_some(())?;
                        let t = (s.va + after as u64).checked_add_signed(i64::from(disp))?;
                        let ok = l.section_at(t).is_some_and(|t| t.exec || !branch);
                        ok.then_some((field, imm, after))
                    });
                    match hit {
                        Some((field, imm, after)) => {
                            want.push(s.off + field as u64, imm);
                            skipped += after - i - 1;
                            i = after;
                        }
                        None => i += 1,
                    }
                }
            }
            // Pieces from smaller than a block to the whole section.
            let piece = [17, 64, 100, 1000, 4096, 1 << 16][round % 6];
            let mut got = Refs::default();
            scan_code(&file[..], &l, &mut got, piece).expect("scan");
            assert_eq!(got, want, "round {round} piece {piece}");
            found += want.fields.len();
        }
        assert!(found > 1_000 && skipped > 5_000, "{found} {skipped}");
    }

    #[test]
    fn bytewise_arithmetic_wraps_each_byte_alone() {
        let mut next = rng(17);
        let edge = [0u8, 1, 0x7f, 0x80, 0xfe, 0xff];
        for _ in 0..100_000 {
            let mut word = || {
                let mut b = [0u8; 8];
                for x in &mut b {
                    *x = match next(3) {
                        0 => edge[next(6) as usize],
                        _ => next(256) as u8,
                    };
                }
                b
            };
            let (a, b) = (word(), word());
            let (x, y) = (u64::from_le_bytes(a), u64::from_le_bytes(b));
            let add: Vec<u8> = a.iter().zip(&b).map(|(p, q)| p.wrapping_add(*q)).collect();
            let sub: Vec<u8> = a.iter().zip(&b).map(|(p, q)| p.wrapping_sub(*q)).collect();
            assert_eq!(
                bytewise_add(x, y).to_le_bytes().to_vec(),
                add,
                "{x:#x} + {y:#x}"
            );
            assert_eq!(
                bytewise_sub(x, y).to_le_bytes().to_vec(),
                sub,
                "{x:#x} - {y:#x}"
            );
        }
    }

    #[test]
    fn offsets_map_to_the_same_address_through_a_run_or_without() {
        let section = |off, file_len, va, mem_len| Section {
            off,
            file_len,
            va,
            mem_len,
            exec: false,
        };
        let l = Layout::new(
            vec![
                section(0x400, 0x300, 0x1000, 0x300),
                section(0x700, 0x100, 0x5000, 0x800),
                section(0x900, 0x50, 0x2000, 0x50),
            ],
            0,
        )
        .expect("layout");
        assert!(l.by_off.is_some());
        let mut mapped = 0;
        for from in (0..0xa00).step_by(0x10) {
            let run = l.run_at(from);
            assert_eq!(run.is_some(), l.off_to_va(from).is_some(), "{from:#x}");
            for off in 0..0xa00 {
                assert_eq!(
                    l.off_to_va_near(run, off),
                    l.off_to_va(off),
                    "{from:#x} {off:#x}"
                );
                mapped += usize::from(run_va(run, off).is_some());
            }
        }
        // Runs are used (most lookups from inside a section hit its run).
        assert!(mapped > 10_000, "{mapped}");
    }
}
