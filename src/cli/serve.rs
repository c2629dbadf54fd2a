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
    let store = node.store.clone();
    let builds = tokio::task::spawn_blocking(move || super::demo::seed(&store)).await??;
    println!("update-edge demo node at {base}");
    println!("demo builds (content-addressed blobs):");
    for (version, hash, size) in &builds {
        println!("  {version}  {size} bytes  {base}/v1/blobs/{hash}");
    }
    let (_, h, _) = &builds[0];
    println!("try:");
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
