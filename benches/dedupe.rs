//! Chunking parameter study (not a criterion bench): for each corpus pair, how many of
//! the new build's bytes are already stored as chunks of the old build, per chunk size.
//! `CORPUS=DIR cargo bench --bench dedupe` (DIR from ../shared/corpus/fetch-pairs.sh).

use std::collections::HashSet;
use std::time::Instant;

use update_edge::store::chunker::{ChunkParams, Chunker};

fn chunks(c: &Chunker, data: &[u8]) -> Vec<(blake3::Hash, usize)> {
    let mut off = 0;
    c.lengths(data)
        .into_iter()
        .map(|l| {
            let h = blake3::hash(&data[off..off + l]);
            off += l;
            (h, l)
        })
        .collect()
}

fn main() {
    let Ok(dir) = std::env::var("CORPUS") else {
        eprintln!("set CORPUS=DIR (see ../shared/corpus/fetch-pairs.sh); nothing to measure");
        return;
    };
    let configs = [
        (16 << 10, 64 << 10, 256 << 10),
        (32 << 10, 128 << 10, 512 << 10),
        (64 << 10, 256 << 10, 1 << 20),
        (256 << 10, 1 << 20, 4 << 20),
    ];
    println!("| pair | min/avg/max KiB | chunks (new) | mean chunk KiB | new bytes already stored | chunking MB/s |");
    println!("|---|---|---|---|---|---|");
    for name in ["ruff", "uv"] {
        let (Ok(old), Ok(new)) = (
            std::fs::read(format!("{dir}/{name}.old")),
            std::fs::read(format!("{dir}/{name}.new")),
        ) else {
            continue;
        };
        for (min, avg, max) in configs {
            let c = Chunker::new(ChunkParams { min, avg, max });
            let t = Instant::now();
            let old_chunks: HashSet<blake3::Hash> =
                chunks(&c, &old).into_iter().map(|(h, _)| h).collect();
            let new_chunks = chunks(&c, &new);
            let secs = t.elapsed().as_secs_f64();
            let shared: usize = new_chunks
                .iter()
                .filter(|(h, _)| old_chunks.contains(h))
                .map(|(_, l)| l)
                .sum();
            println!(
                "| {name} | {}/{}/{} | {} | {:.0} | {:.1}% | {:.0} |",
                min >> 10,
                avg >> 10,
                max >> 10,
                new_chunks.len(),
                new.len() as f64 / new_chunks.len() as f64 / 1024.0,
                100.0 * shared as f64 / new.len() as f64,
                (old.len() + new.len()) as f64 / 1e6 / secs
            );
        }
    }
}
