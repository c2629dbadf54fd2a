//! What a device posts to `/v1/check`, parsed as the node does (JSON with unknown fields
//! refused, then the version and the names validated): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_edge::catalog::check::CheckRequest;
use update_edge::catalog::version::Version;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<CheckRequest>(data) {
        if let Ok(v) = req.version.parse::<Version>() {
            // Keys order as versions do.
            assert_eq!(Version::from_key(&v.key()).as_ref(), Some(&v));
        }
        if let Some(r) = &req.ring {
            let _ = update_edge::catalog::model::valid_name(r);
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(v) = text.parse::<Version>() {
            assert_eq!(Version::from_key(&v.key()).as_ref(), Some(&v));
        }
    }
});
