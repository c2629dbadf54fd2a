//! Patch decoding and applying: whatever the bytes, `delta::apply` returns a result or
//! an error — never a panic, a hang or an allocation the header talks it into. The old
//! file comes from the input and the header's old size and hash are set to match it, so
//! the fuzzer gets past the old-file check into the block and stream decoders. Old is
//! read both ways apply reads it — from memory (a mapped file) and piece by piece (a
//! file too large to map) — and the two must agree: the same result or the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use update_edge::delta::format::HEADER_LEN;
use update_edge::delta::{self, Unmapped};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let old_len = (usize::from(n) * 64).min(rest.len());
    let (old, patch) = rest.split_at(old_len);
    let mut patch = patch.to_vec();
    if patch.len() >= HEADER_LEN {
        patch[16..24].copy_from_slice(&(old.len() as u64).to_le_bytes());
        patch[32..64].copy_from_slice(update_edge::hash::Hash::of(old).as_bytes());
    }
    let in_memory = delta::apply(&old.to_vec(), &mut patch.as_slice(), &mut std::io::sink());
    let piecewise = delta::apply(&Unmapped(old), &mut patch.as_slice(), &mut std::io::sink());
    match (in_memory, piecewise) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}")),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("in memory {a:?}, piece by piece {b:?}"),
    }
});
