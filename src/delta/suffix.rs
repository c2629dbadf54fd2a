//! Suffix array over the old bytes (libsais, both cores) and the longest-match search.
//! 32-bit indices up to 2 GiB of old bytes (4 bytes per byte), 64-bit beyond.

use libsais::{SuffixArrayConstruction, ThreadCount};

use super::DeltaError;

/// Suffix array entries, 32- or 64-bit.
pub enum Entries {
    Narrow(Vec<i32>),
    Wide(Vec<i64>),
}

/// A suffix array plus a table of where each two-byte prefix starts in it, which
/// cuts a search from ~25 binary steps (each two cache misses) to ~9 on large inputs.
pub struct SuffixArray {
    entries: Entries,
    /// `buckets[k]` = first index whose suffix's first two bytes (a missing second byte
    /// counts as 0, which sorts a one-byte suffix first, as it should) are ≥ k.
    buckets: Vec<usize>,
}

impl SuffixArray {
    /// Builds the suffix array of `text` with `threads` worker threads.
    pub fn build(text: &[u8], threads: u16) -> Result<SuffixArray, DeltaError> {
        let entries = Self::build_entries(text, threads)?;
        let mut sa = SuffixArray {
            entries,
            buckets: Vec::new(),
        };
        let mut buckets = vec![sa.len(); 65537];
        for i in (0..sa.len()).rev() {
            buckets[Self::key(text, sa.at(i))] = i;
        }
        // Empty buckets start where the next non-empty one does.
        for k in (0..65536).rev() {
            buckets[k] = buckets[k].min(buckets[k + 1]);
        }
        sa.buckets = buckets;
        Ok(sa)
    }

    #[inline]
    fn key(text: &[u8], p: usize) -> usize {
        (usize::from(text[p]) << 8) | usize::from(text.get(p + 1).copied().unwrap_or(0))
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

    /// Bytes of memory per byte of text.
    pub fn bytes_per_byte(text_len: u64) -> u64 {
        if text_len < i32::MAX as u64 {
            4
        } else {
            8
        }
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

    /// Longest prefix of `needle` found in `old`: (position in old, length).
    pub fn search(&self, old: &[u8], needle: &[u8]) -> (usize, usize) {
        if self.is_empty() || needle.is_empty() {
            return (0, 0);
        }
        let (mut st, mut en) = (0usize, self.len() - 1);
        if needle.len() >= 2 {
            let k = (usize::from(needle[0]) << 8) | usize::from(needle[1]);
            let (a, b) = (self.buckets[k], self.buckets[k + 1]);
            // Any suffix sharing the first two bytes lies in [a, b); if none does, the
            // longest match is at most one byte and the whole array is searched.
            if a < b {
                st = a;
                en = b - 1;
            }
        }
        while en - st >= 2 {
            let mid = st + (en - st) / 2;
            // Full lexicographic order: a suffix that is a proper prefix of the needle
            // sorts before it (bsdiff's truncated compare got this wrong and could miss
            // the longest match).
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
            let sa = SuffixArray::build(&old, 1).unwrap();
            let (pos, len) = sa.search(&old, &needle);
            prop_assert_eq!(len, brute(&old, &needle));
            prop_assert_eq!(match_len(&old[pos..], &needle), len);
        }
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
