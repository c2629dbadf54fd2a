//! Suffix array over the old bytes (libsais) and the longest-match search, plus the two
//! structures that make searching cheap: filters that say whether a match of 8 (or 16)
//! bytes can exist at all, and a table of where each 2-byte prefix starts in the array.
//! 32-bit indices up to 2 GiB of old bytes (4 bytes per byte), 64-bit beyond.

use std::ops::AddAssign;

use libsais::{SuffixArrayConstruction, ThreadCount};

use super::DeltaError;

/// Suffix array entries, 32- or 64-bit.
pub enum Entries {
    Narrow(Vec<i32>),
    Wide(Vec<i64>),
}

/// Index positions as 32-bit when they fit, else 64-bit.
enum Table {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl Table {
    #[inline]
    fn get(&self, k: usize) -> usize {
        match self {
            Table::Narrow(v) => v[k] as usize,
            Table::Wide(v) => v[k] as usize,
        }
    }
}

/// A suffix array plus a table of where each prefix of `bits` bits starts in it. On large
/// inputs a search is dominated by dependent cache misses (one into the array, one into
/// the text per binary step); the table saves the first 16 steps.
pub struct SuffixArray {
    entries: Entries,
    /// Prefix bits the table is keyed by (of the first three bytes).
    bits: u32,
    /// `buckets[k]` = number of suffixes whose first `bits` bits (missing bytes past the
    /// end count as 0, which keeps keys in suffix order) are < k.
    buckets: Table,
    /// Which 8-byte strings occur in the text, and which 15-byte ones at even positions.
    grams: [GramFilter; 2],
}

/// Key bits of the prefix table: the first two bytes (2^16 entries, built in cache). A
/// table of all three bytes (64 MiB) saved binary-search steps when most positions of
/// new were searched; with the gram filters a few percent are, and its build (a cache
/// miss per old byte, 0.2 s on the ruff pair) competed with libsais for the caches. With
/// this table and two-bit filters: ruff diff peak RSS 278 → 214 MiB, wall unchanged
/// (median of 15 interleaved runs 2.21 vs 2.34 s, fastest 1.89 vs 1.88 s).
pub const TABLE_BITS: u32 = 16;

impl SuffixArray {
    /// Builds the suffix array of `text` with `threads` worker threads.
    pub fn build(text: &[u8], threads: u16) -> Result<SuffixArray, DeltaError> {
        Self::build_beside(text, threads, || ()).0
    }

    /// Builds the suffix array and runs `beside` on the thread that builds the table and
    /// filters, once they are done (that thread waits for libsais otherwise).
    pub fn build_beside<R: Send>(
        text: &[u8],
        threads: u16,
        beside: impl FnOnce() -> R + Send,
    ) -> (Result<SuffixArray, DeltaError>, R) {
        Self::build_with_bits(text, threads, TABLE_BITS, beside)
    }

    fn build_with_bits<R: Send>(
        text: &[u8],
        threads: u16,
        bits: u32,
        beside: impl FnOnce() -> R + Send,
    ) -> (Result<SuffixArray, DeltaError>, R) {
        // libsais gets all threads but one; the last builds the prefix table and the gram
        // filters meanwhile. (libsais gains little from a second thread on these sizes —
        // 0.93 s alone, 0.75 s with two on the ruff pair — and its OpenMP workers spin
        // while they wait, starving anything running beside them.)
        let t = std::time::Instant::now();
        let narrow = (text.len() as u64) < u64::from(u32::MAX);
        let (entries, side) = rayon::join(
            || Self::build_entries(text, threads.saturating_sub(1).max(1)),
            || {
                let buckets = match narrow {
                    true => Table::Narrow(Self::bucket_starts(text, bits)),
                    false => Table::Wide(Self::bucket_starts(text, bits)),
                };
                let grams = GramFilter::build_pair(text);
                tracing::debug!(secs = t.elapsed().as_secs_f64(), "prefix table and filters");
                let r = beside();
                tracing::debug!(secs = t.elapsed().as_secs_f64(), "work beside done");
                (buckets, grams, r)
            },
        );
        let (buckets, grams, r) = side;
        let sa = entries.map(|entries| SuffixArray {
            entries,
            bits,
            buckets,
            grams,
        });
        (sa, r)
    }

