//! Apply's memory does not grow with what a patch claims. A valid patch of a few hundred
//! bytes can hold millions of ops (its control stream may decode to 8 MiB); apply held
//! ~56 bytes per op of a block, 250 MB for this one, before it read a block's ops a
//! batch at a time. Patches are not signed (the device checks the result's hash), so
//! anyone between the node and a device can send one.
//!
//! A test binary of its own: the heap is counted for the whole process.

use update_edge::delta;
use update_edge::delta::format::{self, BlockHeader, Header, Op};
use update_edge::hash::Hash;

#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

/// A version 1 patch of one block: `empty` ops that copy and add nothing, then one that
/// adds `new` as extra bytes.
fn patch_of_empty_ops(old: &[u8], new: &[u8], empty: usize) -> Vec<u8> {
    let mut ops = vec![
        Op {
            old_pos: 0,
            diff_len: 0,
            extra_len: 0,
        };
        empty
    ];
    ops.push(Op {
        old_pos: 0,
        diff_len: 0,
        extra_len: new.len() as u64,
    });
    let ctrl = format::encode_ctrl(&ops);
    drop(ops);
    let diff = format::encode_zero_runs(&[]);
    let z = |b: &[u8]| zstd::bulk::compress(b, 3).expect("zstd");
    let (c, d, e) = (z(&ctrl), z(&diff), z(new));
    let header = Header {
        zstd_level: 3,
        old_size: old.len() as u64,
        new_size: new.len() as u64,
        old_hash: Hash::of(old),
        new_hash: Hash::of(new),
        block_size: new.len() as u32,
        block_count: 1,
        memory_limit: 0,
        transform: false,
    };
    let block = BlockHeader {
        new_len: new.len() as u32,
        ctrl_clen: c.len() as u32,
        ctrl_len: ctrl.len() as u32,
        diff_clen: if diff.is_empty() { 0 } else { d.len() as u32 },
        diff_coded_len: diff.len() as u32,
        diff_len: 0,
        extra_clen: e.len() as u32,
        extra_len: new.len() as u32,
    };
    let mut p = header.encode().to_vec();
    p.extend_from_slice(&block.encode());
    p.extend_from_slice(&c);
    if !diff.is_empty() {
        p.extend_from_slice(&d);
    }
    p.extend_from_slice(&e);
    p
}

#[test]
fn millions_of_ops_in_a_block_cost_no_more_memory_than_a_few() {
    let old = update_edge::cli::demo::noise(1 << 16, 1);
    let new = b"the whole new file".to_vec();
    // As many empty ops as the 8 MiB control stream bound allows (three bytes each).
    let empty = (format::MAX_CTRL_LEN as usize - 16) / 3;
    let patch = patch_of_empty_ops(&old, &new, empty);
    assert!(patch.len() < 4096, "{} bytes", patch.len());
    // The patch is valid: it applies, with memory to spare, to the right bytes.
    let mut out = Vec::new();
    let report = delta::apply(&old, &mut &patch[..], &mut out).expect("a valid patch");
    assert_eq!((out, report.new_size), (new.clone(), new.len() as u64));

    // Apply again with the heap capped: the control stream itself (8 MiB, a format
    // bound) and apply's fixed buffers fit in 40 MiB; 56 bytes per op (150 MB) do not.
    // Past the cap an allocation fails and the process aborts, failing this test.
    let base = HEAP.allocated();
    HEAP.set_limit(base + (40 << 20))
        .expect("a limit above the heap in use");
    let mut out = Vec::new();
    let applied = delta::apply(&old, &mut &patch[..], &mut out);
    HEAP.set_limit(usize::MAX).expect("no limit");
    applied.expect("a valid patch");
    assert_eq!(out, new);
}
