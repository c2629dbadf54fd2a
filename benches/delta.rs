//! Delta engine on small synthetic pairs: diff and apply throughput. (The corpus
//! comparison against bsdiff/xdelta3/zstd is benches/delta-corpus.sh.)

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use update_edge::cli::demo::noise;
use update_edge::delta::{self, DiffOptions};

fn edited(base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    let n = v.len();
    v.splice(n / 4..n / 4, noise(4096, 9));
    v.drain(n / 2..n / 2 + 1000);
    for i in (0..v.len()).step_by(4093) {
        v[i] ^= 0x20;
    }
    v
}

fn bench(c: &mut Criterion) {
    let old = noise(4 << 20, 1);
    let new = edited(&old);
    let opts = DiffOptions {
        zstd_level: 19,
        ..DiffOptions::default()
    };
    let mut patch = Vec::new();
    delta::diff(&old, &new, &mut patch, &opts, &|_| {}).unwrap();
    let mut g = c.benchmark_group("delta_4MiB");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(new.len() as u64));
    g.bench_function("diff_level19", |b| {
        b.iter(|| {
            let mut p = Vec::new();
            delta::diff(&old, &new, &mut p, &opts, &|_| {}).unwrap();
            p
        })
    });
    g.bench_function("apply", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(new.len());
            delta::apply(&old, &mut &patch[..], &mut out).unwrap();
            out
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
