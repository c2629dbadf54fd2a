//! Planning a diff within a memory limit.
//!
//! Small inputs: one segment, all of old. Large inputs: a sampled anchor index over old
//! (a gear rolling hash; a position is sampled when the hash's top bits are zero, so old
//! and new sample the same content at the same places) maps each new segment to the old
//! regions its anchors land in. Only those regions (plus margins) get a suffix array, so
//! memory is bounded by the limit, and data that moved anywhere in old still matches.

use super::suffix::SuffixArray;
use super::{DeltaError, ReadAt};

/// One unit of work: a span of new and the old regions it is matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub new_start: u64,
    pub new_end: u64,
    /// Sorted, disjoint old ranges.
    pub regions: Vec<(u64, u64)>,
}

/// Bytes around each anchor hit included in a segment's old regions.
const ANCHOR_MARGIN: u64 = 512 << 10;
/// One sampled position per this many bytes on average (a power of two).
const ANCHOR_SPACING: u64 = 1024;
/// Pieces in which inputs are streamed while indexing.
const INDEX_PIECE: usize = 4 << 20;
/// Memory the planner keeps aside for buffers, compression contexts and the allocator.
const SLACK: u64 = 160 << 20;

/// Memory for diffing in one piece: the text, its suffix array and search structures,
/// new and its streams.
fn whole_cost(old: u64, new: u64) -> u64 {
    old * (1 + SuffixArray::bytes_per_byte(old)) + SuffixArray::table_bytes(old) + 3 * new + SLACK
}

/// Largest span of new matched against one set of windows.
const MAX_SEGMENT: u64 = 256 << 20;

/// Splits the work so that peak memory stays under `limit`.
pub fn plan(
    old: &dyn ReadAt,
    new: &dyn ReadAt,
    limit: u64,
    block_size: u64,
) -> Result<Vec<Segment>, DeltaError> {
    let (o, n) = (old.size(), new.size());
    if whole_cost(o, n) <= limit {
        return Ok(vec![Segment {
            new_start: 0,
            new_end: n,
            regions: vec![(0, o)],
        }]);
    }
    // Windowed: a segment of new (whole blocks) costs 3× its size (bytes, diff, extra);
    // its old regions cost the text plus the suffix array and filters per byte, plus the
    // prefix table: its full size once windows are large, else at most 4 bytes per byte.
    let index_bytes = (o / ANCHOR_SPACING) * 16 * 2;
    let budget = limit
        .checked_sub(SLACK + index_bytes)
        .ok_or(DeltaError::MemoryLimit {
            limit,
            need: SLACK + index_bytes + (64 << 20),
        })?;
    // A window never exceeds the budget, so its suffix array is 32-bit when that is.
    let window_max = o.min(budget);
    let per_old_byte = 1 + SuffixArray::bytes_per_byte(window_max);
    // Windows about twice the segment: room for the segment's sources plus moved data.
    let segment = (budget / (3 + 2 * (per_old_byte + 4))).min(MAX_SEGMENT);
    let segment = (segment / block_size).max(1) * block_size;
    let full_table = SuffixArray::table_bytes(window_max);
    let avail = budget.saturating_sub(3 * segment);
    let window = match avail.checked_sub(full_table) {
        Some(rest) if rest / per_old_byte >= full_table / 4 => rest / per_old_byte,
        _ => avail / (per_old_byte + 4),
    };
    if window < 4 * ANCHOR_MARGIN {
        return Err(DeltaError::MemoryLimit {
            limit,
            need: SLACK + index_bytes + 3 * segment + 4 * (per_old_byte + 4) * ANCHOR_MARGIN,
        });
    }
    let index = AnchorIndex::build(old)?;
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + segment).min(n);
        let regions = index.regions_for(new, start, end, o, window)?;
        out.push(Segment {
            new_start: start,
            new_end: end,
            regions,
        });
        start = end;
    }
    Ok(out)
}

const GEAR_MASK: u64 = !(u64::MAX >> ANCHOR_SPACING.trailing_zeros());

