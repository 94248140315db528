//! The `qgate` command: `qgate` / `qgate serve` runs the broker.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use qgate::config::{Config, ConfigError, Overrides};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "qgate",
    version,
    about = "A message broker: AMQP 0-9-1, memcache text protocol and Prometheus metrics over one queue core"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

// Parsed once at start-up: the size of the flags struct does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker (the default).
    Serve(ServeArgs),
    /// Manage a running broker, rabbitmqctl-style (add_user, set_permissions, list_queues, ...).
    Ctl(qgate::ctl::CtlArgs),
}

#[derive(Args, Debug, Clone, Default)]
struct ServeArgs {
    /// TOML configuration file (defaults < file < env < flags).
    #[arg(long, env = "QGATE_CONFIG")]
    config: Option<PathBuf>,
    /// AMQP listen address [default: 0.0.0.0:5672]
    #[arg(long, env = "QGATE_AMQP_LISTEN")]
    amqp_listen: Option<String>,
    /// memcache listen address [default: 127.0.0.1:22201]
    #[arg(long, env = "QGATE_MEMCACHE_LISTEN")]
    memcache_listen: Option<String>,
    /// HTTP (metrics, health, admin API) listen address [default: 127.0.0.1:15692]
    #[arg(long, env = "QGATE_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// Data directory [default: ./qgate-data]
    #[arg(long, env = "QGATE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// fsync policy: always | interval:<ms> | never [default: always]
    #[arg(long, env = "QGATE_FSYNC")]
    fsync: Option<String>,
    /// Log filter, e.g. info, debug, qgate=trace [default: info]
    #[arg(long, env = "QGATE_LOG")]
    log: Option<String>,
    /// Largest memcache data block in bytes [default: 1048576]
    #[arg(long, env = "QGATE_MEMCACHE_MAX_MESSAGE")]
    memcache_max_message: Option<usize>,
    /// Vhost of the memcache queues [default: /]
    #[arg(long, env = "QGATE_MEMCACHE_VHOST")]
    memcache_vhost: Option<String>,
    /// Prefix of metric names; `rabbitmq` for RabbitMQ dashboards [default: qgate]
    #[arg(long, env = "QGATE_METRICS_PREFIX")]
    metrics_prefix: Option<String>,
    /// Heartbeat proposed to AMQP clients, seconds [default: 60]
    #[arg(long, env = "QGATE_HEARTBEAT")]
    heartbeat: Option<u16>,
    /// Memory queued messages may hold before publishers are blocked: a fraction of
    /// physical memory, a byte count, or 0 for none [default: 0.4]
    #[arg(long, env = "QGATE_MEMORY_HIGH_WATERMARK")]
    memory_high_watermark: Option<String>,
    /// Most AMQP connections open at once; 0 for none [default: 0]
    #[arg(long, env = "QGATE_AMQP_CONNECTION_MAX")]
    amqp_connection_max: Option<u32>,
    /// Most memcache connections open at once; 0 for none [default: 1024]
    #[arg(long, env = "QGATE_MEMCACHE_CONNECTION_MAX")]
    memcache_connection_max: Option<u32>,
    /// channel_max proposed to AMQP clients [default: 2047]
    #[arg(long, env = "QGATE_CHANNEL_MAX")]
    channel_max: Option<u16>,
    /// frame_max proposed to AMQP clients, bytes; 0 for none [default: 131072]
    #[arg(long, env = "QGATE_FRAME_MAX")]
    frame_max: Option<u32>,
    /// Largest AMQP message body, bytes [default: 134217728]
    #[arg(long, env = "QGATE_MAX_MESSAGE_SIZE")]
    max_message_size: Option<u64>,
    /// Time an AMQP client has to open its connection, ms [default: 10000]
    #[arg(long, env = "QGATE_HANDSHAKE_TIMEOUT")]
    handshake_timeout: Option<u64>,
    /// Close memcache connections silent for this many seconds; 0 for never [default: 0]
    #[arg(long, env = "QGATE_MEMCACHE_IDLE_TIMEOUT")]
    memcache_idle_timeout: Option<u64>,
    /// Free disk space below which publishers are blocked (RabbitMQ's disk_free_limit):
    /// 50MB, 1GB, 2GiB, bytes, mem_relative:<f>, or 0 for none [default: 50MB]
    #[arg(long, env = "QGATE_DISK_FREE_LIMIT")]
    disk_free_limit: Option<String>,
    /// Upstream mode: serve the memcache listener from a RabbitMQ cluster,
    /// amqp://user:pass@host1:5672,host2:5672/vhost (the AMQP listener is off)
    #[arg(long, env = "QGATE_UPSTREAM")]
    upstream: Option<String>,
    /// Users who may log in only from loopback addresses, comma-separated; "" lets
    /// every user in from anywhere (RabbitMQ's loopback_users) [default: guest]
    #[arg(long, env = "QGATE_LOOPBACK_USERS")]
    loopback_users: Option<String>,
    /// User whose permissions govern memcache commands [default: guest]
    #[arg(long, env = "QGATE_MEMCACHE_USER")]
    memcache_user: Option<String>,
    /// Management (HTTP API, web console) listen address [default: 127.0.0.1:15672]
    #[arg(long, env = "QGATE_MANAGEMENT_LISTEN")]
    management_listen: Option<String>,
}

