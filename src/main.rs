//! `update-edge` command line: parses arguments and calls into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use update_edge::cli;

#[derive(Parser)]
#[command(
    name = "update-edge",
    version,
    about = "Update-delivery node: store, deltas, rollout, downloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (HTTP/1.1 and cleartext HTTP/2 on one port).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[arg(long)]
        data: Option<PathBuf>,
        /// Seed demo content and print URLs to try.
        #[arg(long)]
        demo: bool,
    },
    /// Binary deltas between builds.
    Delta {
        #[command(subcommand)]
        command: DeltaCommand,
    },
    /// Offline blob access to a data directory (the server must not be running on it).
    Blob {
        #[command(subcommand)]
        command: BlobCommand,
    },
}

#[derive(Subcommand)]
enum BlobCommand {
    /// Import a file; prints its blake3 hash.
    Put {
        file: PathBuf,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write a stored blob to a file (or stdout).
    Get {
        hash: String,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(short = 'o', long = "output")]
        out: Option<PathBuf>,
    },
    /// Re-hash every chunk and blob; exit 1 if any is corrupt.
    Verify {
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Native,
    Bsdiff40,
}

#[derive(Subcommand)]
enum DeltaCommand {
    /// Compute a patch from OLD to NEW.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(short = 'o', long = "output")]
        out: PathBuf,
        /// Peak memory budget, e.g. 2GiB; larger inputs are matched in windows.
        #[arg(long, default_value = "2GiB")]
        memory_limit: String,
        #[arg(long, value_enum, default_value = "native")]
        format: Format,
        /// zstd level of the patch streams (native format).
        #[arg(long, default_value_t = 19)]
        level: i32,
        /// Report "worth it" when patch <= RATIO x zstd-compressed NEW.
        #[arg(long, default_value_t = 0.8)]
        worth_it_ratio: f64,
        #[arg(long)]
        json: bool,
    },
    /// Apply PATCH to OLD, writing NEW atomically (nothing is left on failure).
    Apply {
        old: PathBuf,
        patch: PathBuf,
        #[arg(short = 'o', long = "output")]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print a patch's header.
    Info { patch: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UPDATE_EDGE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Cli::parse();
    let result = match args.command {
        Command::Serve {
            config,
            listen,
            data,
            demo,
        } => cli::load_config(config.as_deref(), data.as_deref(), listen)
            .and_then(|c| cli::serve::run(c, demo)),
        Command::Delta { command } => match command {
            DeltaCommand::Diff {
                old,
                new,
                out,
                memory_limit,
                format,
                level,
                worth_it_ratio,
                json,
            } => memory_limit
                .parse::<update_edge::config::ByteSize>()
                .map_err(anyhow::Error::msg)
                .and_then(|limit| {
                    cli::delta::diff(cli::delta::DiffArgs {
                        old: &old,
                        new: &new,
                        out: &out,
                        memory_limit: limit.0,
                        format: match format {
                            Format::Native => update_edge::delta::PatchFormat::Native,
                            Format::Bsdiff40 => update_edge::delta::PatchFormat::Bsdiff40,
                        },
                        level,
                        worth_it_ratio,
                        json,
                    })
                }),
            DeltaCommand::Apply {
                old,
                patch,
                out,
                json,
            } => cli::delta::apply(&old, &patch, &out, json),
            DeltaCommand::Info { patch } => cli::delta::info(&patch),
        },
        Command::Blob { command } => match command {
            BlobCommand::Put { file, data, config } => {
                cli::load_config(config.as_deref(), data.as_deref(), None)
                    .and_then(|c| cli::blob::put(c, &file))
            }
            BlobCommand::Get {
                hash,
                data,
                config,
                out,
            } => cli::load_config(config.as_deref(), data.as_deref(), None)
                .and_then(|c| cli::blob::get(c, &hash, out.as_deref())),
            BlobCommand::Verify { data, config } => {
                cli::load_config(config.as_deref(), data.as_deref(), None)
                    .and_then(cli::blob::verify)
            }
        },
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::EXIT_USAGE)
        }
    }
}
