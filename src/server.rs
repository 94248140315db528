//! Binds the listeners, starts the front ends on one broker, and shuts everything down
//! on one signal: stop accepting, close client connections (AMQP gets 320
//! CONNECTION_FORCED), drain tasks, close the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::core::{Broker, CoreConfig, SeedUser, VhostPermissions};
use crate::store::{Store, StoreConfig};

/// A fatal start-up problem.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listen address could not be bound.
    #[error("cannot listen for {protocol} on {addr}: {source}")]
    Bind {
        /// Which listener.
        protocol: &'static str,
        /// Address asked for.
        addr: String,
        /// Cause (e.g. address in use).
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("cannot open the data directory: {0}")]
    Store(String),
    /// The upstream setting is unusable.
    #[error("invalid upstream: {0}")]
    Upstream(String),
}

pub use crate::http::Bound;

async fn bind(protocol: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            protocol,
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServerError::Bind {
        protocol,
        addr: addr.to_string(),
        source,
    })?;
    tracing::info!(protocol = %protocol, addr = %local, "listening");
    Ok(listener)
}

/// Physical memory of the machine, in bytes.
pub fn physical_memory() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (page, pages) = unsafe {
        (
            libc::sysconf(libc::_SC_PAGESIZE),
            libc::sysconf(libc::_SC_PHYS_PAGES),
        )
    };
    (page.max(0) as u64).saturating_mul(pages.max(0) as u64)
}

fn core_config(config: &Config) -> CoreConfig {
    let permissions = if config.permissions.is_empty() {
        config
            .users
            .iter()
            .flat_map(|u| {
                config
                    .vhosts
                    .iter()
                    .map(|v| crate::core::access::full_permissions(&u.name, v))
            })
            .collect()
    } else {
        config
            .permissions
            .iter()
            .map(|p| VhostPermissions {
                user: p.user.clone(),
                vhost: p.vhost.clone(),
                configure: p.configure.clone(),
                write: p.write.clone(),
                read: p.read.clone(),
            })
            .collect()
    };
    // RabbitMQ's `loopback_users` when given, else each `[[users]]` entry's own
    // `loopback_only` (how configs written before `loopback_users` said it).
    let loopback_users = config.loopback_users.clone().unwrap_or_else(|| {
        config
            .users
            .iter()
            .filter(|u| u.loopback_only)
            .map(|u| u.name.clone())
            .collect()
    });
    CoreConfig {
        memory_high_watermark: config.memory_high_watermark.bytes(physical_memory()),
        limits: config.limits(),
        vhosts: config.vhosts.clone(),
        users: config
            .users
            .iter()
            .map(|u| SeedUser {
                name: u.name.clone(),
                password: u.password.clone(),
                tags: u.tags.clone(),
            })
            .collect(),
        permissions,
        loopback_users,
        queue_window: queue_window(config),
    }
}

/// Runs the broker until `shutdown` is cancelled. `on_bound` is called once every
/// listener is up (tests use it to learn the ports).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_bound: impl FnOnce(Bound),
) -> Result<(), ServerError> {
    let upstream = upstream_gateway(&config)?;
    let (broker, store) = match upstream {
        // A stateless gateway: no data directory, no local queues for memcache.
        Some(_) => (Broker::with_store(core_config(&config), None, 1), None),
        None => open_broker(&config)?,
    };
    // Vhosts change at runtime, so a memcache vhost that is missing now may be added
    // later (`qgate ctl add_vhost`); until then memcache clients are told why.
    if upstream.is_none() && broker.vhost(&config.memcache.vhost).is_none() {
        tracing::warn!(
            vhost = ?config.memcache.vhost,
            "the memcache vhost does not exist: memcache clients are refused until it is added"
        );
    }
    // Upstream mode: AMQP clients talk to the cluster itself, so the listener is off
    // (its address reads as port 0).
    let amqp = match upstream {
        Some(_) => None,
        None => Some(bind("amqp", config.amqp.listen).await?),
    };
    let memcache = bind("memcache", config.memcache.listen).await?;
    let http = bind("http", config.http.listen).await?;
    let cookie = crate::management::prepare_cookie(&config);
    let management = bind("management", config.management.listen).await?;
    let bound = Bound {
        amqp: amqp
            .as_ref()
            .map(|l| l.local_addr().expect("bound"))
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        memcache: memcache.local_addr().expect("bound"),
        http: http.local_addr().expect("bound"),
        management: management.local_addr().expect("bound"),
    };
    on_bound(bound);
    let tracker = TaskTracker::new();
    // The front ends of this build, so that their series are served from the first
    // scrape (the AMQP one too when its listener is off).
    for protocol in [crate::amqp::PROTOCOL, crate::memcache::stats::PROTOCOL] {
        broker.counters().lifecycle.register(protocol);
    }

    // The memory alarm is re-evaluated a few times a second.
    {
        let (broker, shutdown) = (broker.clone(), shutdown.clone());
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tokio::select! {
                    _ = tick.tick() => broker.check_memory(),
                    _ = shutdown.cancelled() => break,
                }
            }
        });
    }

    // The disk alarm checks the data directory's free space, sooner when near the limit.
    {
        let limit = config.disk_free_limit.bytes(physical_memory());
        broker.flow().disk().set_limit(limit);
        let (broker, dir, shutdown) = (
            broker.clone(),
            config.storage.data_dir.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            loop {
                let wait = match crate::core::disk_alarm::free_bytes(&dir) {
                    Ok(free) => {
                        broker.flow().update_disk(free);
                        broker.flow().disk().next_interval()
                    }
                    // Keeps the last state; retried at the longest interval, not spammed.
                    Err(e) => {
                        tracing::warn!(error = %e, dir = %dir.display(), "disk free space check failed");
                        Duration::from_secs(10)
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        });
    }

    if let Some(gw) = &upstream {
        tracker.spawn(gw.clone().run(shutdown.clone()));
    }
    let config = Arc::new(config);
    if let Some(amqp) = amqp {
        let (broker, config, shutdown) = (broker.clone(), config.clone(), shutdown.clone());
        let (max, timeout) = (config.amqp.connection_max, config.amqp.handshake_timeout);
        tracker.spawn(accept_loop(
            amqp,
            shutdown.clone(),
            tracker.clone(),
            move |stream, peer| {
                crate::amqp::serve_connection(
                    stream,
                    peer,
                    broker.clone(),
                    config.clone(),
                    shutdown.clone(),
                )
            },
            ConnectionMax::new(max, move |stream| {
                crate::amqp::refuse_connection(stream, max, timeout)
            }),
        ));
    }
    {
        let (broker, config, shutdown) = (broker.clone(), config.clone(), shutdown.clone());
        let max = config.memcache.connection_max;
        let upstream = upstream.clone();
        tracker.spawn(accept_loop(
            memcache,
            shutdown.clone(),
            tracker.clone(),
            move |stream, peer| {
                crate::memcache::serve_connection(
                    stream,
                    peer,
                    broker.clone(),
                    config.clone(),
                    shutdown.clone(),
                    upstream.clone(),
                )
            },
            ConnectionMax::new(max, crate::memcache::refuse_connection),
        ));
    }
    let mut metrics = crate::http::metrics::Metrics::new(
        broker.clone(),
        &config.http.metrics_prefix,
        &config.storage.data_dir,
        &crate::http::node_name(),
    );
    metrics.register(crate::memcache::stats::counters());
    tracker.spawn(crate::http::routes::serve(
        http,
        metrics,
        shutdown.clone(),
        tracker.clone(),
    ));
    tracker.spawn(crate::management::serve(
        management,
        broker.clone(),
        config.clone(),
        bound,
        cookie,
        shutdown.clone(),
        tracker.clone(),
    ));
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within 10 s");
    }
    if let Some(gw) = &upstream {
        gw.close().await;
    }
    broker.stop_timers().await;
    drop(broker);
    close_store(store);
    tracing::info!("stopped");
    Ok(())
}

