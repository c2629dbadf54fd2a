//! bsdiff-class approximate matching: find, for each stretch of new, the old stretch
//! whose bytewise difference compresses best (exact seeds from the suffix array,
//! extended forward and backward while at least half the bytes agree).
//!
//! This is bsdiff 4.3's scan with one guard against its known pathological inputs: when
//! a long exact match is found but does not beat the current alignment, the scan skips
//! ahead over it instead of re-searching at every byte (which made bsdiff quadratic on
//! long near-repeats). And it searches only where a search can change the outcome: a
//! position whose next 8 (or 16) bytes occur nowhere in old cannot start a match that
//! beats the alignment (see `SuffixArray::may_match8`), which skips most of the searches
//! bsdiff makes inside approximately matching stretches (ruff pair: matching 2.6 s → 1.0 s,
//! patch 0.01 % smaller); and a match that lost to the alignment is not searched for again
//! at each of its following bytes.

use super::format::Op;
use super::suffix::{match_len, SuffixArray};

/// A found match this long that still loses to the current alignment means the
/// alignment already covers the stretch: skip most of it instead of searching each byte.
const SKIP_THRESHOLD: usize = 512;
/// bsdiff's "a new match must beat the current alignment by this many bytes".
const MISMATCH_SLACK: i64 = 8;
/// A match that lost to the alignment is reused one byte on, instead of searched again,
/// while at least this much of it is left (ruff pair, tried 1-64 and off: 8 made
/// matching 20 % faster and the patch 0.07 % smaller; 1 made it 0.2 % larger).
const MEMO_MIN: i64 = 8;

/// How many of the first 8 bytes of `a` and `b` are equal (both at least 8 bytes long).
#[inline]
fn equal_bytes8(a: &[u8], b: &[u8]) -> usize {
    let word = |s: &[u8]| u64::from_le_bytes(s[..8].try_into().unwrap_or([0; 8]));
    let x = word(a) ^ word(b);
    // High bit of each byte of x that is zero (exact: no carry crosses a byte).
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    (!(((x & LOW7) + LOW7) | x | LOW7)).count_ones() as usize
}

