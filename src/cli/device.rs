//! `update-edge device update`: the reference device client.
//!
//! Exit codes: 0 updated (`--out` written and verified); 3 no update offered; 1 the
//! answer or the download failed verification (nothing written to `--out`); 2 usage,
//! I/O or network error (gave up retrying).

use super::{EXIT_OK, EXIT_PROBLEM};
use crate::client::{self, ClientError, UpdateArgs};

/// Exit status: the server offered no update.
pub const EXIT_NO_UPDATE: u8 = 3;

pub fn update(args: UpdateArgs, json: bool) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(client::update(args)) {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else if r.result == "no_update" {
                println!("no update available");
            } else {
                println!(
                    "updated to {} ({}) via {} ({} bytes downloaded, {} resumed, {} retries)",
                    r.version.as_deref().unwrap_or("?"),
                    r.target.as_deref().unwrap_or("?"),
                    r.artifact.as_deref().unwrap_or("?"),
                    r.bytes_downloaded,
                    r.bytes_resumed,
                    r.retries
                );
            }
            Ok(if r.result == "no_update" {
                EXIT_NO_UPDATE
            } else {
                EXIT_OK
            })
        }
        Err(e @ (ClientError::Untrusted(_) | ClientError::Verification(_))) => {
            eprintln!("error: {e}");
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "result": "rejected", "error": e.to_string() })
                );
            }
            Ok(EXIT_PROBLEM)
        }
        Err(e) => Err(e.into()),
    }
}
