//! `qgate-bench`: the project's load generator.
//!
//! - `qgate-bench amqp ...` producers and consumers through lapin (a real AMQP client);
//! - `qgate-bench memcache ...` setters and getters over raw sockets (memcacheq queues,
//!   or with `--memcached` plain memcached keys, the ceiling for the text protocol);
//! - `qgate-bench idle ...` holds N idle AMQP connections (memory per connection);
//! - `qgate-bench deep fill|drain|live|delete ...` the deep-queue benchmark's phases
//!   (confirmed persistent fills, drains that check every message's sequence).
//!
//! Every mode prints human lines, then one machine-readable `RESULT key=value ...` line.
//! A server that cannot be reached is an error: message on stderr, exit status 2. A run
//! that counted errors exits 1.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod amqp;
mod common;
mod deep;
mod hist;
mod idle;
mod memcache;
mod raw;

#[derive(Parser, Debug)]
#[command(
    name = "qgate-bench",
    version,
    about = "Load generator for qgate, RabbitMQ and memcached (AMQP and memcache text protocol)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    /// Runtime worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Producers and consumers over AMQP 0-9-1.
    Amqp(amqp::AmqpArgs),
    /// Setters and getters over the memcache text protocol.
    Memcache(memcache::MemcacheArgs),
    /// Open and hold idle AMQP connections.
    Idle(idle::IdleArgs),
    /// Deep queues: fill with confirms, drain checking order, both at once, or delete.
    Deep(deep::DeepArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qgate-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async move {
        match cli.mode {
            Mode::Amqp(a) => amqp::run(a).await,
            Mode::Memcache(a) => memcache::run(a).await,
            Mode::Idle(a) => idle::run(a).await,
            Mode::Deep(a) => deep::run(a).await,
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("qgate-bench: the run counted errors");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("qgate-bench: error: {e}");
            ExitCode::from(2)
        }
    }
}
