//! What crosses the wire between node and device, in one place (as iroh-blobs does):
//! build versions, chunk lists, director answers' canonical form and signatures, and
//! the director authorisation in root.json. The device client imports only this (plus
//! the hash type and the delta applier), never node internals, so it could become its
//! own crate.

pub mod answer;
pub mod bao;
pub mod chunklist;
pub mod trust;
pub mod version;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
