//! Demo content for the quick start: three synthetic "OS image" builds that share most
//! of their bytes, as consecutive monthly security builds do.

use crate::catalog::model::{Hardware, Kind};
use crate::catalog::version::{BadVersion, Version};
use crate::catalog::{Catalog, CatalogError};
use crate::hash::Hash;
use crate::store::Store;

/// Size of each demo image.
pub const DEMO_IMAGE_BYTES: usize = 24 << 20;

/// Deterministic pseudo-random bytes (xorshift), so every demo node has the same hashes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Build `n` (1-based) of the demo image: each build patches a few regions of the
/// previous one and inserts a little, like a security update.
pub fn demo_build(n: u32) -> Vec<u8> {
    let mut img = noise(DEMO_IMAGE_BYTES, 1);
    for b in 2..=n {
        for k in 0..8u64 {
            let at = ((u64::from(b) * 7919 + k * 3_000_017) as usize) % (img.len() - 70_000);
            let patch = noise(4096 + (k as usize) * 512, u64::from(b) * 100 + k);
            img[at..at + patch.len()].copy_from_slice(&patch);
        }
        let at = (u64::from(b) * 1_234_567) as usize % img.len();
        img.splice(at..at, noise(10_000, u64::from(b)));
    }
    img
}

/// Demo product slug.
pub const DEMO_PRODUCT: &str = "demo-device";

/// Stores the demo builds (idempotent), publishes them as product `demo-device` with the
/// default rings, and returns (version, hash, size).
pub fn seed(catalog: &Catalog) -> Result<Vec<(String, Hash, u64)>, CatalogError> {
    let store: &Store = catalog.store();
    let hw = Hardware {
        manufacturer: Some("Contoso".into()),
        family: Some("Edge Gateway".into()),
        sku: None,
    };
    catalog.put_product(DEMO_PRODUCT, "Demo edge gateway", hw)?;
    let mut out = Vec::new();
    for n in 1..=3 {
        let img = demo_build(n);
        let put = store
            .put_reader(&img[..], |_| {})
            .map_err(CatalogError::from)?;
        let version: Version = format!("1.0.{n}")
            .parse()
            .map_err(|e: BadVersion| CatalogError::Invalid(e.to_string()))?;
        catalog.publish_build(
            DEMO_PRODUCT,
            &version,
            Kind::Os,
            "demo security update",
            &put,
        )?;
        out.push((version.to_string(), put.hash, put.size));
    }
    let latest: Version = "1.0.3"
        .parse()
        .map_err(|e: BadVersion| CatalogError::Invalid(e.to_string()))?;
    catalog.set_ring(DEMO_PRODUCT, "preview", &latest, 100.0, false)?;
    catalog.set_ring(DEMO_PRODUCT, "early-adopter", &latest, 50.0, false)?;
    catalog.set_ring(DEMO_PRODUCT, "general", &latest, 100.0, false)?;
    Ok(out)
}