    /// Bytes of memory the prefix table takes for a text this long.
    pub fn table_bytes(text_len: u64) -> u64 {
        let entry = if text_len < u64::from(u32::MAX) { 4 } else { 8 };
        (1u64 << TABLE_BITS) * entry
    }

    /// Where each key's bucket starts (the number of suffixes with a smaller key), with
    /// one extra trailing slot holding the total, so `[k]..[k + 1]` is bucket k.
    fn bucket_starts<T: Copy + Default + AddAssign + From<u8>>(text: &[u8], bits: u32) -> Vec<T> {
        let mut table = vec![T::default(); (1 << bits) + 1];
        // Rolling key of the three bytes starting at each position, zero-padded.
        let mut k = 0u32;
        let bytes = text.iter().copied().chain([0, 0]);
        for (i, b) in bytes.enumerate() {
            k = ((k << 8) | u32::from(b)) & 0xff_ffff;
            if i >= 2 {
                table[(k >> (24 - bits)) as usize] += T::from(1);
            }
        }
        let mut sum = T::default();
        for slot in table.iter_mut() {
            let count = *slot;
            *slot = sum;
            sum += count;
        }
        table
    }

    /// The table's key for the first `d` bytes of `needle` (d ≤ 3), and the number of
    /// consecutive keys sharing them (when `d` bytes are more than the table's bits, the
    /// key's bucket holds those suffixes and possibly others).
    #[inline]
    fn key(&self, needle: &[u8], d: usize) -> (usize, usize) {
        let k = (0..3).fold(0u32, |k, i| {
            (k << 8) | if i < d { u32::from(needle[i]) } else { 0 }
        });
        let known = (8 * d as u32).min(self.bits);
        ((k >> (24 - self.bits)) as usize, 1 << (self.bits - known))
    }

    fn build_entries(text: &[u8], threads: u16) -> Result<Entries, DeltaError> {
        let threads = ThreadCount::fixed(threads.max(1));
        if text.len() < i32::MAX as usize {
            let sa = SuffixArrayConstruction::for_text(text)
                .in_owned_buffer32()
                .multi_threaded(threads)
                .run()
                .map_err(|e| DeltaError::Internal(format!("suffix array: {e:?}")))?;
            Ok(Entries::Narrow(sa.into_vec()))
        } else {
            let sa = SuffixArrayConstruction::for_text(text)
                .in_owned_buffer64()
                .multi_threaded(threads)
                .run()
                .map_err(|e| DeltaError::Internal(format!("suffix array: {e:?}")))?;
            Ok(Entries::Wide(sa.into_vec()))
        }
    }

    /// Bytes of memory per byte of text: the array's entries plus the two gram filters
    /// (at most 8 bits per byte each). Add `table_bytes` for the prefix table.
    pub fn bytes_per_byte(text_len: u64) -> u64 {
        let entries = if text_len < i32::MAX as u64 { 4 } else { 8 };
        entries + 2
    }

