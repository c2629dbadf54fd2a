//! `update-edge` command line: parses arguments and calls into the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use update_edge::cli;
use update_edge::config::LogFormat;

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
        /// Run as an edge of this upstream node (sets `edge.upstream`).
        #[arg(long, value_name = "URL")]
        upstream: Option<String>,
    },
    /// Exit 0 if the node answers `/readyz` with 200 (container and service health
    /// checks); the address is the config's `server.listen` unless `--url` is given.
    Health {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Base URL of the node (default: http://127.0.0.1:PORT from `server.listen`).
        #[arg(long)]
        url: Option<String>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// The configuration: `show` the effective one (file, then environment; secrets
    /// masked), `check` a file (exit 0 when valid, 2 with the reason).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// A consistent checkpoint of a stopped node's data directory (a running node:
    /// `POST /v1/admin/backup`).
    Backup {
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where to write it (must not exist).
        out: PathBuf,
    },
    /// Make a data directory (absent or empty) from a checkpoint, or with
    /// `--from-bucket` from the origin's bucket (`[origin.s3]`): its catalog and signed
    /// metadata as of the last snapshot; content is then read from the bucket as it is
    /// asked for. Signing keys are never in the bucket: put `tuf.keys_dir` back yourself.
    Restore {
        /// The checkpoint (from `backup` or `POST /v1/admin/backup`).
        #[arg(
            required_unless_present = "from_bucket",
            conflicts_with = "from_bucket"
        )]
        backup: Option<PathBuf>,
        /// Restore from the bucket named by `[origin.s3]` in the config.
        #[arg(long)]
        from_bucket: bool,
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Drive a running node's operator API from anywhere: publish (resumable), rings,
    /// builds, stats, GC, backup. Exit status: 0 done, 1 the node refused or failed,
    /// 2 bad usage or local input, 3 the node could not be reached.
    Admin {
        /// The node's base URL, e.g. http://origin:8080.
        #[arg(long, env = "UPDATE_EDGE_SERVER")]
        server: String,
        /// A file whose first line is the operator token (`server.admin_token`).
        #[arg(long, env = "UPDATE_EDGE_TOKEN_FILE")]
        token_file: PathBuf,
        /// Print the node's JSON answer (errors too) instead of text.
        #[arg(long, global = true)]
        json: bool,
        /// Seconds without a byte from the node before a request is retried.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Binary deltas between builds.
    Delta {
        #[command(subcommand)]
        command: DeltaCommand,
    },
    /// Reference device client.
    Device {
        #[command(subcommand)]
        command: cli::device::DeviceCommand,
    },
    /// Delete blobs and chunks that no build or delta references (offline).
    Gc {
        #[arg(long)]
        data: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The TUF repository's keys: create them, rotate one role's.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Offline blob access to a data directory (the server must not be running on it).
    Blob {
        #[command(subcommand)]
        command: BlobCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Publish FILE as VERSION of PRODUCT. Only chunks the node lacks are sent; run the
    /// same command again to resume an interrupted publish.
    Publish {
        product: String,
        version: String,
        file: PathBuf,
        /// os, driver or app.
        #[arg(long, default_value = "os")]
        kind: String,
        #[arg(long)]
        notes: Option<String>,
    },
    /// Products: `put` one (create or rename), `ls`.
    Product {
        #[command(subcommand)]
        command: ProductCommand,
    },
    /// Builds of a product.
    Builds {
        #[command(subcommand)]
        command: BuildsCommand,
    },
    /// Rollout rings: `set` one's version and percentage, `ls`.
    Ring {
        #[command(subcommand)]
        command: RingCommand,
    },
    /// Devices seen per version and ring; bytes served per artifact kind.
    Stats { product: String },
    /// Delete blobs and chunks no build or delta references.
    Gc,
    /// A checkpoint on the node, under its `server.backup_dir`.
    Backup,
}

#[derive(Subcommand)]
enum ProductCommand {
    Put {
        product: String,
        #[arg(long)]
        name: String,
        /// Hardware this product's builds are for, as JSON.
        #[arg(long)]
        hardware: Option<String>,
    },
    Ls,
}

#[derive(Subcommand)]
enum BuildsCommand {
    Ls { product: String },
}

#[derive(Subcommand)]
enum RingCommand {
    Set {
        product: String,
        ring: String,
        version: String,
        /// Share of the ring's devices offered the version, 0–100.
        #[arg(long, default_value_t = 100.0)]
        percent: f64,
        /// Hold the rollout where it is.
        #[arg(long)]
        paused: bool,
    },
    Ls {
        product: String,
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

/// Where the keys are, shared by every `keys` command.
#[derive(clap::Args)]
struct KeyDirs {
    /// Online keys directory (default: tuf.keys_dir of the config).
    #[arg(long)]
    keys: Option<PathBuf>,
    /// The root private keys (outside the data and online keys dirs; keep offline).
    #[arg(long)]
    root_keys: PathBuf,
    /// Days the root version written stays valid.
    #[arg(long, default_value_t = update_edge::repo::root::DEFAULT_ROOT_DAYS)]
    root_days: u64,
    #[arg(long)]
    config: Option<PathBuf>,
}

impl KeyDirs {
    /// (online keys dir, root keys dir, root days), the first from the config if not given.
    fn resolve(self) -> anyhow::Result<(PathBuf, PathBuf, u64)> {
        let c = cli::load_config(self.config.as_deref(), None, None)?;
        Ok((
            self.keys.unwrap_or(c.tuf.keys_dir),
            self.root_keys,
            self.root_days,
        ))
    }
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create root keys (k of n, in --root-keys: keep them offline), the online keys and
    /// root version 1 (in --keys, the node's tuf.keys_dir).
    Init {
        #[command(flatten)]
        dirs: KeyDirs,
        #[arg(long, default_value_t = 3)]
        root_count: usize,
        #[arg(long, default_value_t = 2)]
        root_threshold: usize,
    },
    /// Write the next root version with fresh keys for ROLE (root, targets, snapshot,
    /// timestamp, director), signed by the current root keys (and the new ones for root).
    Rotate {
        #[arg(long)]
        role: String,
        #[command(flatten)]
        dirs: KeyDirs,
    },
    /// Write the next root version with the same keys and a new expiry (before root
    /// expires; needs the root keys).
    RenewRoot {
        #[command(flatten)]
        dirs: KeyDirs,
    },
    /// Authorise one more director key (an edge node's own), written to --out.
    AddDirector {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        dirs: KeyDirs,
    },
    /// Authorise a new edge node: its own director key, written to --out (default
    /// `./NAME.director.pk8`), for the edge's `tuf.director_key`.
    AddEdge {
        name: String,
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        dirs: KeyDirs,
    },
    /// Withdraw a director key's authorisation (key id, or its first 16 hex digits).
    RevokeDirector {
        #[arg(long)]
        key_id: String,
        #[command(flatten)]
        dirs: KeyDirs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Native,
    Bsdiff40,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the configuration a node would run with, as TOML.
    Show {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file (with the environment applied, as `serve` would).
    Check { file: PathBuf },
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
        #[arg(long, default_value_t = update_edge::delta::DEFAULT_LEVEL)]
        level: i32,
        /// Bytes of output per independently compressed block, at most 16MiB: smaller
        /// blocks spread compression over more threads and cost some patch size.
        #[arg(long, default_value = "4MiB")]
        block_size: String,
        /// Report "worth it" when patch <= RATIO x zstd-compressed NEW.
        #[arg(long, default_value_t = 0.8)]
        worth_it_ratio: f64,
        /// Diff bytes only: no x86-64 reference prediction for executables (the patch
        /// is then format version 1, which every applier takes).
        #[arg(long)]
        no_transform: bool,
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Apply(cli::delta::ApplyCommand),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    // `serve` logs as its configuration says, once it is loaded; everything else in text.
    let mut _log = match args.command {
        Command::Serve { .. } => None,
        _ => Some(update_edge::logging::init(LogFormat::Text)),
    };
    let result = match args.command {
        Command::Serve {
            config,
            listen,
            data,
            demo,
            upstream,
        } => cli::load_config(config.as_deref(), data.as_deref(), listen).and_then(|mut c| {
            if let Some(u) = upstream {
                c.edge.upstream = u;
                c.validate()?;
            }
            _log = Some(update_edge::logging::init(c.log.format));
            cli::serve::run(c, demo)
        }),
        Command::Delta { command } => match command {
            DeltaCommand::Diff {
                old,
                new,
                out,
                memory_limit,
                format,
                level,
                block_size,
                worth_it_ratio,
                no_transform,
                json,
            } => memory_limit
                .parse::<update_edge::config::ByteSize>()
                .and_then(|limit| Ok((limit, block_size.parse::<update_edge::config::ByteSize>()?)))
                .map_err(anyhow::Error::msg)
                .and_then(|(limit, block)| {
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
                        block_size: block.0,
                        worth_it_ratio,
                        transform: !no_transform,
                        json,
                    })
                }),
            DeltaCommand::Apply(command) => command.run(),
        },
        Command::Device { command } => command.run(),
        Command::Health {
            config,
            url,
            timeout,
        } => cli::load_config(config.as_deref(), None, None)
            .and_then(|c| cli::health(&c, url.as_deref(), timeout)),
        Command::Config { command } => match command {
            ConfigCommand::Show { config } => {
                cli::load_config(config.as_deref(), None, None).map(|c| {
                    print!("{}", c.to_masked_toml());
                    cli::EXIT_OK
                })
            }
            ConfigCommand::Check { file } => cli::load_config(Some(&file), None, None).map(|_| {
                println!("{}: ok", file.display());
                cli::EXIT_OK
            }),
        },
        Command::Admin {
            server,
            token_file,
            json,
            timeout,
            command,
        } => {
            use cli::admin::Action;
            let action = match command {
                AdminCommand::Publish {
                    product,
                    version,
                    file,
                    kind,
                    notes,
                } => Action::Publish {
                    product,
                    version,
                    file,
                    kind,
                    notes,
                },
                AdminCommand::Product { command } => match command {
                    ProductCommand::Put {
                        product,
                        name,
                        hardware,
                    } => Action::ProductPut {
                        product,
                        name,
                        hardware,
                    },
                    ProductCommand::Ls => Action::ProductsLs,
                },
                AdminCommand::Builds {
                    command: BuildsCommand::Ls { product },
                } => Action::BuildsLs { product },
                AdminCommand::Ring { command } => match command {
                    RingCommand::Set {
                        product,
                        ring,
                        version,
                        percent,
                        paused,
                    } => Action::RingSet {
                        product,
                        ring,
                        version,
                        percent,
                        paused,
                    },
                    RingCommand::Ls { product } => Action::RingsLs { product },
                },
                AdminCommand::Stats { product } => Action::Stats { product },
                AdminCommand::Gc => Action::Gc,
                AdminCommand::Backup => Action::Backup,
            };
            Ok(cli::admin::run(
                &server,
                &token_file,
                std::time::Duration::from_secs(timeout),
                json,
                action,
            ))
        }
        Command::Backup { data, config, out } => {
            cli::load_config(config.as_deref(), data.as_deref(), None)
                .and_then(|c| cli::backup(c, &out))
        }
        Command::Restore {
            backup,
            from_bucket,
            data,
            config,
        } => cli::load_config(config.as_deref(), data.as_deref(), None).and_then(|c| {
            match (from_bucket, backup) {
                (false, Some(backup)) => cli::restore(c, &backup),
                _ => cli::restore_from_bucket(c),
            }
        }),
        Command::Gc { data, config } => {
            cli::load_config(config.as_deref(), data.as_deref(), None).and_then(cli::blob::gc)
        }
        Command::Keys { command } => match command {
            KeysCommand::Init {
                dirs,
                root_count,
                root_threshold,
            } => dirs.resolve().and_then(|(keys, root_keys, root_days)| {
                let opts = update_edge::repo::root::InitOptions {
                    root_keys: root_count,
                    root_threshold,
                    root_days,
                };
                cli::keys::init(&keys, &root_keys, opts)
            }),
            KeysCommand::Rotate { role, dirs } => {
                dirs.resolve().and_then(|(keys, root_keys, days)| {
                    cli::keys::rotate(&keys, &root_keys, &role, days)
                })
            }
            KeysCommand::RenewRoot { dirs } => dirs
                .resolve()
                .and_then(|(keys, root_keys, days)| cli::keys::renew_root(&keys, &root_keys, days)),
            KeysCommand::AddDirector { out, dirs } => {
                dirs.resolve().and_then(|(keys, root_keys, days)| {
                    cli::keys::add_director(&keys, &root_keys, &out, days)
                })
            }
            KeysCommand::AddEdge { name, out, dirs } => {
                dirs.resolve().and_then(|(keys, root_keys, days)| {
                    cli::keys::add_edge(&keys, &root_keys, &name, out, days)
                })
            }
            KeysCommand::RevokeDirector { key_id, dirs } => {
                dirs.resolve().and_then(|(keys, root_keys, days)| {
                    cli::keys::revoke_director(&keys, &root_keys, &key_id, days)
                })
            }
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
    cli::exit_code(result)
}
