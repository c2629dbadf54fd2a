//! Range parser and chunk lookup costs, including adversarial Range headers.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use update_edge::hash::Hash;
use update_edge::http::range::decide;
use update_edge::store::manifest::{ChunkRef, Manifest};

fn range_parser(c: &mut Criterion) {
    let size = 4u64 << 30;
    c.bench_function("range/single", |b| {
        b.iter(|| decide(black_box(Some("bytes=1048576-2097151")), size))
    });
    c.bench_function("range/suffix", |b| {
        b.iter(|| decide(black_box(Some("bytes=-500")), size))
    });
    let many: String = (0..64)
        .rev()
        .map(|i| format!("{}-{},", i * 1000, i * 1000 + 1500))
        .collect();
    let many = format!("bytes={many}");
    c.bench_function("range/64_overlapping_unsorted", |b| {
        b.iter(|| decide(black_box(Some(&many)), size))
    });
    let too_many: String = (0..10_000).map(|i| format!("{i}-{i},")).collect();
    let too_many = format!("bytes={too_many}");
    c.bench_function("range/10000_specs_rejected", |b| {
        b.iter(|| decide(black_box(Some(&too_many)), size))
    });
    let huge = format!("bytes={}-", "9".repeat(4000));
    c.bench_function("range/4000_digit_number", |b| {
        b.iter(|| decide(black_box(Some(&huge)), size))
    });
}

fn chunk_lookup(c: &mut Criterion) {
    // A 4 GiB image in 256 KiB chunks.
    let chunks: Vec<ChunkRef> = (0..16384u32)
        .map(|i| ChunkRef {
            hash: Hash::of(&i.to_le_bytes()),
            len: 256 << 10,
        })
        .collect();
    let m = Manifest::new(chunks);
    let mut x = 12345u64;
    c.bench_function("manifest/chunk_at_4GiB_16k_chunks", |b| {
        b.iter(|| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            m.chunk_at(black_box(x % m.size))
        })
    });
    let bytes = m.encode();
    c.bench_function("manifest/decode_16k_chunks", |b| {
        b.iter(|| Manifest::decode(black_box(&bytes)).unwrap())
    });
}

criterion_group!(benches, range_parser, chunk_lookup);
criterion_main!(benches);
