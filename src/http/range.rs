//! RFC 9110 §14 range and validator logic as pure functions: `Range`, `If-Range`,
//! `If-None-Match`. No I/O, so every edge case is a table test (and a fuzz target).

/// Beyond this many range specs in one header, the header is ignored and the whole
/// body is sent (as nginx's `max_ranges`): many tiny ranges are an amplification attack.
pub const MAX_RANGES_PER_REQUEST: usize = 64;

/// A satisfiable byte range, `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// `Content-Range` value for this range of a representation of `size` bytes.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end - 1, size)
    }
}

/// What to send for a request's Range header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeDecision {
    /// No header, an unparseable one, or one we choose to ignore: 200 with everything.
    Full,
    /// 206 with these ranges: sorted, overlapping and adjacent ones merged, never empty.
    Partial(Vec<ByteRange>),
    /// 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

enum Spec {
    /// `first-` or `first-last`
    From(u64, Option<u64>),
    /// `-n`
    Suffix(u64),
}

/// Decimal digits to u64, saturating (a huge first-pos is still just "past the end").
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

fn parse_spec(s: &str) -> Option<Spec> {
    let (first, last) = s.split_once('-')?;
    if first.is_empty() {
        return digits(last).map(Spec::Suffix);
    }
    let first = digits(first)?;
    if last.is_empty() {
        return Some(Spec::From(first, None));
    }
    let last = digits(last)?;
    (first <= last).then_some(Spec::From(first, Some(last)))
}

/// Decides the response for `Range: header` against a representation of `size` bytes.
pub fn decide(header: Option<&str>, size: u64) -> RangeDecision {
    let Some(header) = header else {
        return RangeDecision::Full;
    };
    let Some((unit, set)) = header.trim().split_once('=') else {
        return RangeDecision::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return RangeDecision::Full;
    }
    let mut specs = Vec::new();
    for part in set.split(',') {
        let part = part.trim_matches([' ', '\t']);
        if part.is_empty() {
            continue; // RFC 9110 §5.6.1: empty list elements are ignored
        }
        match parse_spec(part) {
            Some(spec) => specs.push(spec),
            None => return RangeDecision::Full,
        }
        if specs.len() > MAX_RANGES_PER_REQUEST {
            return RangeDecision::Full;
        }
    }
    if specs.is_empty() {
        return RangeDecision::Full;
    }
    let mut ranges: Vec<ByteRange> = specs
        .into_iter()
        .filter_map(|spec| match spec {
            Spec::From(first, last) if first < size => {
                let end = last.map_or(size, |l| l.saturating_add(1).min(size));
                Some(ByteRange { start: first, end })
            }
            Spec::Suffix(n) if n > 0 && size > 0 => Some(ByteRange {
                start: size - n.min(size),
                end: size,
            }),
            _ => None,
        })
        .collect();
    if ranges.is_empty() {
        return RangeDecision::Unsatisfiable;
    }
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<ByteRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    RangeDecision::Partial(merged)
}

/// Strong `ETag` value for a content hash.
pub fn etag(hex: &str) -> String {
    format!("\"{hex}\"")
}

/// `If-None-Match` (weak comparison, RFC 9110 §13.1.2): true when it names our tag or `*`.
pub fn if_none_match_hits(header: &str, our_tag: &str) -> bool {
    let ours = our_tag.trim_start_matches("W/");
    header
        .split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == ours)
}

