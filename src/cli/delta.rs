//! `update-edge delta diff|apply|info`.
//!
//! Exit codes: 0 success; 1 the patch or old input was rejected (corrupt, truncated,
//! wrong old file, result hash mismatch) — no output file is left; 2 usage or I/O error.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{progress_bar, EXIT_OK, EXIT_PROBLEM};
use crate::delta::{self, DeltaError, DiffOptions, FileAt, PatchFormat, YARDSTICK_LEVEL};

/// A temp file beside `path` that becomes `path` only on `commit`; removed otherwise.
struct AtomicOut {
    tmp: PathBuf,
    path: PathBuf,
    done: bool,
}

impl AtomicOut {
    fn create(path: &Path) -> anyhow::Result<(AtomicOut, BufWriter<std::fs::File>)> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        Ok((
            AtomicOut {
                tmp,
                path: path.to_path_buf(),
                done: false,
            },
            BufWriter::with_capacity(1 << 20, f),
        ))
    }

    fn commit(mut self, w: BufWriter<std::fs::File>) -> anyhow::Result<()> {
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&self.tmp, &self.path)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicOut {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

pub struct DiffArgs<'a> {
    pub old: &'a Path,
    pub new: &'a Path,
    pub out: &'a Path,
    pub memory_limit: u64,
    pub format: PatchFormat,
    pub level: i32,
    pub block_size: u64,
    pub worth_it_ratio: f64,
    /// Predict x86-64 references in executables.
    pub transform: bool,
    pub json: bool,
}

pub fn diff(a: DiffArgs<'_>) -> anyhow::Result<u8> {
    let old = FileAt::open(a.old)?;
    let new = FileAt::open(a.new)?;
    let block_size = u32::try_from(a.block_size)
        .ok()
        .filter(|b| (4096..=delta::format::MAX_BLOCK_SIZE).contains(b))
        .with_context(|| {
            format!(
                "--block-size must be between 4KiB and {}MiB",
                delta::format::MAX_BLOCK_SIZE >> 20
            )
        })?;
    let opts = DiffOptions {
        memory_limit: a.memory_limit,
        zstd_level: a.level,
        block_size,
        format: a.format,
        exe_transform: a.transform,
        ..DiffOptions::default()
    };
    let pb = progress_bar(Some(delta::ReadAt::size(&new)), "diffing");
    let (guard, mut w) = AtomicOut::create(a.out)?;
    let report = delta::diff(&old, &new, &mut w, &opts, &|n| pb.inc(n))?;
    guard.commit(w)?;
    pb.finish_and_clear();
    let full = report.zstd_full_size;
    let worth = delta::worth_it(report.patch_size, full, a.worth_it_ratio);
    if a.json {
        let v = serde_json::json!({ "report": report, "zstd_full_size": full, "worth_it": worth, "worth_it_ratio": a.worth_it_ratio });
        println!("{v}");
    } else {
        println!(
            "patch {} bytes ({:.2}% of new, {:.2}% of zstd -{YARDSTICK_LEVEL} full {} bytes) in {:.2}s{}; worth it at ratio {}: {}",
            report.patch_size,
            100.0 * report.patch_size as f64 / report.new_size.max(1) as f64,
            100.0 * report.patch_size as f64 / full.max(1) as f64,
            full,
            report.seconds,
            if report.windowed { format!(", windowed in {} segments", report.segments) } else { String::new() },
            a.worth_it_ratio,
            if worth { "yes" } else { "no" }
        );
        if let Some(t) = &report.transform {
            println!(
                "transform {}: {} executables in old, {} predicted; {} references; in code {} predicted, {} exactly; in tables {} predicted, {} exactly; offset map {} spans, section {} bytes",
                t.kind, t.executables, t.executables - t.executables_skipped, t.refs, t.predicted, t.predicted_right, t.table_predicted, t.table_predicted_right, t.map_spans, t.section_bytes
            );
        }
    }
    Ok(EXIT_OK)
}

/// The delta commands a device needs, in `update-edge delta` and in
/// `update-edge-device delta`.
#[derive(clap::Subcommand)]
pub enum ApplyCommand {
    /// Apply PATCH to OLD, writing NEW atomically (nothing is left on failure).
    Apply {
        old: PathBuf,
        patch: PathBuf,
        #[arg(short = 'o', long = "output")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print a patch's header.
    Info { patch: PathBuf },
}

impl ApplyCommand {
    /// Runs the command; the exit status.
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            ApplyCommand::Apply {
                old,
                patch,
                out,
                json,
            } => apply(&old, &patch, &out, json),
            ApplyCommand::Info { patch } => info(&patch),
        }
    }
}

