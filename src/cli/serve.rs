//! `update-edge serve`: run a node until Ctrl-C / SIGTERM.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::server::{self, Node};

pub fn run(mut config: Config, demo: bool) -> anyhow::Result<u8> {
    // The demo token is printed in the README: only ever on this machine's loopback.
    let listen = config.server.listen;
    if demo && config.server.admin_token.is_empty() && !listen.ip().is_loopback() {
        anyhow::bail!(
            "--demo uses the well-known operator token \"demo-token\", so it listens only on \
             loopback; {listen} is not: set UPDATE_EDGE_ADMIN_TOKEN (or server.admin_token) \
             to serve the demo there"
        );
    }
    if demo && config.server.admin_token.is_empty() {
        config.server.admin_token = "demo-token".into();
        eprintln!(
            "demo: operator token is \"demo-token\" (set UPDATE_EDGE_ADMIN_TOKEN to choose one)"
        );
    }
    if demo {
        demo_keys(&config.tuf.keys_dir)?;
    }
    // Room for server.max_connections (plus RocksDB's files): raise the soft limit on
    // open files to the hard one, as nginx's worker_rlimit_nofile does.
    let want = config.server.max_connections as u64 + 1024;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got < want => eprintln!(
            "warning: open-files limit is {got}; server.max_connections = {} needs about {want} (raise LimitNOFILE / ulimit -n)",
            config.server.max_connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: cannot raise the open-files limit: {e}"),
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let node = super::open_node(config).await?;
        let listener = tokio::net::TcpListener::bind(node.config.server.listen).await?;
        let tls = match node.config.server.tls_addr()? {
            None => None,
            Some(at) => {
                let c = &node.config.server;
                let certs = crate::tls::Certificates::open(&c.tls_cert, &c.tls_key)?;
                Some(server::TlsListener {
                    listener: tokio::net::TcpListener::bind(at).await?,
                    acceptor: crate::tls::acceptor(certs.clone())?,
                    certs,
                })
            }
        };
        let running = server::start_with_tls(&node, listener, tls)?;
        let base = format!("http://{}", running.addr);
        tracing::info!(addr = %running.addr, data = %node.config.server.data_dir.display(), "serving");
        if let Some(at) = running.tls_addr {
            tracing::info!(addr = %at, "serving TLS");
        }
        if demo {
            print_demo(&node, &base).await?;
        }
        // systemd (`Type=notify`): ready once listening with the store open (an edge has
        // replicated the catalog by now). Without NOTIFY_SOCKET this does nothing.
        if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
            tracing::warn!(error = %e, "telling systemd the node is ready failed");
        }
        server::shutdown_signal().await;
        tracing::info!(
            drain_secs = node.config.server.drain_timeout.0,
            "shutting down: draining requests in flight"
        );
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        running.stop().await?;
        node.store.flush()?;
        anyhow::Ok(())
    })?;
    Ok(super::EXIT_OK)
}

/// Root keys of a demo node: beside the online keys, named so nobody mistakes them for
/// a production layout.
fn demo_root_keys(keys_dir: &Path) -> PathBuf {
    let name = keys_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keys".into());
    keys_dir.with_file_name(format!("{name}-root-offline"))
}

/// The demo creates the repository keys on first start (a real node never does: a
/// missing key is an error).
fn demo_keys(keys_dir: &Path) -> anyhow::Result<()> {
    if crate::repo::root::root_dir(keys_dir)
        .join("1.root.json")
        .exists()
    {
        return Ok(());
    }
    let offline = demo_root_keys(keys_dir);
    crate::repo::root::init(
        keys_dir,
        &offline,
        crate::repo::root::InitOptions::default(),
    )?;
    eprintln!(
        "demo: created TUF keys in {} (root keys in {}: in production keep those offline)",
        keys_dir.display(),
        offline.display()
    );
    Ok(())
}

async fn print_demo(node: &Node, base: &str) -> anyhow::Result<()> {
    let catalog = node.catalog.clone();
    let builds = tokio::task::spawn_blocking(move || super::demo::seed(&catalog)).await??;
    let (catalog, repo) = (node.catalog.clone(), node.repo.clone());
    tokio::task::spawn_blocking(move || {
        repo.publish_from(|| {
            crate::catalog::targets::entries(&catalog).map_err(|e| anyhow::anyhow!("{e}"))
        })
    })
    .await??;
    for w in builds.windows(2).chain(builds.windows(3)) {
        let (from, to) = (w[0].1, w[w.len() - 1].1);
        if let Some(s) = &node.checker.scheduler {
            s.enqueue(from, to);
        }
    }
    let product = super::demo::DEMO_PRODUCT;
    println!("update-edge demo node at {base}");
    println!("demo product {product:?}: builds 1.0.1, 1.0.2, 1.0.3; rings preview/early-adopter/general -> 1.0.3");
    for (version, hash, size) in &builds {
        println!("  {version}  {size} bytes  {base}/v1/blobs/{hash}");
    }
    let (_, first, _) = &builds[0];
    let h = first;
    println!("try:");
    println!("  curl -s -X POST {base}/v1/check -d '{{\"product\":\"{product}\",\"device_id\":\"dev-1\",\"version\":\"1.0.1\",\"nonce\":\"0123abcd\"}}'");
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "update-edge".into());
    println!("  curl -o v1.img {base}/v1/blobs/{h}   # a device on 1.0.1");
    let root = crate::repo::root::root_dir(&node.config.tuf.keys_dir).join("1.root.json");
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    println!("  {exe} device update --server {base} --root {} --state ./device-state --product {product} --device-id dev-1 --version 1.0.1 --current v1.img --out v3.img", root.display());
    println!("  (--root is the repository's root.json, what a device ships with; --state keeps its verified metadata and installed version)");
    println!("  (the first update may use the full payload while deltas are computed in the background; a second device,");
    println!("   --device-id dev-2 --state ./device-state-2, then gets the delta; the same device refuses 1.0.3 again: it is installed)");
    println!("  curl -I {base}/v1/blobs/{h}");
    println!("  curl -r 0-99 {base}/v1/blobs/{h} | xxd | head");
    println!("  curl -o build.img {base}/v1/blobs/{h} && b3sum build.img");
    println!(
        "  curl -H 'Authorization: Bearer {}' --data-binary @/etc/os-release {base}/v1/blobs",
        node.config.server.admin_token
    );
    println!("  curl {base}/metrics");
    Ok(())
}