/// A listener's `connection_max` and how it refuses a client over it.
struct ConnectionMax<R> {
    /// 0 = no limit.
    max: u32,
    open: Arc<std::sync::atomic::AtomicU32>,
    refuse: R,
}

impl<R> ConnectionMax<R> {
    fn new(max: u32, refuse: R) -> Self {
        Self {
            max,
            open: Arc::default(),
            refuse,
        }
    }
}

/// Counts a connection as open until its task ends.
struct OpenGuard(Arc<std::sync::atomic::AtomicU32>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Accepts clients until `shutdown`, one tracked task per connection made by `serve`;
/// past `limit.max` open connections, a client is handed to `limit.refuse` instead.
async fn accept_loop<F, Fut, R, RFut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    serve: F,
    limit: ConnectionMax<R>,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
    R: Fn(TcpStream) -> RFut,
    RFut: std::future::Future<Output = ()> + Send + 'static,
{
    use std::sync::atomic::Ordering;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let open = limit.open.fetch_add(1, Ordering::AcqRel);
                    let guard = OpenGuard(limit.open.clone());
                    if limit.max != 0 && open >= limit.max {
                        tracing::warn!(peer = %peer, limit = limit.max, "connection refused: connection_max reached");
                        drop(guard);
                        tracker.spawn((limit.refuse)(stream));
                        continue;
                    }
                    let conn = serve(stream, peer);
                    tracker.spawn(async move {
                        conn.await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.cancelled() => break,
        }
    }
}

/// The upstream gateway when `[upstream] url` is set.
fn upstream_gateway(config: &Config) -> Result<Option<crate::upstream::Gateway>, ServerError> {
    if !config.upstream.enabled() {
        return Ok(None);
    }
    let gw = crate::upstream::Gateway::new(&config.upstream).map_err(ServerError::Upstream)?;
    let nodes = config.upstream.node_urls().map_err(ServerError::Upstream)?;
    tracing::info!(
        nodes = nodes.len(),
        queue_type = %config.upstream.queue_type,
        "upstream mode: memcache queues live in the cluster; the AMQP listener is off"
    );
    Ok(Some(gw))
}

/// How much of each queue stays in memory (`None`: queues never page).
fn queue_window(config: &Config) -> Option<crate::store::Window> {
    let bytes = match config.queue_window_bytes {
        0 => u64::MAX,
        b => b,
    };
    (config.queue_window > 0).then_some(crate::store::Window {
        messages: config.queue_window,
        bytes,
    })
}

fn open_broker(config: &Config) -> Result<(Broker, Option<Store>), ServerError> {
    let mut store_config = StoreConfig::new(&config.storage.data_dir);
    store_config.fsync = config.storage.fsync;
    store_config.window = queue_window(config);
    let (store, recovered) = Store::open(store_config)
        .map_err(|e| ServerError::Store(format!("{}: {e}", config.storage.data_dir.display())))?;
    let broker = Broker::with_store(
        core_config(config),
        Some(store.clone()),
        store.max_msg_id() + 1,
    );
    broker.restore(recovered);
    release_free_memory();
    Ok((broker, Some(store)))
}

/// Recovery allocates and frees a lot (the store's recovered list, decoding buffers);
/// give the freed memory back to the OS so the broker's RSS reflects what it keeps.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn close_store(store: Option<Store>) {
    if let Some(store) = store {
        if let Err(e) = store.close() {
            tracing::error!(error = %e, "closing the store failed");
        }
    }
}