/// `If-Range` (strong comparison, §13.1.5): the range applies only if the header is our
/// exact strong tag. A date or any other tag means "send everything".
pub fn if_range_allows(header: &str, our_tag: &str) -> bool {
    let h = header.trim();
    !h.starts_with("W/") && h == our_tag
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RangeDecision::*;

    fn r(start: u64, end: u64) -> ByteRange {
        ByteRange { start, end }
    }

    #[test]
    fn range_header_table() {
        let size = 1000;
        let cases: &[(&str, RangeDecision)] = &[
            ("bytes=0-0", Partial(vec![r(0, 1)])),
            ("bytes=0-499", Partial(vec![r(0, 500)])),
            ("bytes=500-", Partial(vec![r(500, 1000)])),
            ("bytes=-1", Partial(vec![r(999, 1000)])),
            ("bytes=-500", Partial(vec![r(500, 1000)])),
            ("bytes=-5000", Partial(vec![r(0, 1000)])),
            ("bytes=-0", Unsatisfiable),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=1000-2000", Unsatisfiable),
            ("bytes=999-5000", Partial(vec![r(999, 1000)])),
            ("bytes=0-99999999999999999999999", Partial(vec![r(0, 1000)])),
            ("bytes=99999999999999999999999-", Unsatisfiable),
            ("bytes=0-9,20-29", Partial(vec![r(0, 10), r(20, 30)])),
            ("bytes=0-9,5-14", Partial(vec![r(0, 15)])),
            ("bytes=20-29,0-9,5-14", Partial(vec![r(0, 15), r(20, 30)])),
            ("bytes=0-9,10-19", Partial(vec![r(0, 20)])),
            ("bytes=0-1,-2", Partial(vec![r(0, 2), r(998, 1000)])),
            ("bytes=5000-,0-1", Partial(vec![r(0, 2)])),
            ("bytes=5000-,-0", Unsatisfiable),
            ("bytes= 0-1 , 3-4 ", Partial(vec![r(0, 2), r(3, 5)])),
            ("bytes=0-1,,3-4", Partial(vec![r(0, 2), r(3, 5)])),
            ("BYTES=0-0", Partial(vec![r(0, 1)])),
            // Syntactically invalid: ignored, whole body.
            ("bytes=5-4", Full),
            ("bytes=abc", Full),
            ("bytes=-", Full),
            ("bytes=1-2-3", Full),
            ("bytes=", Full),
            ("items=0-1", Full),
            ("0-1", Full),
            ("bytes=0-1,x", Full),
            ("bytes=+1-2", Full),
        ];
        for (header, want) in cases {
            assert_eq!(&decide(Some(header), size), want, "Range: {header}");
        }
        assert_eq!(decide(None, size), Full);
    }

    #[test]
    fn empty_representation_satisfies_no_range() {
        assert_eq!(decide(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(decide(Some("bytes=-1"), 0), Unsatisfiable);
    }

    #[test]
    fn too_many_ranges_are_ignored() {
        let many = (0..=MAX_RANGES_PER_REQUEST)
            .map(|i| format!("{}-{}", i * 10, i * 10))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(decide(Some(&format!("bytes={many}")), 1 << 20), Full);
        let ok = (0..MAX_RANGES_PER_REQUEST)
            .map(|i| format!("{}-{}", i * 10, i * 10))
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            matches!(decide(Some(&format!("bytes={ok}")), 1 << 20), Partial(v) if v.len() == MAX_RANGES_PER_REQUEST)
        );
    }

    #[test]
    fn content_range_is_inclusive() {
        assert_eq!(r(0, 1).content_range(10), "bytes 0-0/10");
        assert_eq!(r(5, 10).content_range(10), "bytes 5-9/10");
    }

    #[test]
    fn validators_compare_as_the_rfc_says() {
        let tag = etag("ab12");
        assert!(if_none_match_hits("\"ab12\"", &tag));
        assert!(if_none_match_hits("\"x\", W/\"ab12\"", &tag));
        assert!(if_none_match_hits("*", &tag));
        assert!(!if_none_match_hits("\"ab13\"", &tag));
        assert!(if_range_allows("\"ab12\"", &tag));
        assert!(!if_range_allows("W/\"ab12\"", &tag));
        assert!(!if_range_allows("Wed, 21 Oct 2015 07:28:00 GMT", &tag));
    }

    proptest! {
        #[test]
        fn partial_ranges_are_sorted_disjoint_and_inside(header in "bytes=[0-9,\\- ]{0,40}", size in 0u64..5000) {
            if let Partial(v) = decide(Some(&header), size) {
                prop_assert!(!v.is_empty());
                for w in v.windows(2) {
                    prop_assert!(w[0].end < w[1].start);
                }
                for x in &v {
                    prop_assert!(x.start < x.end && x.end <= size);
                }
            }
        }
    }
}
