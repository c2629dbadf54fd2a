//! `update-edge device update`: the reference device client.
//!
//! Exit codes: 0 updated (`--out` written and verified); 3 no update offered; 1 the
//! answer or the download failed verification (nothing written to `--out`); 2 usage,
//! I/O or network error (gave up retrying).

use std::path::PathBuf;

use super::{EXIT_OK, EXIT_PROBLEM};
use crate::client::{self, ClientError, UpdateArgs};

/// The device commands, in `update-edge device` and in `update-edge-device`.
#[derive(clap::Subcommand)]
pub enum DeviceCommand {
    /// Check for an update, download it verified and resumable, write --out atomically.
    Update {
        #[command(flatten)]
        args: UpdateCli,
        #[arg(long)]
        json: bool,
    },
}

/// `update`'s arguments.
#[derive(clap::Args)]
pub struct UpdateCli {
    #[arg(long)]
    server: String,
    #[arg(long)]
    product: String,
    #[arg(long)]
    device_id: String,
    #[arg(long)]
    version: String,
    #[arg(long)]
    ring: Option<String>,
    /// The installed build (needed to use a delta).
    #[arg(long)]
    current: Option<PathBuf>,
    #[arg(long)]
    out: PathBuf,
    /// The repository's root.json the device ships with (its root of trust).
    #[arg(long)]
    root: PathBuf,
    /// Device state: newest verified metadata, highest version installed.
    #[arg(long)]
    state: PathBuf,
    /// Throttle downloads to this many bytes per second (simulate a slow link).
    #[arg(long, default_value_t = 0)]
    max_rate: u64,
    /// Keep retrying a failing request for this many seconds.
    #[arg(long, default_value_t = 300)]
    retry_secs: u64,
    /// Trust this PEM CA certificate (bundle) for an https server, beside the
    /// system's roots.
    #[arg(long)]
    ca: Option<PathBuf>,
}

impl DeviceCommand {
    /// Runs the command; the exit status (see the module's doc).
    pub fn run(self) -> anyhow::Result<u8> {
        match self {
            DeviceCommand::Update { args: a, json } => update(
                UpdateArgs {
                    server: a.server,
                    product: a.product,
                    device_id: a.device_id,
                    version: a.version,
                    ring: a.ring,
                    current: a.current,
                    out: a.out,
                    root: a.root,
                    state: a.state,
                    max_rate: a.max_rate,
                    retry_for: std::time::Duration::from_secs(a.retry_secs),
                    ca: a.ca,
                },
                json,
            ),
        }
    }
}

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
