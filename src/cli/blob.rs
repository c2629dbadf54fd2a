//! `update-edge blob put|get|verify`: offline access to a data directory.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use super::{open_offline, progress_bar, EXIT_OK, EXIT_PROBLEM};
use crate::config::Config;
use crate::hash::Hash;

/// Imports a file; prints its hash.
pub fn put(config: Config, file: &Path) -> anyhow::Result<u8> {
    let node = open_offline(config)?;
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let total = f.metadata().ok().map(|m| m.len());
    let pb = progress_bar(total, "importing");
    let started = std::time::Instant::now();
    let outcome = node
        .store
        .put_reader(std::io::BufReader::with_capacity(1 << 20, f), |n| pb.inc(n))?;
    node.store.flush()?;
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{} {} bytes in {:.2}s ({:.0} MB/s)",
        if outcome.created {
            "stored"
        } else {
            "already stored"
        },
        outcome.size,
        secs,
        outcome.size as f64 / 1e6 / secs.max(1e-9),
    );
    println!("{}", outcome.hash);
    Ok(EXIT_OK)
}

/// Writes a blob to `out` (atomically, via a temp file) or stdout.
pub fn get(config: Config, hash: &str, out: Option<&Path>) -> anyhow::Result<u8> {
    let hash: Hash = hash.parse()?;
    let node = open_offline(config)?;
    let manifest = node.store.manifest_blocking(&hash)?;
    let pb = progress_bar(Some(manifest.size), "reading");
    let mut hasher = blake3::Hasher::new();
    let mut write_all = |w: &mut dyn Write| -> anyhow::Result<()> {
        for c in &manifest.chunks {
            let bytes = node.store.read_chunk_uncached(&c.hash)?;
            hasher.update(&bytes);
            w.write_all(&bytes)?;
            pb.inc(bytes.len() as u64);
        }
        w.flush()?;
        Ok(())
    };
    match out {
        Some(path) => {
            let tmp = path.with_extension("partial");
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?,
            );
            if let Err(e) = write_all(&mut f) {
                drop(f);
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, path)?;
        }
        None => write_all(&mut std::io::stdout().lock())?,
    }
    pb.finish_and_clear();
    anyhow::ensure!(
        Hash::from(hasher.finalize()) == hash,
        "blob {hash} does not hash to its name"
    );
    Ok(EXIT_OK)
}

/// Re-hashes everything; exit 1 if anything is damaged.
pub fn verify(config: Config) -> anyhow::Result<u8> {
    let node = open_offline(config)?;
    let pb = progress_bar(Some(node.store.stats().bytes), "verifying");
    let report = node.store.verify(|n| pb.inc(n))?;
    pb.finish_and_clear();
    for c in &report.corrupt_chunks {
        println!("corrupt chunk {c}");
    }
    for b in &report.corrupt_blobs {
        println!("corrupt blob {b}");
    }
    for c in &report.corrupt_outboards {
        println!("corrupt outboard of chunk {c}");
    }
    if !report.counters_match() {
        println!(
            "counters drifted: recorded {} chunks / {} bytes, counted {} / {}",
            report.recorded.chunks,
            report.recorded.bytes,
            report.counted.chunks,
            report.counted.bytes
        );
    }
    println!(
        "checked {} chunks ({} bytes), {} blobs: {} corrupt chunks, {} corrupt blobs, {} corrupt outboards ({} chunks without one), counters {}",
        report.chunks_checked,
        report.counted.bytes,
        report.blobs_checked,
        report.corrupt_chunks.len(),
        report.corrupt_blobs.len(),
        report.corrupt_outboards.len(),
        report.outboards_missing,
        if report.counters_match() {
            "match"
        } else {
            "DRIFTED"
        }
    );
    Ok(if report.is_clean() {
        EXIT_OK
    } else {
        EXIT_PROBLEM
    })
}

/// Offline garbage collection: blobs and chunks no build or delta references.
pub fn gc(config: Config) -> anyhow::Result<u8> {
    let node = open_offline(config)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = rt
        .block_on(crate::http::catalog::run_gc(&node.catalog))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    node.store.flush()?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(EXIT_OK)
}
