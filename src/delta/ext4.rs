//! Where a file's bytes are in an ext4 image: enough of the file system (superblock,
//! group descriptors, inode tables, extent trees) to map each regular file's bytes to
//! the image, so the executables in an OS image are transformed like whole files.
//!
//! Image builders (`mke2fs -d`, `e2fsdroid`, `make_ext4fs`) write files contiguously
//! but leave their all-zero blocks out as holes, so an executable's later sections sit
//! a few blocks earlier in the image than its headers say: its layout must come from
//! the extents, not from the bytes after its header. Read-only and defensive: every
//! count and position comes from the image (possibly hostile) and is checked; anything
//! unexpected drops that file (or the whole file system, which then gets the plain
//! block-boundary search).
//!
//! Written here rather than taken from a crate: `ext4-view` (the maintained read-only
//! ext4 crate) reads files but keeps their extents private, and the mapping is what we
//! need.

use super::ReadAt;

/// A file's bytes: (offset in the file, offset in the image, length), sorted by file
/// offset, disjoint; what no extent covers reads as zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    pub size: u64,
    pub extents: Vec<(u64, u64, u64)>,
}

/// Most files, and extents per file, taken from one image.
const MAX_FILES: usize = 1 << 18;
const MAX_EXTENTS: usize = 1 << 16;

fn le16(b: &[u8], i: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[i], b[i + 1]]))
}

fn le32(b: &[u8], i: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]))
}

fn read<R: ReadAt + ?Sized>(src: &R, off: u64, len: usize) -> Option<Vec<u8>> {
    if off.checked_add(len as u64)? > src.size() {
        return None;
    }
    let mut v = vec![0u8; len];
    src.read_at(&mut v, off).ok()?;
    Some(v)
}

/// The regular files of an ext4 image whose first bytes (`want` decides, from the
/// first 4) are of interest, each with its map; `None` if `src` is not an ext4 image
/// this reads (no superblock, block size outside 1–64 KiB, groups past the image).
pub fn files<R: ReadAt + ?Sized>(src: &R, want: impl Fn(&[u8; 4]) -> bool) -> Option<Vec<FileMap>> {
    let sb = read(src, 1024, 1024)?;
    if le16(&sb, 56) != 0xef53 {
        return None;
    }
    let log = le32(&sb, 24);
    if log > 6 {
        return None;
    }
    let bs = 1024u64 << log;
    let blocks = le32(&sb, 4)
        | if le32(&sb, 96) & 0x80 != 0 {
            le32(&sb, 0x150) << 32
        } else {
            0
        };
    let (per_group, inodes_per_group) = (le32(&sb, 32), le32(&sb, 40));
    let inode_size = if le32(&sb, 76) == 0 {
        128
    } else {
        le16(&sb, 88)
    };
    let desc_size = if le32(&sb, 96) & 0x80 != 0 {
        le16(&sb, 254).max(32)
    } else {
        32
    };
    if per_group == 0 || !(128..=bs).contains(&inode_size) || desc_size > 1024 {
        return None;
    }
    if blocks.checked_mul(bs)? > src.size().saturating_add(bs) {
        return None;
    }
    let groups = blocks.div_ceil(per_group);
    let gdt = (le32(&sb, 20) + 1) * bs;
    let descs = read(
        src,
        gdt,
        usize::try_from(groups.checked_mul(desc_size)?).ok()?,
    )?;
    let mut out = Vec::new();
    for g in 0..groups as usize {
        let d = &descs[g * desc_size as usize..][..32];
        // INODE_UNINIT: the table holds no inode yet.
        if le16(d, 18) & 1 != 0 {
            continue;
        }
        let hi = if desc_size >= 64 {
            le32(&descs[g * desc_size as usize..], 40) << 32
        } else {
            0
        };
        let table = (le32(d, 8) | hi).checked_mul(bs)?;
        let used = inodes_per_group.saturating_sub(le16(d, 28));
        let t = read(
            src,
            table,
            usize::try_from(used.checked_mul(inode_size)?).ok()?,
        )?;
        for inode in t.chunks_exact(inode_size as usize) {
            // A regular file with links, its blocks in an extent tree.
            if le16(inode, 0) & 0xf000 != 0x8000
                || le16(inode, 26) == 0
                || le32(inode, 32) & 0x8_0000 == 0
            {
                continue;
            }
            let size = le32(inode, 4) | le32(inode, 108) << 32;
            if size < 64 {
                continue;
            }
            let mut extents = Vec::new();
            let mut budget = MAX_NODES;
            if walk(src, &inode[40..100], bs, None, &mut budget, &mut extents).is_none() {
                continue;
            }
            extents.sort_unstable();
            let mut end = 0;
            extents.retain(|e: &(u64, u64, u64)| {
                let keep = e.0 >= end && e.0 < size;
                end = end.max(e.0 + e.2);
                keep
            });
            for e in &mut extents {
                e.2 = e.2.min(size - e.0);
            }
            let Some(&(0, first, _)) = extents.first() else {
                continue;
            };
            let mut magic = [0u8; 4];
            if src.read_at(&mut magic, first).is_err() || !want(&magic) {
                continue;
            }
            out.push(FileMap { size, extents });
            if out.len() >= MAX_FILES {
                return Some(out);
            }
        }
    }
    Some(out)
}

