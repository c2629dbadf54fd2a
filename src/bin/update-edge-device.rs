//! `update-edge-device`: what a device runs. The reference device client (`update`)
//! and patch application (`delta apply`, `delta info`), the same code as the node's
//! `device` and `delta` commands, in a binary without the node: it links none of the
//! storage engine (RocksDB's C++ and its static initialisers), so it is a quarter of
//! the node binary's size and starts in about half its time (a patch applied on a
//! device pays that start each time).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use update_edge::cli;
use update_edge::config::LogFormat;

#[derive(Parser)]
#[command(
    name = "update-edge-device",
    version,
    about = "Device side of update-edge: verified, resumable updates and patch apply"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Device(cli::device::DeviceCommand),
    /// Binary deltas: apply one, or print its header.
    Delta {
        #[command(subcommand)]
        command: cli::delta::ApplyCommand,
    },
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let _log = update_edge::logging::init(LogFormat::Text);
    cli::exit_code(match args.command {
        Command::Device(command) => command.run(),
        Command::Delta { command } => command.run(),
    })
}
