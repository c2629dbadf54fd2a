//! update-edge: an update-delivery node for fleets of devices.
//!
//! Modules map onto the architecture (see the README): `store` (content-addressed
//! chunks and blobs), `delta` (binary diffs), `http` (the API), `server` (assembly),
//! `config`, `metrics`, and `cli` (command glue).

pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod delta;
pub mod hash;
pub mod http;
pub mod metrics;
pub mod server;
pub mod store;
