//! update-edge: an update-delivery node for fleets of devices.
//!
//! Modules map onto the architecture (see the README): `store` (content-addressed
//! chunks and blobs), `delta` (binary diffs), `catalog` (builds, rings, director answers), `repo` (the TUF
//! image repository and its keys), `http` (the API), `server` (assembly),
//! `config`, `metrics`, and `cli` (command glue).

pub mod bucket;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod delta;
pub mod hash;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod repo;
pub mod server;
pub mod store;
pub mod tls;
pub mod upstream;
