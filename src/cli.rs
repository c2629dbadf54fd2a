//! Command glue behind `main.rs`: each subcommand is a function that takes parsed
//! arguments, does its work through the library, and returns an exit status.

pub mod admin;
pub mod blob;
pub mod delta;
pub mod demo;
pub mod device;
pub mod keys;
pub mod serve;

use indicatif::{ProgressBar, ProgressStyle};

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: the command ran and found a problem (corrupt data, failed check).
pub const EXIT_PROBLEM: u8 = 1;
/// Exit status: bad usage or input (also what clap uses for bad arguments).
pub const EXIT_USAGE: u8 = 2;

/// The process exit status of a command's result: its own status, or `EXIT_USAGE`
/// with the error (and its causes) on stderr.
pub fn exit_code(result: anyhow::Result<u8>) -> std::process::ExitCode {
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(EXIT_USAGE)
        }
    }
}

/// A byte-count progress bar on stderr; invisible when stderr is not a terminal.
pub fn progress_bar(total: Option<u64>, what: &str) -> ProgressBar {
    let pb = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let style = ProgressStyle::with_template(
        "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_message(what.to_string());
    pb
}

/// Loads config with the usual layering, then applies `--data` / `--listen` flags.
pub fn load_config(
    file: Option<&std::path::Path>,
    data: Option<&std::path::Path>,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<crate::config::Config> {
    let mut c = crate::config::Config::load(file)?;
    if let Some(d) = data {
        c.server.data_dir = d.to_path_buf();
    }
    if let Some(l) = listen {
        c.server.listen = l;
    }
    Ok(c)
}

/// `update-edge health`: GET `{url}/readyz`; exit 0 on 200, 1 (with the reason on
/// stderr) otherwise. A wildcard listen address is reached on loopback.
pub fn health(
    config: &crate::config::Config,
    url: Option<&str>,
    timeout_secs: u64,
) -> anyhow::Result<u8> {
    let base = match url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let mut at = config.server.listen;
            if at.ip().is_unspecified() {
                at.set_ip(match at {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            format!("http://{at}")
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(timeout_secs))
            .build()?;
        let r = client.get(format!("{base}/readyz")).send().await?;
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        anyhow::Ok((status, body))
    });
    match answer {
        Ok((status, _)) if status == reqwest::StatusCode::OK => {
            println!("{base}: ready");
            Ok(EXIT_OK)
        }
        Ok((status, body)) => {
            eprintln!("{base}: not ready ({status}): {}", body.trim());
            Ok(EXIT_PROBLEM)
        }
        Err(e) => {
            eprintln!("{base}: no answer: {e:#}");
            Ok(EXIT_PROBLEM)
        }
    }
}

fn lock_hint(dir: &std::path::Path, e: impl std::fmt::Display) -> anyhow::Error {
    let hint = if e.to_string().contains("lock") {
        " (is a server running on this data directory?)"
    } else {
        ""
    };
    anyhow::anyhow!("opening store at {}: {e}{hint}", dir.display())
}

/// Opens a whole node (store, catalog, TUF repository, delta workers).
pub async fn open_node(config: crate::config::Config) -> anyhow::Result<crate::server::Node> {
    let dir = config.server.data_dir.clone();
    crate::server::Node::open_any(config)
        .await
        .map_err(|e| lock_hint(&dir, e))
}

/// What an offline command opens: the store and its catalog (no keys needed).
pub struct Offline {
    pub store: std::sync::Arc<crate::store::Store>,
    pub catalog: std::sync::Arc<crate::catalog::Catalog>,
}

/// Opens the store for an offline command, with a clear message when a server holds it.
/// `update-edge backup`: a checkpoint of a stopped node's data directory in `out`.
pub fn backup(config: crate::config::Config, out: &std::path::Path) -> anyhow::Result<u8> {
    let node = open_offline(config)?;
    let b = node.store.checkpoint(out)?;
    println!(
        "backup {}: {} bytes in {:.2} s",
        b.path.display(),
        b.bytes,
        b.seconds
    );
    Ok(EXIT_OK)
}

/// `update-edge restore`: a data directory from a checkpoint, then opened once to check
/// it (counters and manifests readable).
pub fn restore(config: crate::config::Config, backup: &std::path::Path) -> anyhow::Result<u8> {
    let data = config.server.data_dir.clone();
    let bytes = crate::store::restore(backup, &data)?;
    let node = open_offline(config)?;
    let stats = node.store.stats();
    let builds = node.catalog.products()?.len();
    println!(
        "restored {} into {}: {bytes} bytes copied; {} chunks, {} chunk bytes, {builds} products",
        backup.display(),
        data.display(),
        stats.chunks,
        stats.bytes
    );
    Ok(EXIT_OK)
}

/// `restore --from-bucket`: a new data directory holding the bucket's latest catalog
/// snapshot (products, builds, rings, deltas, signed TUF metadata). Nothing is written
/// when the directory holds anything or the bucket cannot be read.
pub fn restore_from_bucket(config: crate::config::Config) -> anyhow::Result<u8> {
    use anyhow::Context;
    anyhow::ensure!(
        config.origin.s3.enabled(),
        "restore --from-bucket needs [origin.s3] in the config (bucket, endpoint, region, credentials)"
    );
    let data = config.server.data_dir.clone();
    if data.exists()
        && std::fs::read_dir(&data)
            .with_context(|| format!("reading {}", data.display()))?
            .next()
            .is_some()
    {
        anyhow::bail!(
            "{}: the data directory is not empty (restore makes a new one; nothing was changed)",
            data.display()
        );
    }
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let bucket = crate::bucket::Bucket::open(&config.origin.s3, metrics)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (latest, page) = rt.block_on(bucket.latest_snapshot())?;
    let node = open_offline(config)?;
    // Past every sequence the old origin can have issued: every edge, wherever it was,
    // is handed a full snapshot next.
    let head = latest.seq + 2 * crate::store::changes::RETAIN;
    let loaded = (|| -> anyhow::Result<(usize, usize)> {
        let records = node.store.load_snapshot(&page, head)?;
        node.catalog.reload()?;
        // The content index: where every chunk of every build and delta is in the
        // bucket, from their manifests (each build's checked against its signed record).
        let roots = node.catalog.roots()?;
        for blob in &roots {
            let expected = node.catalog.chunk_list_of(blob);
            rt.block_on(bucket.manifest(&node.store, *blob, expected))
                .with_context(|| format!("the bucket manifest of {blob}"))?;
        }
        Ok((records, roots.len()))
    })();
    let (records, blobs) = match loaded {
        Ok(n) => n,
        Err(e) => {
            // Leave the directory as it was: absent or empty.
            drop(node);
            let _ = std::fs::remove_dir_all(&data);
            return Err(e.context(format!(
                "restoring from {} failed; {} was left empty",
                bucket.name(),
                data.display()
            )));
        }
    };
    node.store.flush()?;
    let products = node.catalog.products()?.len();
    let builds = node.catalog.all_builds()?.len();
    println!(
        "restored the catalog of {} as of change {} into {}: {records} records, {products} products, {builds} builds, the chunk index of {blobs} blobs; content is read from the bucket as it is asked for. Put the signing keys (tuf.keys_dir) back before starting the node.",
        bucket.name(),
        latest.seq,
        data.display()
    );
    Ok(EXIT_OK)
}

pub fn open_offline(config: crate::config::Config) -> anyhow::Result<Offline> {
    let parts =
        crate::server::open_store(&config).map_err(|e| lock_hint(&config.server.data_dir, e))?;
    Ok(Offline {
        store: parts.store,
        catalog: parts.catalog,
    })
}