pub fn apply(old: &Path, patch: &Path, out: &Path, json: bool) -> anyhow::Result<u8> {
    let old = FileAt::open_mapped(old)?;
    // Apply reads the patch in blocks of its own (a read that size bypasses the
    // buffer); a 1 MiB buffer was 250 page faults on the ruff pair, for nothing.
    let mut p = BufReader::with_capacity(
        64 << 10,
        std::fs::File::open(patch).with_context(|| format!("opening {}", patch.display()))?,
    );
    let (guard, mut w) = AtomicOut::create(out)?;
    // Apply writes in large pieces of its own: past the buffer.
    match delta::apply(&old, &mut p, w.get_mut()) {
        Ok(report) => {
            guard.commit(w)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "wrote {} bytes, blake3 {}",
                    report.new_size, report.new_blake3
                );
            }
            Ok(EXIT_OK)
        }
        Err(DeltaError::Io(e)) => Err(e.into()),
        Err(e) => {
            drop(w);
            drop(guard);
            eprintln!("error: {e}");
            Ok(EXIT_PROBLEM)
        }
    }
}

pub fn info(patch: &Path) -> anyhow::Result<u8> {
    let mut f = BufReader::new(
        std::fs::File::open(patch).with_context(|| format!("opening {}", patch.display()))?,
    );
    let h = match delta::apply::read_header(&mut f) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(EXIT_PROBLEM);
        }
    };
    let size = std::fs::metadata(patch)?.len();
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "format      update-edge native v{}",
        if h.transform {
            delta::format::VERSION_TRANSFORM
        } else {
            delta::format::VERSION
        }
    )?;
    writeln!(o, "patch size  {size}")?;
    writeln!(o, "old size    {}  blake3 {}", h.old_size, h.old_hash)?;
    writeln!(o, "new size    {}  blake3 {}", h.new_size, h.new_hash)?;
    writeln!(
        o,
        "blocks      {} of up to {} bytes",
        h.block_count, h.block_size
    )?;
    writeln!(o, "zstd level  {}", h.zstd_level)?;
    writeln!(o, "mem limit   {}", h.memory_limit)?;
    if h.transform {
        match delta::apply::read_transform_section(&mut f) {
            Ok(t) => writeln!(
                o,
                "transform   x86-64 references: new has {} executables, {} sections; {} of old's executables not predicted; {} bytes with the control streams ({} raw)",
                t.new.parts.len(),
                t.new.parts.iter().map(|p| p.sections.len()).sum::<usize>(),
                t.skip.len(),
                t.bytes,
                t.ctrl.len()
            )?,
            Err(e) => {
                writeln!(o, "transform   invalid: {e}")?;
                return Ok(EXIT_PROBLEM);
            }
        }
    } else {
        writeln!(o, "transform   none (bytes only)")?;
    }
    // Per-stream totals (compressed / raw), reading only block headers.
    let mut t = [0u64; 6];
    for _ in 0..h.block_count {
        let mut bh = [0u8; delta::format::BLOCK_HEADER_LEN];
        if std::io::Read::read_exact(&mut f, &mut bh).is_err() {
            writeln!(o, "blocks      truncated")?;
            return Ok(EXIT_PROBLEM);
        }
        let b = match delta::format::BlockHeader::decode(&bh, h.block_size) {
            Ok(b) => b,
            Err(e) => {
                writeln!(o, "blocks      invalid: {e}")?;
                return Ok(EXIT_PROBLEM);
            }
        };
        for (i, v) in [
            b.ctrl_clen,
            b.ctrl_len,
            b.diff_clen,
            b.diff_len,
            b.extra_clen,
            b.extra_len,
        ]
        .into_iter()
        .enumerate()
        {
            t[i] += u64::from(v);
        }
        std::io::copy(
            &mut std::io::Read::take(&mut f, b.payload_len()),
            &mut std::io::sink(),
        )?;
    }
    writeln!(o, "control     {} bytes ({} raw)", t[0], t[1])?;
    writeln!(o, "diff        {} bytes ({} raw)", t[2], t[3])?;
    writeln!(o, "extra       {} bytes ({} raw)", t[4], t[5])?;
    Ok(EXIT_OK)
}
