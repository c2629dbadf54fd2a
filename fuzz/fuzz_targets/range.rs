//! `Range` header parsing against a representation size: never panics, and a partial
//! answer is sorted, disjoint, non-empty ranges inside the representation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_edge::http::range::{decide, RangeDecision, MAX_RANGES_PER_REQUEST};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let size = u64::from_le_bytes(data[..8].try_into().unwrap());
    let header = String::from_utf8_lossy(&data[8..]);
    if let RangeDecision::Partial(ranges) = decide(Some(&header), size) {
        assert!(!ranges.is_empty());
        assert!(ranges.len() <= MAX_RANGES_PER_REQUEST);
        for r in &ranges {
            assert!(r.start < r.end && r.end <= size, "{r:?} of {size}");
        }
        for w in ranges.windows(2) {
            assert!(w[0].end < w[1].start, "not merged: {w:?}");
        }
    }
});
