//! The `logwarden` command: flags → Config → tracing → serve. Exit code 64 on a bad config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use logwarden::config::{Config, ConfigError, Overrides};
use logwarden::inspect::CountOnly;
use logwarden::telemetry::{self, LogFormat};
use logwarden::{App, ShutdownTimings};

/// Exit status for a configuration error (EX_USAGE), before any port is bound.
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "logwarden",
    version,
    about = "Loki-compatible push proxy with streaming log-threat detection"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the push proxy: forward pushes to Loki unchanged and inspect them.
    Serve(ServeArgs),
    /// Validate a configuration file and exit (non-zero with the reason when it is invalid).
    CheckConfig {
        /// The YAML configuration file.
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// YAML configuration file; without it the embedded defaults are used.
    #[arg(long, short = 'c', env = "LOGWARDEN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides `listen`).
    #[arg(long, env = "LOGWARDEN_LISTEN")]
    listen: Option<String>,
    /// Loki base URL (overrides `upstream.url`).
    #[arg(long, env = "LOGWARDEN_UPSTREAM")]
    upstream: Option<String>,
    /// Log format.
    #[arg(
        long,
        value_enum,
        default_value = "human",
        env = "LOGWARDEN_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Time for in-flight requests to finish after SIGTERM/SIGINT.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Time to finish inspecting queued pushes after that.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_drain: Duration,
}

fn main() -> ExitCode {
    // Before any HTTP client (OTLP exporter, forwarder, notifiers) is built: reqwest has no
    // built-in crypto provider with the `tls` feature.
    logwarden::notify::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file, &Overrides::default()) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Serve(args) => serve(args),
    }
}

/// Re-reads the configuration file on SIGHUP; a bad file is rejected and the running
/// configuration stays in force.
fn reload(app: &App, path: Option<&std::path::Path>, overrides: &Overrides) {
    let Some(path) = path else {
        tracing::info!("no configuration file to reload (running on embedded defaults)");
        return;
    };
    match Config::load(path, overrides) {
        Ok(new) => app.reload(&new),
        Err(e) => {
            tracing::error!(error = %e, file = %path.display(), "configuration reload rejected, keeping the running configuration")
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("logwarden: invalid configuration: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn serve(args: ServeArgs) -> ExitCode {
    let overrides = Overrides {
        listen: args.listen,
        upstream: args.upstream,
    };
    let config = match &args.config {
        Some(path) => Config::load(path, &overrides),
        None => Config::from_raw(Default::default(), &overrides),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let env = |k: &str| std::env::var(k).ok();
    let _telemetry = match telemetry::init(args.log_format, &env) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("logwarden: telemetry setup failed: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("logwarden: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timings = ShutdownTimings {
        grace: args.shutdown_grace,
        drain: args.shutdown_drain,
    };
    let overrides_for_reload = overrides.clone();
    let result = runtime.block_on(async move {
        let overrides = overrides_for_reload;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let app = App::try_new(config, Arc::new(CountOnly))?;
        let reload_app = app.clone();
        let config_path = args.config.clone();
        logwarden::shutdown::spawn_reload_listener(move || {
            reload(&reload_app, config_path.as_deref(), &overrides)
        });
        // Logged once the SIGHUP handler is in place: a supervisor (or test) that waits for
        // this line may signal at once. Building the clients (TLS roots) takes a while.
        tracing::info!(
            listen = %listener.local_addr()?,
            upstream = %app.config().upstream_url,
            "logwarden serving"
        );
        logwarden::serve(app, listener, logwarden::shutdown::signal(), timings).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "logwarden failed");
            eprintln!("logwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}