    pub fn len(&self) -> usize {
        match &self.entries {
            Entries::Narrow(v) => v.len(),
            Entries::Wide(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn at(&self, i: usize) -> usize {
        match &self.entries {
            Entries::Narrow(v) => v[i] as usize,
            Entries::Wide(v) => v[i] as usize,
        }
    }

    /// False when the longest match of `needle` in the text is shorter than 8 bytes
    /// (true may be a false positive).
    #[inline]
    pub fn may_match8(&self, needle: &[u8]) -> bool {
        self.grams[0].may_match(needle)
    }

    /// False when the longest match is shorter than 16 bytes.
    #[inline]
    pub fn may_match16(&self, needle: &[u8]) -> bool {
        self.grams[1].may_match(needle)
    }

    /// Longest prefix of `needle` found in `old`: (position in old, length).
    pub fn search(&self, old: &[u8], needle: &[u8]) -> (usize, usize) {
        if self.is_empty() || needle.is_empty() {
            return (0, 0);
        }
        // Every suffix that shares the needle's first d bytes lies in that prefix's
        // bucket; a bucket can also hold a padded short suffix that does not, so a result
        // shorter than d falls back to the next shorter prefix.
        let mut tried = (0, 0);
        for d in (1..=needle.len().min(3)).rev() {
            let (k, span) = self.key(needle, d);
            let (a, b) = (self.buckets.get(k), self.buckets.get(k + span));
            if a < b && (a, b) != tried {
                tried = (a, b);
                let found = self.search_in(old, needle, a, b - 1);
                if found.1 >= d {
                    return found;
                }
            }
        }
        self.search_in(old, needle, 0, self.len() - 1)
    }

    /// Binary search for `needle` between suffix-array indexes `st` and `en` (inclusive)
    /// in full lexicographic order (a suffix that is a proper prefix of the needle sorts
    /// before it; bsdiff's truncated compare got this wrong and could miss the longest
    /// match). The comparison is a plain memcmp on purpose: its outcome is all the next
    /// step depends on, so the CPU overlaps the next step's cache misses with this one's.
    fn search_in(&self, old: &[u8], needle: &[u8], mut st: usize, mut en: usize) -> (usize, usize) {
        while en - st >= 2 {
            let mid = st + (en - st) / 2;
            if old[self.at(mid)..] < *needle {
                st = mid;
            } else {
                en = mid;
            }
        }
        let (a, b) = (self.at(st), self.at(en));
        let (x, y) = (match_len(&old[a..], needle), match_len(&old[b..], needle));
        if x > y {
            (a, x)
        } else {
            (b, y)
        }
    }
}

/// A one-sided set of the `gram`-byte strings of a text (no false negatives): a bitset
/// where each string sets two bits of one 64-bit word picked by a multiplicative hash
/// (one cache miss per probe, as with one bit, but half the false positives at this
/// density: on the ruff pair 617 k searches instead of 785 k), over every `step`-th
/// position: a match of `gram + step - 1` bytes or more covers a sampled string within
/// its first `step` bytes, so asking for each of those finds it.
struct GramFilter {
    words: Vec<u64>,
    gram: usize,
    step: usize,
    /// Right shift that turns a 64-bit product into a word index.
    shift: u32,
}

impl GramFilter {
    fn empty(text_len: usize, gram: usize, step: usize, bits_per_byte: usize) -> GramFilter {
        let nwords = (text_len * bits_per_byte / 64).next_power_of_two().max(64);
        GramFilter {
            words: vec![0u64; nwords],
            gram,
            step,
            shift: 64 - nwords.trailing_zeros(),
        }
    }

    /// The two filters the matcher asks: every 8-byte string, at four to eight bits per
    /// text byte (measured on the corpus: a quarter of that slowed matching 20 %, twice
    /// made the build 2× slower for no gain); and 15-byte strings at even positions
    /// (asked far less often; sampling halves its build for a second probe).
    fn build_pair(text: &[u8]) -> [GramFilter; 2] {
        let mut f8 = GramFilter::empty(text.len(), 8, 1, 4);
        let mut f15 = GramFilter::empty(text.len(), 15, 2, 2);
        f8.fill(text);
        f15.fill(text);
        [f8, f15]
    }

    /// Adds the strings at every `step`-th position of `text`. A filter larger than the
    /// caches takes a cache miss per random write; so the writes of each batch of
    /// positions are first bucketed by the cache-sized slice of the filter they fall in,
    /// then applied slice by slice.
    fn fill(&mut self, text: &[u8]) {
        /// Words per slice (512 KiB) and positions per batch.
        const SLICE: usize = 1 << 16;
        const BATCH: usize = 1 << 20;
        let end = text.len().saturating_sub(self.gram - 1);
        let slices = self.words.len() / SLICE;
        if slices <= 1 {
            for i in (0..end).step_by(self.step) {
                let (w, mask) = self.index(&text[i..]);
                self.words[w] |= mask;
            }
            return;
        }
        let shift = SLICE.trailing_zeros();
        let mut buckets: Vec<Vec<u64>> = (0..slices)
            .map(|_| Vec::with_capacity(2 * BATCH / slices))
            .collect();
        for start in (0..end).step_by(BATCH * self.step) {
            for i in (start..end.min(start + BATCH * self.step)).step_by(self.step) {
                let (w, bits) = self.slots(&text[i..]);
                buckets[w >> shift].push((w as u64) << 12 | bits);
            }
            for bucket in &mut buckets {
                for &e in bucket.iter() {
                    self.words[(e >> 12) as usize] |= Self::mask(e);
                }
                bucket.clear();
            }
        }
    }

    /// The word and the bits in it that stand for the string at `at`.
    #[inline]
    fn index(&self, at: &[u8]) -> (usize, u64) {
        let (w, bits) = self.slots(at);
        (w, Self::mask(bits))
    }

    /// The word's bits for two 6-bit bit numbers (in the low 12 bits of `bits`).
    #[inline]
    fn mask(bits: u64) -> u64 {
        1 << ((bits >> 6) & 63) | 1 << (bits & 63)
    }

    /// The word and its two bit numbers (6 bits each) for the string at `at`.
    #[inline]
    fn slots(&self, at: &[u8]) -> (usize, u64) {
        let word = |i: usize| u64::from_le_bytes(at[i..i + 8].try_into().unwrap_or([0; 8]));
        let mut x = word(0);
        if self.gram > 8 {
            // The last 8 bytes (overlapping the first word).
            x ^= word(self.gram - 8)
                .wrapping_mul(0xD6E8_FEB8_6659_FD93)
                .rotate_left(32);
        }
        let h = x.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> self.shift) as usize, (h >> (self.shift - 12)) & 0xfff)
    }

    #[inline]
    fn has(&self, at: &[u8]) -> bool {
        let (w, mask) = self.index(at);
        self.words[w] & mask == mask
    }

    /// False when no match of `gram + step - 1` bytes or more can start at `needle`.
    #[inline]
    fn may_match(&self, needle: &[u8]) -> bool {
        if needle.len() < self.gram + self.step - 1 {
            return true;
        }
        (0..self.step).any(|k| self.has(&needle[k..]))
    }
}

/// Length of the common prefix of `a` and `b`, eight bytes at a time.
#[inline]
pub fn match_len(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let d = x ^ y;
        if d != 0 {
            return i + (d.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brute(old: &[u8], needle: &[u8]) -> usize {
        (0..old.len())
            .map(|p| match_len(&old[p..], needle))
            .max()
            .unwrap_or(0)
    }

    proptest! {
        #[test]
        fn bucketed_search_finds_a_longest_match(old in proptest::collection::vec(0u8..4, 1..300), needle in proptest::collection::vec(0u8..4, 1..12)) {
            for bits in [16, 20, 24] {
                let sa = SuffixArray::build_with_bits(&old, 1, bits, || ()).0.unwrap();
                let (pos, len) = sa.search(&old, &needle);
                prop_assert_eq!(len, brute(&old, &needle));
                prop_assert_eq!(match_len(&old[pos..], &needle), len);
            }
        }
    }

    #[test]
    fn filters_hold_every_string_of_the_text() {
        // 6 MiB: both filters span several slices, so the bucketed fill runs.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let text: Vec<u8> = (0..6 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        let [f8, f15] = GramFilter::build_pair(&text);
        assert!(f8.words.len() / (1 << 16) > 1 && f15.words.len() / (1 << 16) > 1);
        assert!((0..text.len() - 7).all(|i| f8.has(&text[i..])));
        assert!((0..text.len() - 14).step_by(2).all(|i| f15.has(&text[i..])));
        // One-sided, and mostly right: few random strings pass.
        let passed = (0..10_000u64)
            .filter(|i| f8.has(&(i.wrapping_mul(0x2545_F491_4F6C_DD1D)).to_le_bytes()))
            .count();
        assert!(passed < 1_500, "{passed} of 10000 random strings passed");
    }

    #[test]
    fn finds_the_longest_match() {
        let old = b"the quick brown fox jumps over the lazy dog";
        let sa = SuffixArray::build(old, 1).unwrap();
        let (pos, len) = sa.search(old, b"lazy cat");
        assert_eq!((pos, len), (35, 5));
        let (_, len) = sa.search(old, b"zzz");
        assert_eq!(len, 1);
        assert_eq!(sa.search(old, b"dog!").1, 3);
        assert_eq!(sa.search(old, b"g").1, 1);
        assert_eq!(sa.search(old, b"q").1, 1);
        assert_eq!(match_len(b"abcdefghijk", b"abcdefghijX"), 10);
    }
}
