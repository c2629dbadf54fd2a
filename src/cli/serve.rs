//! `update-edge serve`: run a node until Ctrl-C / SIGTERM.

use crate::config::Config;
use crate::server::{self, Node};

pub fn run(mut config: Config, demo: bool) -> anyhow::Result<u8> {
    if demo && config.server.admin_token.is_empty() {
        config.server.admin_token = "demo-token".into();
        eprintln!(
            "demo: operator token is \"demo-token\" (set UPDATE_EDGE_ADMIN_TOKEN to choose one)"
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let node = super::open_offline(config)?;
        let listener = tokio::net::TcpListener::bind(node.config.server.listen).await?;
        let running = server::start(&node, listener)?;
        let base = format!("http://{}", running.addr);
        tracing::info!(addr = %running.addr, data = %node.config.server.data_dir.display(), "serving");
        if demo {
            print_demo(&node, &base).await?;
        }
        server::shutdown_signal().await;
        tracing::info!("shutting down");
        running.stop().await?;
        node.store.flush()?;
        anyhow::Ok(())
    })?;
    Ok(super::EXIT_OK)
}

async fn print_demo(node: &Node, base: &str) -> anyhow::Result<()> {
    let catalog = node.catalog.clone();
    let builds = tokio::task::spawn_blocking(move || super::demo::seed(&catalog)).await??;
    for w in builds.windows(2).chain(builds.windows(3)) {
        let (from, to) = (w[0].1, w[w.len() - 1].1);
        node.checker.scheduler.enqueue(from, to);
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
    println!("  curl -s -X POST {base}/v1/check -d '{{\"product\":\"{product}\",\"device_id\":\"dev-1\",\"version\":\"1.0.1\"}}'");
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "update-edge".into());
    println!("  curl -o v1.img {base}/v1/blobs/{h}   # a device on 1.0.1");
    println!("  {exe} device update --server {base} --product {product} --device-id dev-1 --version 1.0.1 --current v1.img --out v3.img");
    println!("  (the first update may use the full payload while deltas are computed in the background; run it again for the delta)");
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
