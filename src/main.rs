//! The `logwarden` command: flags → Config → tracing → serve. Exit code 64 on a bad config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use logwarden::config::{Config, ConfigError, Overrides};
use logwarden::telemetry::{self, LogFormat};
use logwarden::{App, Service, ShutdownTimings, StartError};

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
    /// Run the detection engine over log files and print incidents or per-line matches.
    Scan(logwarden::scan::ScanArgs),
    /// Push synthetic log batches the way Promtail does (load, soak and fault tests).
    Loadgen(logwarden::loadgen::LoadgenArgs),
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
    logwarden::http::install_crypto_provider();
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
        Command::Loadgen(args) => loadgen(args),
        Command::Scan(args) => match logwarden::scan::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("logwarden scan: {e:#}");
                ExitCode::from(2)
            }
        },
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

fn loadgen(args: logwarden::loadgen::LoadgenArgs) -> ExitCode {
    let env = |k: &str| std::env::var(k).ok();
    let _telemetry = telemetry::init(LogFormat::Human, &env);
    let json = args.json;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let summary = match runtime
        .map_err(anyhow::Error::from)
        .and_then(|r| r.block_on(logwarden::loadgen::run(args)))
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("logwarden loadgen: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string(&summary).expect("summary serializes")
        );
    } else {
        println!("{}", logwarden::loadgen::format_summary(&summary));
    }
    if summary.lost_lines() {
        eprintln!("logwarden loadgen: lines were lost (dropped or retries exhausted)");
        return ExitCode::FAILURE;
    }
    if summary.failed() {
        eprintln!("logwarden loadgen: verification failed (a line missing in Loki, or a planted attack missed or reported twice)");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
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
        let listen = config.listen;
        // A Loki behind basic auth is configured as http://user:password@host: never log it.
        let upstream = logwarden::state::redact(config.upstream_url.as_str());
        let scheme = if config.server_tls.is_some() {
            "https"
        } else {
            "http"
        };
        // Every stage is built before the port is bound, so a bad setting binds nothing.
        let service = Service::build(config, &env)?;
        // Signal handlers go in before "serving" is announced: a signal that arrives early must
        // not meet the default action (termination).
        let reload_app = service.app.clone();
        let config_path = args.config.clone();
        logwarden::shutdown::spawn_reload_listener(move || {
            reload(&reload_app, config_path.as_deref(), &overrides)
        });
        let shutdown = logwarden::shutdown::signal();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
        let local = listener.local_addr().map_err(anyhow::Error::from)?;
        tracing::info!(listen = %local, %scheme, %upstream, "logwarden serving");
        service.run(listener, shutdown, timings).await?;
        Ok::<(), StartError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(StartError::Config(e)) => config_error(&e),
        Err(StartError::Other(e)) => {
            tracing::error!(error = format!("{e:#}"), "logwarden failed");
            eprintln!("logwarden: {e:#}");
            ExitCode::FAILURE
        }
    }
}