impl ServeArgs {
    fn load(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply(Overrides {
            amqp_listen: self.amqp_listen,
            memcache_listen: self.memcache_listen,
            http_listen: self.http_listen,
            data_dir: self.data_dir,
            fsync: self.fsync,
            log: self.log,
            memcache_max_message: self.memcache_max_message,
            memcache_vhost: self.memcache_vhost,
            metrics_prefix: self.metrics_prefix,
            heartbeat: self.heartbeat,
            memory_high_watermark: self.memory_high_watermark,
            amqp_connection_max: self.amqp_connection_max,
            memcache_connection_max: self.memcache_connection_max,
            channel_max: self.channel_max,
            frame_max: self.frame_max,
            max_message_size: self.max_message_size,
            handshake_timeout: self.handshake_timeout,
            memcache_idle_timeout: self.memcache_idle_timeout,
            disk_free_limit: self.disk_free_limit,
            upstream: self.upstream,
            loopback_users: self.loopback_users,
            memcache_user: self.memcache_user,
            management_listen: self.management_listen,
        });
        config.validate()?;
        // Settings whose grammar belongs to a layer below config are checked here too,
        // so that a bad value is refused, by its name, before anything starts.
        config
            .storage
            .fsync
            .parse::<qgate::store::FsyncPolicy>()
            .map_err(|_| ConfigError::Invalid {
                name: "storage.fsync",
                reason: format!(
                    "'{}' is not a fsync policy: expected always, never or interval:<ms> \
                     (e.g. interval:100)",
                    config.storage.fsync
                ),
            })?;
        tracing_subscriber::EnvFilter::try_new(&config.log).map_err(|e| ConfigError::Invalid {
            name: "log",
            reason: format!(
                "'{}' is not a log filter ({e}): expected a level (error, warn, info, \
                     debug, trace) or target=level directives, e.g. info,qgate=debug",
                config.log
            ),
        })?;
        // A fresh data directory gets the configured vhosts; one that exists already is
        // checked by the server once it is open (vhosts change at runtime).
        if config.upstream.url.is_empty()
            && !config.storage.data_dir.exists()
            && !config.vhosts.contains(&config.memcache.vhost)
        {
            return Err(ConfigError::Invalid {
                name: "memcache.vhost",
                reason: format!(
                    "vhost '{}' is not in vhosts, which a new data directory starts with",
                    config.memcache.vhost
                ),
            }
            .into());
        }
        Ok(config)
    }
}

/// The error and its causes, each said once: an error whose text already quotes its
/// cause (`cannot listen ...: Address already in use`) does not repeat it.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if text.contains(&s) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&s);
    }
    text
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        // Usage errors of `qgate ctl` exit with rabbitmqctl's 64 (EX_USAGE), not clap's 2.
        if e.use_stderr() && std::env::args().nth(1).as_deref() == Some("ctl") {
            let _ = e.print();
            std::process::exit(64);
        }
        e.exit()
    });
    let result = match cli.command {
        Some(Command::Serve(args)) => serve(args),
        Some(Command::Ctl(args)) => qgate::ctl::run(args).map_err(Into::into),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qgate: error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.load()?;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid log filter '{}'", config.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("qgate")
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        // Handlers are installed before any listener is bound, so a signal that arrives
        // as soon as the `listening` lines appear is already a clean shutdown.
        let signals = Signals::install()?;
        tokio::spawn(async move {
            signals.wait().await;
            signal.cancel();
        });
        qgate::server::run(config, shutdown, |_| {}).await?;
        anyhow::Ok(())
    })?;
    Ok(())
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