/// Ops covering `new` exactly (old positions index `old`).
pub fn scan(old: &[u8], sa: &SuffixArray, new: &[u8]) -> Vec<Op> {
    let (oldsize, newsize) = (old.len() as i64, new.len() as i64);
    let mut ops = Vec::new();
    let (mut scan, mut len, mut pos) = (0i64, 0i64, 0i64);
    let (mut lastscan, mut lastpos, mut lastoffset) = (0i64, 0i64, 0i64);
    let old_eq = |o: i64, n: i64| o >= 0 && o < oldsize && old[o as usize] == new[n as usize];
    // How many of the 16 bytes at `s` the current alignment matches.
    let aligned16 = |s: i64, off: i64| {
        let o = s + off;
        if o >= 0 && o + 16 <= oldsize && s + 16 <= newsize {
            let (a, b) = (&old[o as usize..], &new[s as usize..]);
            equal_bytes8(a, b) + equal_bytes8(&a[8..], &b[8..])
        } else {
            (s..(s + 16).min(newsize))
                .filter(|&i| old_eq(i + off, i))
                .count()
        }
    };
    // Where the alignment's exact run through `scan` ends: (offset, end in new). The end is
    // the same for every position inside the run, so it is found once per run.
    let mut run = (i64::MIN, 0i64);
    while scan < newsize {
        let mut oldscore = 0i64;
        scan += len;
        let mut scsc = scan;
        // The previous position's match, one byte on: (old position, length, new position).
        let mut memo = (0i64, 0i64, -1i64);
        while scan < newsize {
            let needle = &new[scan as usize..];
            // A match can only beat the alignment by more than the slack if it is longer
            // than 8 bytes — and at least 16 when the alignment already matches 8 of the
            // next 16 bytes. When the gram filters say no such match exists, skip the
            // search (the bulk of bsdiff's time) and take the alignment's own exact run as
            // the match: that is all the scan needs to decide whether to jump ahead.
            let worth_searching = || {
                sa.may_match8(needle) && (aligned16(scan, lastoffset) < 8 || sa.may_match16(needle))
            };
            if memo.2 == scan && memo.1 >= MEMO_MIN {
                // Still inside a match found a byte ago that did not beat the alignment:
                // its tail is the longest match here unless a longer one starts exactly
                // here, which a later search finds anyway (backward extension recovers
                // its start).
                pos = memo.0;
                len = memo.1;
            } else {
                if run.0 != lastoffset || scan >= run.1 {
                    let o = scan + lastoffset;
                    let l = if o >= 0 && o < oldsize {
                        match_len(&old[o as usize..], needle) as i64
                    } else {
                        0
                    };
                    run = (lastoffset, scan + l);
                }
                let (aligned, end) = (run.1 - scan, run.1 as usize);
                // A match longer than the alignment's run covers the byte where the run
                // breaks and the seven before it; when those 8 bytes occur nowhere in old,
                // the run is a longest match (inside aligned stretches, most searches
                // only confirmed that).
                let run_is_longest =
                    aligned >= 7 && (end >= new.len() || !sa.may_match8(&new[end - 7..]));
                if !run_is_longest && worth_searching() {
                    let (p, l) = sa.search(old, needle);
                    pos = p as i64;
                    len = l as i64;
                } else {
                    pos = scan + lastoffset;
                    len = aligned;
                }
            }
            while scsc < scan + len {
                if old_eq(scsc + lastoffset, scsc) {
                    oldscore += 1;
                }
                scsc += 1;
            }
            if (len == oldscore && len != 0) || len > oldscore + MISMATCH_SLACK {
                break;
            }
            if old_eq(scan + lastoffset, scan) {
                oldscore -= 1;
            }
            scan += 1;
            memo = (pos + 1, len - 1, scan);
            if len as usize >= SKIP_THRESHOLD {
                let skip = (len as usize - SKIP_THRESHOLD / 2) as i64;
                let stop = (scan + skip).min(newsize);
                while scan < stop {
                    if old_eq(scan + lastoffset, scan) {
                        oldscore -= 1;
                    }
                    scan += 1;
                }
            }
        }
        if len != oldscore || scan == newsize {
            // Extend the previous match forward...
            let (mut s, mut sf, mut lenf) = (0i64, 0i64, 0i64);
            let mut i = 0i64;
            while lastscan + i < scan && lastpos + i < oldsize {
                if old[(lastpos + i) as usize] == new[(lastscan + i) as usize] {
                    s += 1;
                }
                i += 1;
                if s * 2 - i > sf * 2 - lenf {
                    sf = s;
                    lenf = i;
                }
            }
            // ...and the new one backward.
            let mut lenb = 0i64;
            if scan < newsize {
                let (mut s, mut sb) = (0i64, 0i64);
                let mut i = 1i64;
                while scan >= lastscan + i && pos >= i {
                    if old[(pos - i) as usize] == new[(scan - i) as usize] {
                        s += 1;
                    }
                    if s * 2 - i > sb * 2 - lenb {
                        sb = s;
                        lenb = i;
                    }
                    i += 1;
                }
            }
            // Split any overlap where it scores best.
            if lastscan + lenf > scan - lenb {
                let overlap = (lastscan + lenf) - (scan - lenb);
                let (mut s, mut ss, mut lens) = (0i64, 0i64, 0i64);
                for i in 0..overlap {
                    if new[(lastscan + lenf - overlap + i) as usize]
                        == old[(lastpos + lenf - overlap + i) as usize]
                    {
                        s += 1;
                    }
                    if new[(scan - lenb + i) as usize] == old[(pos - lenb + i) as usize] {
                        s -= 1;
                    }
                    if s > ss {
                        ss = s;
                        lens = i + 1;
                    }
                }
                lenf += lens - overlap;
                lenb -= lens;
            }
            let extra = (scan - lenb) - (lastscan + lenf);
            ops.push(Op {
                old_pos: lastpos as u64,
                diff_len: lenf as u64,
                extra_len: extra as u64,
            });
            lastscan = scan - lenb;
            lastpos = pos - lenb;
            lastoffset = pos - scan;
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(old: &[u8], ops: &[Op], new: &[u8]) -> Vec<u8> {
        // Rebuild new from ops using new's own bytes for the diff (checks coverage and
        // old ranges only).
        let mut out = Vec::new();
        for op in ops {
            assert!(op.old_pos + op.diff_len <= old.len() as u64);
            let at = out.len();
            out.extend_from_slice(&new[at..at + (op.diff_len + op.extra_len) as usize]);
        }
        out
    }

    #[test]
    fn ops_cover_new_exactly() {
        let old: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new.splice(1000..1000, b"inserted bytes".iter().copied());
        new.drain(30_000..31_000);
        let sa = SuffixArray::build(&old, 1).unwrap();
        let ops = scan(&old, &sa, &new);
        assert_eq!(
            ops.iter().map(|o| o.diff_len + o.extra_len).sum::<u64>(),
            new.len() as u64
        );
        assert_eq!(apply(&old, &ops, &new), new);
        let extra: u64 = ops.iter().map(|o| o.extra_len).sum();
        assert!(extra < 2_000, "extra {extra}");
    }

    #[test]
    fn equal_bytes_are_counted_exactly() {
        for (a, b, n) in [
            (*b"abcdefgh", *b"abcdefgh", 8),
            (*b"abcdefgh", *b"xbcdefgx", 6),
            ([0x80; 8], [0x00; 8], 0),
            (
                [0x00, 0x80, 0x7f, 0xff, 1, 2, 3, 4],
                [0x00, 0x00, 0x7f, 0x7f, 1, 0, 3, 5],
                4,
            ),
        ] {
            assert_eq!(equal_bytes8(&a, &b), n);
        }
    }

    #[test]
    fn long_zero_runs_do_not_hang() {
        let old = vec![0u8; 2 << 20];
        let mut new = vec![0u8; 2 << 20];
        for i in (0..new.len()).step_by(4099) {
            new[i] = 1;
        }
        let sa = SuffixArray::build(&old, 1).unwrap();
        let ops = scan(&old, &sa, &new);
        assert_eq!(
            ops.iter().map(|o| o.diff_len + o.extra_len).sum::<u64>(),
            new.len() as u64
        );
    }
}