/// Calls `hit(pos, key)` for every sampled position of `src[start..end]`.
fn sample(
    src: &dyn ReadAt,
    start: u64,
    end: u64,
    mut hit: impl FnMut(u64, u64),
) -> Result<(), DeltaError> {
    let gear = &*GEAR;
    let mut h = 0u64;
    let mut buf = vec![0u8; INDEX_PIECE];
    let mut off = start;
    while off < end {
        let len = INDEX_PIECE.min((end - off) as usize);
        src.read_at(&mut buf[..len], off)?;
        for (i, &b) in buf[..len].iter().enumerate() {
            h = (h << 1).wrapping_add(gear[b as usize]);
            // The hash covers the last 64 bytes; skip positions whose window is partial.
            if h & GEAR_MASK == 0 && off + i as u64 >= start + 64 {
                hit(off + i as u64, h);
            }
        }
        off += len as u64;
    }
    Ok(())
}

static GEAR: std::sync::LazyLock<[u64; 256]> = std::sync::LazyLock::new(|| {
    let mut t = [0u64; 256];
    let mut x = 0x05ee_d0fd_e17a_u64;
    for v in t.iter_mut() {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        *v = z ^ (z >> 31);
    }
    t
});

/// Sorted (key, old position) samples.
pub struct AnchorIndex {
    entries: Vec<(u64, u64)>,
}

impl AnchorIndex {
    pub fn build(old: &dyn ReadAt) -> Result<AnchorIndex, DeltaError> {
        let mut entries = Vec::with_capacity((old.size() / ANCHOR_SPACING) as usize + 16);
        sample(old, 0, old.size(), |pos, key| entries.push((key, pos)))?;
        entries.sort_unstable();
        // Keep the first position of each key: repeated content anchors anywhere.
        entries.dedup_by_key(|e| e.0);
        Ok(AnchorIndex { entries })
    }

    fn lookup(&self, key: u64) -> Option<u64> {
        self.entries
            .binary_search_by_key(&key, |e| e.0)
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// Old regions for new[start..end]: anchor hits widened by a margin, merged, and cut
    /// to `window` bytes keeping the regions with the most hits.
    fn regions_for(
        &self,
        new: &dyn ReadAt,
        start: u64,
        end: u64,
        old_size: u64,
        window: u64,
    ) -> Result<Vec<(u64, u64)>, DeltaError> {
        let mut hits: Vec<u64> = Vec::new();
        sample(new, start.saturating_sub(64), end, |_, key| {
            if let Some(p) = self.lookup(key) {
                hits.push(p);
            }
        })?;
        hits.sort_unstable();
        // (start, end, hit count)
        let mut regions: Vec<(u64, u64, u64)> = Vec::new();
        for p in hits {
            let (a, b) = (
                p.saturating_sub(ANCHOR_MARGIN),
                (p + ANCHOR_MARGIN).min(old_size),
            );
            match regions.last_mut() {
                Some(r) if a <= r.1 => {
                    r.1 = r.1.max(b);
                    r.2 += 1;
                }
                _ => regions.push((a, b, 1)),
            }
        }
        let total: u64 = regions.iter().map(|r| r.1 - r.0).sum();
        if total > window {
            regions.sort_by_key(|r| std::cmp::Reverse(r.2));
            let mut kept = Vec::new();
            let mut used = 0;
            for r in regions {
                let len = (r.1 - r.0).min(window - used);
                if len == 0 {
                    break;
                }
                kept.push((r.0, r.0 + len, r.2));
                used += len;
            }
            kept.sort_unstable();
            regions = kept;
        }
        Ok(regions.into_iter().map(|r| (r.0, r.1)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_inputs_are_one_segment_over_all_of_old() {
        let old = vec![1u8; 1000];
        let new = vec![2u8; 500];
        let p = plan(&old, &new, 1 << 30, 1 << 20).unwrap();
        assert_eq!(
            p,
            vec![Segment {
                new_start: 0,
                new_end: 500,
                regions: vec![(0, 1000)]
            }]
        );
    }

    #[test]
    fn moved_data_is_found_by_anchors() {
        let old = crate::cli::demo::noise(8 << 20, 1);
        // new = the last 2 MiB of old moved to the front, then the rest.
        let mut new = old[6 << 20..].to_vec();
        new.extend_from_slice(&old[..6 << 20]);
        let index = AnchorIndex::build(&old).unwrap();
        let regions = index
            .regions_for(&new, 0, 1 << 20, old.len() as u64, 64 << 20)
            .unwrap();
        let covered: u64 = regions
            .iter()
            .filter(|r| r.0 <= (6 << 20) + 4096 && r.1 >= (7 << 20) - 4096)
            .count() as u64;
        assert_eq!(covered, 1, "{regions:?}");
    }
}
