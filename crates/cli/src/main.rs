//! The `switchboard` binary: parses the command line, finds and validates
//! the configuration, sets up logging, and runs the gateway until SIGTERM or
//! Ctrl-C. Everything else lives in the library crates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use shutdown::shutdown_token;
use switchboard_config::{Config, ConfigError, Scheduler};

/// mimalloc; see `allocator.rs`.
#[global_allocator]
static ALLOCATOR: allocator::Mimalloc = allocator::Mimalloc;

mod admin;
mod allocator;
mod reload;
mod shutdown;

/// Switchboard: one OpenAI-compatible endpoint in front of every model.
#[derive(Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Listen on this address instead of the configured one.
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<SocketAddr>,
        /// Log format on standard error.
        #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "SWITCHBOARD_LOG_FORMAT")]
        log_format: LogFormat,
        /// Reload the configuration when its file changes (SIGHUP always reloads).
        #[arg(long, env = "SWITCHBOARD_WATCH_CONFIG")]
        watch: bool,
    },
    /// Validate a configuration and print the resolved model table, secrets masked.
    Check {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Manage the virtual keys of a running gateway.
    Keys {
        #[command(flatten)]
        connection: admin::Connection,
        #[command(subcommand)]
        command: admin::KeysCommand,
    },
    /// Manage the teams of a running gateway.
    Teams {
        #[command(flatten)]
        connection: admin::Connection,
        #[command(subcommand)]
        command: admin::TeamsCommand,
    },
    /// Show spend from a running gateway's request log.
    Spend {
        #[command(flatten)]
        connection: admin::Connection,
        #[command(flatten)]
        args: admin::SpendArgs,
    },
    /// List requests from a running gateway's request log, newest first.
    Logs {
        #[command(flatten)]
        connection: admin::Connection,
        #[command(flatten)]
        args: admin::LogsArgs,
    },
    /// Show usage (requests, tokens, cost, errors, latency percentiles) from
    /// a running gateway's request log.
    Usage {
        #[command(flatten)]
        connection: admin::Connection,
        #[command(flatten)]
        args: admin::UsageArgs,
    },
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// The configuration file. Without it: $SWITCHBOARD_CONFIG, then
    /// ./switchboard.toml, then the embedded default (simulated models).
    #[arg(long, short, value_name = "FILE", env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Keys {
            connection,
            command,
        } => admin::keys(&connection, command),
        Command::Teams {
            connection,
            command,
        } => admin::teams(&connection, command),
        Command::Spend { connection, args } => admin::spend(&connection, args),
        Command::Logs { connection, args } => admin::logs(&connection, args),
        Command::Usage { connection, args } => admin::usage(&connection, args),
        Command::Serve {
            config,
            listen,
            log_format,
            watch,
        } => serve(&config, listen, log_format, watch),
    }
}

/// The configuration file to use, if any (`None`: the embedded default).
fn config_path(args: &ConfigArgs) -> Option<PathBuf> {
    match &args.config {
        Some(path) => Some(path.clone()),
        None if Path::new("switchboard.toml").is_file() => Some(PathBuf::from("switchboard.toml")),
        None => None,
    }
}

fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
    match config_path(args) {
        Some(path) => Config::load_file(&path),
        None => Ok(Config::embedded_default()),
    }
}

fn check(args: &ConfigArgs) -> ExitCode {
    match load(args) {
        Ok(config) => {
            let auth = config.server.master_key.as_ref().map_or_else(
                || "none (any caller is accepted)".to_owned(),
                |key| format!("master key {}", key.masked()),
            );
            let report = format!(
                "configuration {} is valid\nlisten:  {}\nstorage: {}\nauth:    {auth}\n\n{}",
                config.source,
                config.server.listen,
                config.storage.url,
                switchboard_config::model_table(&config)
            );
            write_out(&report);
            ExitCode::SUCCESS
        }
        Err(error) => {
            write_err(&error.to_string());
            ExitCode::from(2)
        }
    }
}

/// Writes to standard error, ignoring a closed stream.
pub(crate) fn write_err(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Writes to standard output; a reader that went away (`| head`) is not an error.
pub(crate) fn write_out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

fn serve(
    args: &ConfigArgs,
    listen: Option<SocketAddr>,
    log_format: LogFormat,
    watch: bool,
) -> ExitCode {
    init_logging(log_format);
    let config = match load(args) {
        Ok(config) => config,
        Err(error) => {
            write_err(&error.to_string());
            return ExitCode::from(2);
        }
    };
    let threads = config.server.runtime_threads();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_some() {
        tracing::warn!(
            "TOKIO_WORKER_THREADS is not read: set server.worker_threads in the configuration"
        );
    }
    // One thread needs no work stealing: tokio's current-thread scheduler
    // serves it with less bookkeeping per task wake-up (`bench/ab.sh`:
    // about 7% more throughput on one core).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            write_err(&format!("error: cannot start the async runtime: {error}\n"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, config_path(args), listen, watch)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            write_err(&format!("error: {error:#}\n"));
            ExitCode::FAILURE
        }
    }
}

async fn run(
    config: Config,
    path: Option<PathBuf>,
    listen: Option<SocketAddr>,
    watch: bool,
) -> anyhow::Result<()> {
    // What was built, not what was asked for: the log line below names it.
    let runtime = tokio::runtime::Handle::current();
    let scheduler = match (config.server.scheduler, runtime.runtime_flavor()) {
        (Scheduler::PerThread, _) => "per-thread",
        (Scheduler::WorkStealing, tokio::runtime::RuntimeFlavor::MultiThread) => "work-stealing",
        (Scheduler::WorkStealing, _) => "current-thread",
    };
    let shutdown = shutdown_token();
    let address = listen.unwrap_or(config.server.listen);
    let running = switchboard_server::start(&config, address, shutdown.clone()).await?;
    reload::spawn(
        running.gateway.clone(),
        config.clone(),
        path,
        watch,
        shutdown,
    );
    if config.server.master_key.is_none() {
        tracing::warn!(
            "no master key is configured: any caller on {} is accepted",
            running.address.ip()
        );
    }
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config.source,
        storage = %config.storage.url,
        models = config.models.len(),
        serving_threads = config.server.threads(),
        scheduler,
        "switchboard listening on http://{}",
        running.address
    );
    running.wait().await?;
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
