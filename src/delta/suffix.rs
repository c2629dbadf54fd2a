//! Suffix array over the old bytes (libsais, both cores) and the longest-match search.
//! 32-bit indices up to 2 GiB of old bytes (4 bytes per byte), 64-bit beyond.

use libsais::{SuffixArrayConstruction, ThreadCount};

use super::DeltaError;

/// A suffix array with 32- or 64-bit entries.
pub enum SuffixArray {
    Narrow(Vec<i32>),
    Wide(Vec<i64>),
}

impl SuffixArray {
    /// Builds the suffix array of `text` with `threads` worker threads.
    pub fn build(text: &[u8], threads: u16) -> Result<SuffixArray, DeltaError> {
        let threads = ThreadCount::fixed(threads.max(1));
        if text.len() < i32::MAX as usize {
            let sa = SuffixArrayConstruction::for_text(text)
                .in_owned_buffer32()
                .multi_threaded(threads)
                .run()
                .map_err(|e| DeltaError::Internal(format!("suffix array: {e:?}")))?;
            Ok(SuffixArray::Narrow(sa.into_vec()))
        } else {
            let sa = SuffixArrayConstruction::for_text(text)
                .in_owned_buffer64()
                .multi_threaded(threads)
                .run()
                .map_err(|e| DeltaError::Internal(format!("suffix array: {e:?}")))?;
            Ok(SuffixArray::Wide(sa.into_vec()))
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
        match self {
            SuffixArray::Narrow(v) => v.len(),
            SuffixArray::Wide(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn at(&self, i: usize) -> usize {
        match self {
            SuffixArray::Narrow(v) => v[i] as usize,
            SuffixArray::Wide(v) => v[i] as usize,
        }
    }

    /// Longest prefix of `needle` found in `old`: (position in old, length).
    pub fn search(&self, old: &[u8], needle: &[u8]) -> (usize, usize) {
        if self.is_empty() || needle.is_empty() {
            return (0, 0);
        }
        let (mut st, mut en) = (0usize, self.len() - 1);
        while en - st >= 2 {
            let mid = st + (en - st) / 2;
            let suffix = &old[self.at(mid)..];
            let n = suffix.len().min(needle.len());
            if suffix[..n] < needle[..n] {
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

    #[test]
    fn finds_the_longest_match() {
        let old = b"the quick brown fox jumps over the lazy dog";
        let sa = SuffixArray::build(old, 1).unwrap();
        let (pos, len) = sa.search(old, b"lazy cat");
        assert_eq!((pos, len), (35, 5));
        let (_, len) = sa.search(old, b"zzz");
        assert_eq!(len, 1);
        assert_eq!(match_len(b"abcdefghijk", b"abcdefghijX"), 10);
    }
}
