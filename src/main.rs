//! The `qgate` command: `qgate` / `qgate serve` runs the broker.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod cli;
use cli::ctl;
use cli::serve::ServeArgs;

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
    Ctl(ctl::CtlArgs),
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
        Some(Command::Ctl(args)) => ctl::run(args).map_err(Into::into),
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
