//! `update-edge keys init|rotate`: the repository's keys. Root keys go to their own
//! directory (keep it offline: only `init` and `rotate` need it); the online keys and
//! the public root history go to the node's `tuf.keys_dir`.

use std::path::Path;

use crate::repo::root::{self, InitOptions};

pub fn init(keys_dir: &Path, root_keys_dir: &Path, opts: InitOptions) -> anyhow::Result<u8> {
    if root_keys_dir.starts_with(keys_dir) || keys_dir.starts_with(root_keys_dir) {
        anyhow::bail!(
            "--root-keys {} must not be inside or around the online keys directory {} (root keys are kept offline)",
            root_keys_dir.display(),
            keys_dir.display()
        );
    }
    let first = root::init(keys_dir, root_keys_dir, opts)?;
    println!(
        "root version 1 ({} of {} root keys): {}",
        opts.root_threshold,
        opts.root_keys,
        first.display()
    );
    println!(
        "  ship this root.json with devices: update-edge device update --root {} ...",
        first.display()
    );
    println!(
        "online keys (targets, snapshot, timestamp, director): {}",
        keys_dir.display()
    );
    println!(
        "root keys: {} — move them offline; `keys rotate` needs them back",
        root_keys_dir.display()
    );
    Ok(super::EXIT_OK)
}

pub fn rotate(
    keys_dir: &Path,
    root_keys_dir: &Path,
    role: &str,
    root_days: u64,
) -> anyhow::Result<u8> {
    let r = root::rotate(keys_dir, root_keys_dir, role, root_days)?;
    let short = |ids: &[String]| {
        ids.iter()
            .map(|i| i[..16.min(i.len())].to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("root version {}: {}", r.version, r.root_path.display());
    println!("  {role}: {} -> {}", short(&r.old_ids), short(&r.new_ids));
    println!("  restart the nodes to sign with the new keys; devices follow the root chain by themselves");
    Ok(super::EXIT_OK)
}

pub fn renew_root(keys_dir: &Path, root_keys_dir: &Path, root_days: u64) -> anyhow::Result<u8> {
    let r = root::renew(keys_dir, root_keys_dir, root_days)?;
    println!(
        "root version {} (same keys, valid {root_days} days): {}",
        r.version,
        r.root_path.display()
    );
    println!("  restart the nodes to serve it; devices follow the root chain by themselves");
    Ok(super::EXIT_OK)
}

pub fn add_director(
    keys_dir: &Path,
    root_keys_dir: &Path,
    out: &Path,
    root_days: u64,
) -> anyhow::Result<u8> {
    let r = root::add_director(keys_dir, root_keys_dir, out, root_days)?;
    println!("root version {}: {}", r.version, r.root_path.display());
    println!(
        "  director key {} authorised, written to {}",
        r.new_ids.last().map(String::as_str).unwrap_or("?"),
        out.display()
    );
    println!("  give it to the node as tuf.director_key; restart the nodes to serve the new root");
    Ok(super::EXIT_OK)
}

/// `keys add-edge NAME`: a director key for one edge, authorised by a new root version.
pub fn add_edge(
    keys_dir: &Path,
    root_keys_dir: &Path,
    name: &str,
    out: Option<std::path::PathBuf>,
    root_days: u64,
) -> anyhow::Result<u8> {
    if !crate::catalog::model::valid_name(name) {
        anyhow::bail!("invalid edge name {name:?} (1-64 of a-z 0-9 . _ -)");
    }
    let out = out.unwrap_or_else(|| format!("{name}.director.pk8").into());
    add_director(keys_dir, root_keys_dir, &out, root_days)?;
    println!("  edge {name:?}: serve it with `--upstream URL` and tuf.director_key = {:?}; the origin serves the new root within a re-sign interval", out.display().to_string());
    Ok(super::EXIT_OK)
}

pub fn revoke_director(
    keys_dir: &Path,
    root_keys_dir: &Path,
    key_id: &str,
    root_days: u64,
) -> anyhow::Result<u8> {
    let r = root::revoke_director(keys_dir, root_keys_dir, key_id, root_days)?;
    println!("root version {}: {}", r.version, r.root_path.display());
    println!(
        "  director keys now: {}",
        r.new_ids
            .iter()
            .map(|i| &i[..16])
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(super::EXIT_OK)
}
