//! The catalog's builds as TUF targets for the image repository: name
//! `{product}/{version}/{kind}`, length, sha256, and `custom` with product, version,
//! kind, hardware, blake3 and chunks_blake3 (so a device can map a verified target onto
//! the content-addressed download and verify it chunk by chunk).
//!
//! Digests are recorded with each build at publish, so listing targets reads records
//! only; builds recorded before digests existed get them computed here once (a pass
//! over their chunks) and stored.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::chunklist::ChunkList;
use super::model::Build;
use super::version::Version;
use super::{Catalog, CatalogError};
use crate::hash::Hash;
use crate::repo::TargetEntry;
use crate::store::Store;

/// blake3 of a stored blob's chunk list as `GET /v1/blobs/{hash}/chunks` serves it.
pub fn chunk_list_hash(store: &Arc<Store>, blob: &Hash) -> Result<Hash, CatalogError> {
    Ok(list_hash(blob, &*store.manifest_blocking(blob)?))
}

/// The blake3 of the chunk list devices fetch for `blob` with manifest `m` (what build
/// records and signed targets carry as `chunks_blake3`).
pub fn list_hash(blob: &Hash, m: &crate::store::Manifest) -> Hash {
    Hash::of(&serde_json::to_vec(&ChunkList::from_manifest(*blob, m)).unwrap_or_default())
}

/// SHA-256 of a stored blob, streamed chunk by chunk (verified reads).
fn sha256_of(store: &Arc<Store>, blob: &Hash) -> Result<String, CatalogError> {
    let m = store.manifest_blocking(blob)?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for c in &m.chunks {
        ctx.update(&store.read_chunk_uncached(&c.hash)?);
    }
    Ok(hex::encode(ctx.finish().as_ref()))
}

/// Every build of every product as a target entry (blocking).
pub fn entries(catalog: &Catalog) -> Result<Vec<TargetEntry>, CatalogError> {
    let products: std::collections::HashMap<String, super::model::Product> = catalog
        .products()?
        .into_iter()
        .map(|p| (p.slug.clone(), p))
        .collect();
    let mut out = Vec::new();
    for mut b in catalog.all_builds()? {
        if b.sha256.is_none() || b.chunks_blake3.is_none() {
            let sha = sha256_of(catalog.store(), &b.blob)?;
            let list = chunk_list_hash(catalog.store(), &b.blob)?;
            let v: Version = b
                .version
                .parse()
                .map_err(|_| CatalogError::Corrupt(format!("build version {}", b.version)))?;
            catalog.set_build_digests(&b.product, &v, sha.clone(), list)?;
            b.sha256 = Some(sha);
            b.chunks_blake3 = Some(list);
        }
        let hardware = products
            .get(&b.product)
            .map(|p| serde_json::to_value(&p.hardware).unwrap_or(Value::Null))
            .unwrap_or(Value::Null);
        out.push(entry(&b, hardware)?);
    }
    Ok(out)
}

fn entry(b: &Build, hardware: Value) -> Result<TargetEntry, CatalogError> {
    let sha = b.sha256.as_deref().unwrap_or_default();
    let mut sha256 = [0u8; 32];
    hex::decode_to_slice(sha, &mut sha256)
        .map_err(|_| CatalogError::Corrupt(format!("sha256 of {} {}", b.product, b.version)))?;
    let mut custom = Map::new();
    custom.insert("product".into(), json!(b.product));
    custom.insert("version".into(), json!(b.version));
    custom.insert("kind".into(), json!(b.kind.as_str()));
    custom.insert("hardware".into(), hardware);
    custom.insert("blake3".into(), json!(b.blob.to_hex()));
    if let Some(list) = b.chunks_blake3 {
        custom.insert("chunks_blake3".into(), json!(list.to_hex()));
    }
    Ok(TargetEntry {
        name: b.target_name(),
        length: b.size,
        sha256,
        custom,
    })
}
