//! Content-defined chunking (FastCDC-style gear hash with normalized chunking).
//!
//! A cut point depends only on the 64 bytes before it, so an insertion early in an
//! image moves the chunk boundaries near the edit and leaves later chunks identical —
//! which is what lets consecutive builds share chunks. Pure logic, no I/O.

/// Chunk size bounds. `avg` must be a power of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    pub min: usize,
    pub avg: usize,
    pub max: usize,
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams {
            min: 64 << 10,
            avg: 256 << 10,
            max: 1 << 20,
        }
    }
}

const fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const fn gear_table() -> [u64; 256] {
    let mut t = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = splitmix64(0x7570_6461_7465_2d65 ^ i as u64); // fixed seed: chunk boundaries must never change
        i += 1;
    }
    t
}

/// Fixed random values per byte; part of the on-disk dedupe behaviour, never change.
static GEAR: [u64; 256] = gear_table();

/// Finds content-defined cut points.
#[derive(Debug, Clone, Copy)]
pub struct Chunker {
    params: ChunkParams,
    /// Harder mask before the average size, easier after (normalized chunking, level 2):
    /// chunk sizes cluster around `avg`.
    mask_small: u64,
    mask_large: u64,
}

impl Chunker {
    pub fn new(params: ChunkParams) -> Self {
        let bits = params.avg.trailing_zeros();
        // Masks use the top bits of the gear hash: they depend on the last 64 bytes,
        // while the low bits depend only on the last few.
        let top = |n: u32| if n == 0 { 0 } else { !0u64 << (64 - n) };
        Chunker {
            params,
            mask_small: top(bits + 2),
            mask_large: top(bits.saturating_sub(2)),
        }
    }

    pub fn params(&self) -> ChunkParams {
        self.params
    }

    /// Length of the first chunk of `data`. Returns `data.len()` when no cut point is
    /// found before it: callers pass at least `max` bytes unless `data` is the tail.
    pub fn cut(&self, data: &[u8]) -> usize {
        let ChunkParams { min, avg, max } = self.params;
        let n = data.len().min(max);
        if n <= min {
            return n;
        }
        let normal = avg.min(n);
        let mut h: u64 = 0;
        let mut i = min;
        while i < normal {
            h = (h << 1).wrapping_add(GEAR[data[i] as usize]);
            if h & self.mask_small == 0 {
                return i + 1;
            }
            i += 1;
        }
        while i < n {
            h = (h << 1).wrapping_add(GEAR[data[i] as usize]);
            if h & self.mask_large == 0 {
                return i + 1;
            }
            i += 1;
        }
        n
    }

    /// All chunk lengths of an in-memory buffer (tests, benches, dedupe measurement).
    pub fn lengths(&self, mut data: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let c = self.cut(data);
            out.push(c);
            data = &data[c..];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> Chunker {
        Chunker::new(ChunkParams {
            min: 256,
            avg: 1024,
            max: 4096,
        })
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| splitmix64(seed ^ i) as u8)
            .collect()
    }

    #[test]
    fn chunks_respect_bounds_and_cover_input() {
        let c = small();
        let data = noise(200_000, 1);
        let lens = c.lengths(&data);
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        for (i, l) in lens.iter().enumerate() {
            assert!(*l <= 4096);
            if i + 1 < lens.len() {
                assert!(*l > 256, "chunk {i} is {l}");
            }
        }
        let avg = data.len() / lens.len();
        assert!((700..2000).contains(&avg), "average chunk {avg}");
    }

    #[test]
    fn insertion_only_changes_nearby_chunks() {
        let c = small();
        let old = noise(100_000, 7);
        let mut new = old.clone();
        new.splice(10_000..10_000, noise(333, 9));
        let chunks = |d: &[u8]| {
            let mut off = 0;
            c.lengths(d)
                .into_iter()
                .map(|l| {
                    let s = &d[off..off + l];
                    off += l;
                    s.to_vec()
                })
                .collect::<std::collections::HashSet<_>>()
        };
        let (a, b) = (chunks(&old), chunks(&new));
        let shared = a.intersection(&b).count();
        assert!(
            shared * 10 >= a.len() * 9,
            "only {shared} of {} chunks survive",
            a.len()
        );
    }

    proptest! {
        #[test]
        fn cut_is_never_zero_and_never_past_max(data in proptest::collection::vec(any::<u8>(), 1..10_000)) {
            let c = small();
            let n = c.cut(&data);
            prop_assert!((1..=4096).contains(&n) && n <= data.len());
        }
    }
}