/// Tree blocks read for one file at most.
const MAX_NODES: u32 = 4096;

/// Adds the extents of the tree node `node` as byte ranges; `level` is the level its
/// parent expects (one less than the parent's; the inode's own node says its own).
/// `None` if the node is malformed or the file's node budget runs out.
fn walk<R: ReadAt + ?Sized>(
    src: &R,
    node: &[u8],
    bs: u64,
    level: Option<u64>,
    budget: &mut u32,
    out: &mut Vec<(u64, u64, u64)>,
) -> Option<()> {
    let (entries, depth) = (le16(node, 2) as usize, le16(node, 6));
    if le16(node, 0) != 0xf30a || depth > 5 || level.is_some_and(|l| l != depth) {
        return None;
    }
    if 12 + 12 * entries > node.len() {
        return None;
    }
    let level = depth;
    for e in node[12..12 + 12 * entries].chunks_exact(12) {
        if level == 0 {
            let len = le16(e, 4);
            // Longer than 32768: an unwritten extent, which reads as zeros (a hole).
            if len > 32768 {
                continue;
            }
            let start = le16(e, 6) << 32 | le32(e, 8);
            out.push((le32(e, 0) * bs, start.checked_mul(bs)?, len * bs));
            if out.len() > MAX_EXTENTS {
                return None;
            }
        } else {
            *budget = budget.checked_sub(1)?;
            let child = (le16(e, 8) << 32 | le32(e, 4)).checked_mul(bs)?;
            let block = read(src, child, bs as usize)?;
            walk(src, &block, bs, Some(level - 1), budget, out)?;
        }
    }
    Some(())
}

/// A file of an image, read through its map.
pub struct Mapped<'a, R: ?Sized> {
    pub src: &'a R,
    pub map: &'a FileMap,
}

impl<R: ReadAt + ?Sized> ReadAt for Mapped<'_, R> {
    fn size(&self) -> u64 {
        self.map.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.map.size {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.fill(0);
        let end = offset + buf.len() as u64;
        let ext = &self.map.extents;
        let mut i = ext.partition_point(|e| e.0 + e.2 <= offset);
        while let Some(&(file, image, len)) = ext.get(i).filter(|e| e.0 < end) {
            let (lo, hi) = (file.max(offset), (file + len).min(end));
            self.src.read_at(
                &mut buf[(lo - offset) as usize..(hi - offset) as usize],
                image + (lo - file),
            )?;
            i += 1;
        }
        Ok(())
    }
}

impl FileMap {
    /// The image ranges holding the file's bytes `off..off + len`: (image offset,
    /// offset in the range, length), holes left out.
    pub fn pieces(&self, off: u64, len: u64) -> Vec<(u64, u64, u64)> {
        let end = off + len;
        let mut out = Vec::new();
        let mut i = self.extents.partition_point(|e| e.0 + e.2 <= off);
        while let Some(&(file, image, n)) = self.extents.get(i).filter(|e| e.0 < end) {
            let (lo, hi) = (file.max(off), (file + n).min(end));
            out.push((image + (lo - file), lo - off, hi - lo));
            i += 1;
        }
        out
    }
}
