//! Configuration: one struct per section, embedded defaults, then a TOML file
//! (`--config`), then environment (`QGATE_<NAME>`), then flags, in rising priority.
//!
//! Every setting a flag can set is declared once, in [`FLAGS`]: its TOML key, its flag
//! (the variable is `QGATE_` and the flag's name), its help and how its text becomes
//! the typed field. The binary derives its command line from that table (clap stays
//! out of this library) and hands the given values to [`Config::load`], which reads
//! each winning value into its type once: listen addresses are [`SocketAddr`]s, the
//! fsync policy a [`FsyncPolicy`], the memory watermark and the disk free limit
//! [`MemoryWatermark`] and [`DiskFreeLimit`], timeouts [`Duration`]s, so nothing
//! downstream parses a string again. A bad value is refused by its name, whichever
//! layer gave it (`invalid setting storage.fsync (--fsync, QGATE_FSYNC): ...`).
//!
//! A leaf: this module imports nothing of the broker; the store and the core take the
//! types defined here.

use std::ffi::OsStr;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default AMQP listen address (RabbitMQ's port).
pub const DEFAULT_AMQP_LISTEN: &str = "0.0.0.0:5672";
/// Default memcache listen address (memcacheq's port; loopback: the protocol has no auth).
pub const DEFAULT_MEMCACHE_LISTEN: &str = "127.0.0.1:22201";
/// Default HTTP listen address (rabbitmq_prometheus's port).
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:15692";
/// Default management listen address (the RabbitMQ management plugin's port; loopback
/// by default as the console and API are for operators on this machine).
pub const DEFAULT_MANAGEMENT_LISTEN: &str = "127.0.0.1:15672";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./qgate-data";
/// Default heartbeat proposed to AMQP clients, in seconds (RabbitMQ's).
pub const DEFAULT_HEARTBEAT: u16 = 60;
/// Default frame_max proposed to AMQP clients (RabbitMQ's).
pub const DEFAULT_FRAME_MAX: u32 = 131_072;
/// Default channel_max (RabbitMQ's).
pub const DEFAULT_CHANNEL_MAX: u16 = 2047;
/// Default largest AMQP message body (RabbitMQ's max_message_size).
pub const DEFAULT_MAX_MESSAGE: u64 = 128 * 1024 * 1024;
/// Default memory high watermark: RabbitMQ's, 40% of physical memory.
pub const DEFAULT_MEMORY_HIGH_WATERMARK: MemoryWatermark = MemoryWatermark::Fraction(0.4);
/// RabbitMQ's default `disk_free_limit.absolute` (3.10): 50 MB.
pub const DEFAULT_DISK_FREE_LIMIT: DiskFreeLimit = DiskFreeLimit::Bytes(50_000_000);
/// Default largest memcache data block.
pub const DEFAULT_MEMCACHE_MAX_MESSAGE: usize = 1024 * 1024;
/// Default AMQP connection limit: none (RabbitMQ's `connection_max = infinity`).
pub const DEFAULT_AMQP_CONNECTION_MAX: u32 = 0;
/// Default memcache connection limit (memcached's `-c 1024`).
pub const DEFAULT_MEMCACHE_CONNECTION_MAX: u32 = 1024;
/// Default time a client has to finish the AMQP handshake (RabbitMQ's
/// `handshake_timeout`, 10 s).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(10_000);
/// Longest memcache command line (memcached's 2048; the parser's `DEFAULT_MAX_LINE`,
/// which a test keeps equal: config sits below the front ends and cannot import it).
pub const MEMCACHE_MAX_LINE: u64 = 2048;
/// Largest `max_message_size` RabbitMQ accepts (512 MiB).
pub const MAX_MAX_MESSAGE: u64 = 512 * 1024 * 1024;

/// Ready messages a queue keeps in memory before it pages (RabbitMQ's classic queues
/// keep a few thousand too).
pub const DEFAULT_QUEUE_WINDOW: usize = 8192;
/// Bytes of ready messages a queue keeps in memory before it pages: 32 MiB.
pub const DEFAULT_QUEUE_WINDOW_BYTES: u64 = 32 << 20;

/// All settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Log filter (`info`, `debug`, `qgate=trace`, ...).
    pub log: String,
    /// AMQP listener.
    pub amqp: AmqpConfig,
    /// memcache listener.
    pub memcache: MemcacheConfig,
    /// HTTP listener (metrics, health, admin API).
    pub http: HttpConfig,
    /// Durability.
    pub storage: StorageConfig,
    /// Users a fresh data directory starts with (`[[users]]`).
    pub users: Vec<UserConfig>,
    /// Virtual hosts a fresh data directory starts with.
    pub vhosts: Vec<String>,
    /// Permissions a fresh data directory starts with (`[[permissions]]`). When none
    /// are given, every configured user gets full permissions on every configured vhost
    /// (what configs written before qgate had permissions meant).
    pub permissions: Vec<PermissionConfig>,
    /// Users who may log in only from loopback addresses (RabbitMQ's `loopback_users`;
    /// `[]` lets every user in from anywhere). When not given, the `[[users]]` with
    /// `loopback_only = true` (by default: `guest`).
    pub loopback_users: Option<Vec<String>>,
    /// Management listener (HTTP API and web console).
    pub management: ManagementConfig,
    /// Memory the queued messages may hold before publishers are blocked: a fraction of
    /// physical memory (`0.4`, RabbitMQ's default), a number of bytes (`536870912`), or
    /// `0` for no limit.
    #[serde(with = "text")]
    pub memory_high_watermark: MemoryWatermark,
    /// Free space the data directory's file system must keep, or publishers are blocked:
    /// RabbitMQ's `disk_free_limit` (`50MB`, its default; `1GB`, `2GiB`, a byte count,
    /// `mem_relative:1.0` for a multiple of physical memory, or `0` for no disk alarm).
    #[serde(with = "text")]
    pub disk_free_limit: DiskFreeLimit,
    /// Ready messages a queue keeps in memory; beyond them new messages are paged to
    /// the store and read back in order as the queue drains (`0`: never page).
    pub queue_window: usize,
    /// Bytes of ready messages a queue keeps in memory, the same way (`0`: no byte
    /// bound, only `queue_window`).
    pub queue_window_bytes: u64,
    /// Upstream mode: the memcache listener's queues live in a RabbitMQ cluster.
    pub upstream: UpstreamConfig,
}

/// Default queue type the gateway declares upstream (replicated, fails over).
pub const DEFAULT_UPSTREAM_QUEUE_TYPE: &str = "quorum";
/// Default number of AMQP connections to the cluster.
pub const DEFAULT_UPSTREAM_POOL: usize = 3;
/// Default wait for a publisher confirm before the publish is retried.
pub const DEFAULT_UPSTREAM_CONFIRM_TIMEOUT: Duration = Duration::from_millis(5000);
/// Default attempts per `set` (first publish + retries) before `SERVER_ERROR`.
pub const DEFAULT_UPSTREAM_PUBLISH_ATTEMPTS: u32 = 5;

/// `[upstream]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `amqp://user:pass@host1:5672,host2:5672/vhost`; empty = local mode.
    pub url: String,
    /// `quorum` or `classic`: the `x-queue-type` of queues the gateway declares.
    pub queue_type: String,
    /// AMQP connections to the cluster, spread over the listed nodes.
    pub pool: usize,
    /// Wait for a publisher confirm before retrying on a fresh channel (TOML:
    /// `confirm_timeout_ms`, milliseconds).
    #[serde(rename = "confirm_timeout_ms", with = "millis")]
    pub confirm_timeout: Duration,
    /// Attempts per `set` before answering `SERVER_ERROR`.
    pub publish_attempts: u32,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            queue_type: DEFAULT_UPSTREAM_QUEUE_TYPE.into(),
            pool: DEFAULT_UPSTREAM_POOL,
            confirm_timeout: DEFAULT_UPSTREAM_CONFIRM_TIMEOUT,
            publish_attempts: DEFAULT_UPSTREAM_PUBLISH_ATTEMPTS,
        }
    }
}

impl UpstreamConfig {
    /// Upstream mode is on.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// One single-host AMQP URL per listed node, in order: `amqp://u:p@h1:1,h2:2/v?x`
    /// gives `amqp://u:p@h1:1/v?x` and `amqp://u:p@h2:2/v?x`. A host without a port
    /// gets 5672 (amqps: 5671).
    pub fn node_urls(&self) -> Result<Vec<String>, String> {
        let url = self.url.trim();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("'{url}' is not an amqp:// URL"))?;
        let default_port = match scheme {
            "amqp" => 5672,
            "amqps" => 5671,
            _ => return Err(format!("'{url}': the scheme must be amqp or amqps")),
        };
        let (authority, tail) = match rest.find(['/', '?']) {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), authority),
        };
        let mut out = Vec::new();
        for host in hosts.split(',') {
            let host = host.trim();
            if host.is_empty() {
                return Err(format!("'{url}': empty host in the host list"));
            }
            let hostport = match host.rsplit_once(':') {
                Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => host.to_owned(),
                Some(_) => return Err(format!("'{url}': bad host:port '{host}'")),
                None => format!("{host}:{default_port}"),
            };
            out.push(format!("{scheme}://{userinfo}{hostport}{tail}"));
        }
        Ok(out)
    }
}

/// `[amqp]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    /// Listen address.
    #[serde(with = "text")]
    pub listen: SocketAddr,
    /// Heartbeat proposed in connection.tune, seconds (0 disables).
    pub heartbeat: u16,
    /// frame_max proposed in connection.tune.
    pub frame_max: u32,
    /// channel_max proposed in connection.tune.
    pub channel_max: u16,
    /// Largest message body accepted.
    pub max_message: u64,
    /// Most client connections open at once (0 = no limit; RabbitMQ's `connection_max`).
    pub connection_max: u32,
    /// Time a client has from TCP accept to connection.open (RabbitMQ's
    /// `handshake_timeout`; TOML: milliseconds).
    #[serde(with = "millis")]
    pub handshake_timeout: Duration,
}

/// `[memcache]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MemcacheConfig {
    /// Listen address.
    #[serde(with = "text")]
    pub listen: SocketAddr,
    /// Largest data block accepted by `set`.
    pub max_message: usize,
    /// Vhost the memcache queues live in.
    pub vhost: String,
    /// Most client connections open at once (0 = no limit; memcached's `-c`).
    pub connection_max: u32,
    /// Time a connection may stay silent before it is closed (zero = never; memcached's
    /// `-o idle_timeout`; TOML: seconds).
    #[serde(with = "seconds")]
    pub idle_timeout: Duration,
    /// User whose permissions govern memcache commands (the protocol has no login).
    pub user: String,
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    #[serde(with = "text")]
    pub listen: SocketAddr,
    /// Metric name prefix (`rabbitmq` makes RabbitMQ dashboards work unchanged).
    pub metrics_prefix: String,
}

/// `[management]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Listen address.
    #[serde(with = "text")]
    pub listen: SocketAddr,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_MANAGEMENT_LISTEN),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Data directory.
    pub data_dir: PathBuf,
    /// `always`, `interval:<ms>` or `never`.
    #[serde(with = "text")]
    pub fsync: FsyncPolicy,
}

/// The limits in force, gathered from the sections above (0 = none where a limit may
/// be off). The broker holds a copy ([`crate::core::Broker::limits`]); /metrics shows
/// them as `<prefix>_limit{limit="<name>"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// AMQP connections open at once (0 = no limit).
    pub amqp_connection_max: u32,
    /// memcache connections open at once (0 = no limit).
    pub memcache_connection_max: u32,
    /// channel_max proposed in connection.tune.
    pub channel_max: u16,
    /// frame_max proposed in connection.tune (0 = none).
    pub frame_max: u32,
    /// Largest AMQP message body.
    pub max_message_size: u64,
    /// Time from accept to connection.open, ms.
    pub handshake_timeout_ms: u64,
    /// Largest memcache data block.
    pub memcache_max_message: u64,
    /// Longest memcache command line.
    pub memcache_max_line: u64,
    /// memcache idle timeout, s (0 = none).
    pub memcache_idle_timeout_s: u64,
    /// Deepest nesting of field tables and arrays accepted (headers, arguments).
    pub table_max_depth: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Config::default().limits()
    }
}

impl Limits {
    /// `(name, value)` of every limit, as /metrics and status show them.
    pub fn entries(&self) -> [(&'static str, u64); 10] {
        [
            ("amqp_connection_max", self.amqp_connection_max as u64),
            (
                "memcache_connection_max",
                self.memcache_connection_max as u64,
            ),
            ("channel_max", self.channel_max as u64),
            ("frame_max", self.frame_max as u64),
            ("max_message_size", self.max_message_size),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("memcache_max_message", self.memcache_max_message),
            ("memcache_max_line", self.memcache_max_line),
            (
                "memcache_idle_timeout_seconds",
                self.memcache_idle_timeout_s,
            ),
            ("table_max_depth", self.table_max_depth),
        ]
    }
}

/// `[[users]]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name.
    pub name: String,
    /// Password.
    pub password: String,
    /// Accept only from loopback addresses.
    #[serde(default)]
    pub loopback_only: bool,
    /// Tags (`administrator`, `monitoring`, `management`).
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `[[permissions]]`: one user's three regexps in one vhost.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PermissionConfig {
    /// User.
    pub user: String,
    /// Vhost.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// Configure regexp.
    pub configure: String,
    /// Write regexp.
    pub write: String,
    /// Read regexp.
    pub read: String,
}

fn default_vhost() -> String {
    "/".into()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            log: "info".into(),
            amqp: AmqpConfig::default(),
            memcache: MemcacheConfig::default(),
            http: HttpConfig::default(),
            storage: StorageConfig::default(),
            users: vec![UserConfig {
                name: "guest".into(),
                password: "guest".into(),
                loopback_only: true,
                tags: vec!["administrator".into()],
            }],
            vhosts: vec!["/".into()],
            permissions: Vec::new(),
            loopback_users: None,
            memory_high_watermark: DEFAULT_MEMORY_HIGH_WATERMARK,
            disk_free_limit: DEFAULT_DISK_FREE_LIMIT,
            queue_window: DEFAULT_QUEUE_WINDOW,
            queue_window_bytes: DEFAULT_QUEUE_WINDOW_BYTES,
            upstream: UpstreamConfig::default(),
            management: ManagementConfig::default(),
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_AMQP_LISTEN),
            heartbeat: DEFAULT_HEARTBEAT,
            frame_max: DEFAULT_FRAME_MAX,
            channel_max: DEFAULT_CHANNEL_MAX,
            max_message: DEFAULT_MAX_MESSAGE,
            connection_max: DEFAULT_AMQP_CONNECTION_MAX,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

impl Default for MemcacheConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_MEMCACHE_LISTEN),
            max_message: DEFAULT_MEMCACHE_MAX_MESSAGE,
            vhost: "/".into(),
            connection_max: DEFAULT_MEMCACHE_CONNECTION_MAX,
            idle_timeout: Duration::ZERO,
            user: "guest".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: addr(DEFAULT_HTTP_LISTEN),
            metrics_prefix: "qgate".into(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: DEFAULT_DATA_DIR.into(),
            fsync: FsyncPolicy::Always,
        }
    }
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        source: toml::de::Error,
    },
    /// A value is out of range. The message names the setting as the file spells it,
    /// and its flag and environment variable where it has them.
    #[error("invalid setting {}: {reason}", setting_label(name))]
    Invalid {
        /// Setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
}

/// The settings whose errors name their flag and variable too (the others, such as
/// `amqp.frame_max`, are named by their TOML key alone, as they always were).
const LABELLED: [&str; 12] = [
    "amqp.listen",
    "memcache.listen",
    "http.listen",
    "storage.data_dir",
    "storage.fsync",
    "log",
    "memcache.max_message",
    "memcache.vhost",
    "http.metrics_prefix",
    "amqp.heartbeat",
    "memory_high_watermark",
    "disk_free_limit",
];

/// `amqp.listen (--amqp-listen, QGATE_AMQP_LISTEN)`: a setting's TOML key, then the
/// flag and environment variable that override it, when there are.
pub fn setting_label(name: &str) -> String {
    match FLAGS.iter().find(|f| f.key == name) {
        Some(f) if LABELLED.contains(&name) => format!("{name} (--{}, {})", f.flag, f.env()),
        _ => name.to_owned(),
    }
}

impl Config {
    /// The configuration: the defaults, then the TOML `file`, then `given` (each
    /// setting's value from its variable or flag, the flag winning, as the command line
    /// resolved them), each winning value read into its type here, once; then
    /// [`Config::validate`]. A file value that a flag or variable overrides is not
    /// read, as it never counted.
    pub fn load(file: Option<&Path>, given: &[(&Flag, &OsStr)]) -> Result<Self, ConfigError> {
        let overridden = |key: &str| given.iter().any(|(f, _)| f.key == key);
        let mut config = match file {
            Some(path) => Self::from_file(path, overridden)?,
            None => Config::default(),
        };
        for (flag, value) in given {
            flag.set(&mut config, value)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Reads a TOML file over the defaults, leaving out the keys `skip` says are
    /// overridden; a flag's key with a bad value is refused by its name (with its flag
    /// and variable), as the same value given by flag would be.
    fn from_file(path: &Path, skip: impl Fn(&str) -> bool) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let parse = |source| ConfigError::Parse {
            path: path.into(),
            source,
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(parse)?;
        for flag in FLAGS {
            let (section, key) = match flag.key.split_once('.') {
                Some((section, key)) => {
                    (table.get_mut(section).and_then(|v| v.as_table_mut()), key)
                }
                None => (Some(&mut table), flag.key),
            };
            let Some(section) = section else { continue };
            if skip(flag.key) {
                section.remove(key);
            } else if let (FlagValue::Text, Some(toml::Value::String(v))) =
                (flag.value, section.get(key))
            {
                flag.set(&mut Config::default(), OsStr::new(v))?;
            }
        }
        toml::Value::Table(table).try_into().map_err(|e| {
            // The same error read from the text carries its line and column.
            parse(toml::from_str::<Config>(&text).err().unwrap_or(e))
        })
    }

    /// Every limit a client runs into, in one place (README "Limits and hardening").
    pub fn limits(&self) -> Limits {
        Limits {
            amqp_connection_max: self.amqp.connection_max,
            memcache_connection_max: self.memcache.connection_max,
            channel_max: self.amqp.channel_max,
            frame_max: self.amqp.frame_max,
            max_message_size: self.amqp.max_message,
            handshake_timeout_ms: self.amqp.handshake_timeout.as_millis() as u64,
            memcache_max_message: self.memcache.max_message as u64,
            memcache_max_line: MEMCACHE_MAX_LINE,
            memcache_idle_timeout_s: self.memcache.idle_timeout.as_secs(),
            table_max_depth: crate::content::value::MAX_DEPTH as u64,
        }
    }

    /// Checks ranges and formats; kept apart from the structs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.amqp.frame_max != 0 && self.amqp.frame_max < 4096 {
            return Err(ConfigError::Invalid {
                name: "amqp.frame_max",
                reason: "must be 0 or at least 4096".into(),
            });
        }
        if self.amqp.max_message == 0 || self.amqp.max_message > MAX_MAX_MESSAGE {
            return Err(ConfigError::Invalid {
                name: "amqp.max_message",
                reason: format!(
                    "must be between 1 and {MAX_MAX_MESSAGE} (512 MiB, RabbitMQ's cap)"
                ),
            });
        }
        if self.amqp.handshake_timeout.is_zero() {
            return Err(ConfigError::Invalid {
                name: "amqp.handshake_timeout",
                reason: "must be positive (milliseconds)".into(),
            });
        }
        if self.memcache.max_message == 0 {
            return Err(ConfigError::Invalid {
                name: "memcache.max_message",
                reason: "must be positive".into(),
            });
        }
        // memcache.vhost is not checked against `vhosts`: those only seed a fresh data
        // directory, and the vhost may have been added at runtime since.
        if self.upstream.enabled() {
            self.upstream
                .node_urls()
                .map_err(|reason| ConfigError::Invalid {
                    name: "upstream.url",
                    reason,
                })?;
            if !["quorum", "classic"].contains(&self.upstream.queue_type.as_str()) {
                return Err(ConfigError::Invalid {
                    name: "upstream.queue_type",
                    reason: format!(
                        "'{}' is neither quorum nor classic",
                        self.upstream.queue_type
                    ),
                });
            }
            if self.upstream.pool == 0 || self.upstream.publish_attempts == 0 {
                return Err(ConfigError::Invalid {
                    name: "upstream.pool",
                    reason: "pool and publish_attempts must be positive".into(),
                });
            }
        }
        let name = &self.http.metrics_prefix;
        if name.is_empty()
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(ConfigError::Invalid {
                name: "http.metrics_prefix",
                reason: format!("'{name}' is not a valid metric name prefix"),
            });
        }
        Ok(())
    }
}

/// `"127.0.0.1:5672"` as an address (the defaults above are literals known to parse).
fn addr(text: &str) -> SocketAddr {
    text.parse().expect("a default listen address")
}

/// When the store calls `fdatasync`, and what a durability ticket waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every ticket completes only after the fsync covering its record returned
    /// (group commit: one fsync for everything pending).
    Always,
    /// Tickets complete once the record is written to the OS; the log is fsynced at
    /// most once per interval (and on close).
    Interval(Duration),
    /// Tickets complete once written to the OS; fsync only on close.
    Never,
}

impl FromStr for FsyncPolicy {
    /// Why the text is not a policy, quoting it.
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => other
                .strip_prefix("interval:")
                .and_then(|ms| ms.trim().trim_end_matches("ms").parse::<u64>().ok())
                .filter(|ms| *ms > 0)
                .map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms)))
                .ok_or_else(|| {
                    format!(
                        "'{text}' is not a fsync policy: expected always, never or \
                         interval:<ms> (e.g. interval:100)"
                    )
                }),
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}", d.as_millis()),
        }
    }
}

/// Memory the queued messages may hold before publishers are blocked (RabbitMQ's
/// `vm_memory_high_watermark`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MemoryWatermark {
    /// A fraction of physical memory, 0 to 1 (`0.4`).
    Fraction(f64),
    /// A number of bytes; 0 = no limit.
    Bytes(u64),
}

impl MemoryWatermark {
    /// The watermark in bytes (0 = none) on a machine with `physical` bytes of memory.
    pub fn bytes(self, physical: u64) -> u64 {
        match self {
            MemoryWatermark::Fraction(f) => (physical as f64 * f) as u64,
            MemoryWatermark::Bytes(n) => n,
        }
    }
}

impl FromStr for MemoryWatermark {
    /// Why the text is not a watermark, quoting it.
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let v = text.trim();
        if let Ok(bytes) = v.parse::<u64>() {
            return Ok(MemoryWatermark::Bytes(bytes));
        }
        match v.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok(MemoryWatermark::Fraction(f)),
            _ => Err(format!(
                "'{v}' is neither a fraction of memory (0.4) nor a byte count"
            )),
        }
    }
}

impl fmt::Display for MemoryWatermark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemoryWatermark::Fraction(x) => write!(f, "{x}"),
            MemoryWatermark::Bytes(n) => write!(f, "{n}"),
        }
    }
}

/// Free space the data directory's file system must keep, or publishers are blocked
/// (RabbitMQ's `disk_free_limit`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiskFreeLimit {
    /// A number of bytes; 0 = no disk alarm.
    Bytes(u64),
    /// That fraction, or multiple, of physical memory (`mem_relative:1.0`).
    MemRelative(f64),
}

impl DiskFreeLimit {
    /// The limit in bytes (0 = no disk alarm) on a machine with `physical` bytes of
    /// memory.
    pub fn bytes(self, physical: u64) -> u64 {
        match self {
            DiskFreeLimit::Bytes(n) => n,
            DiskFreeLimit::MemRelative(f) => (physical as f64 * f) as u64,
        }
    }
}

impl FromStr for DiskFreeLimit {
    /// Why the text is not a limit, quoting it.
    type Err = String;

    /// Parses a free-space limit the way RabbitMQ does: a byte count, a number with one
    /// of RabbitMQ's information units (`k`/`KiB`/`m`/`MiB`/`g`/`GiB` are powers of
    /// 1024, `kB`/`KB`/`MB`/`GB` powers of 1000), or `mem_relative:<f>`. `0` turns the
    /// alarm off.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let v = text.trim();
        if let Some(f) = v
            .strip_prefix("mem_relative:")
            .or_else(|| v.strip_prefix("mem_relative,"))
        {
            return match f.trim().parse::<f64>() {
                Ok(f) if f.is_finite() && f >= 0.0 => Ok(DiskFreeLimit::MemRelative(f)),
                _ => Err(format!(
                    "'{v}': mem_relative needs a non-negative number (e.g. mem_relative:1.0)"
                )),
            };
        }
        let digits = v.bytes().take_while(u8::is_ascii_digit).count();
        let (num, unit) = v.split_at(digits);
        let bad = || {
            format!(
                "'{v}' is neither a size (50MB, 1GB, 2GiB, bytes) nor mem_relative:<fraction of RAM>"
            )
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit {
            "" => 1,
            "k" | "K" | "kiB" | "KiB" | "KIB" | "kib" => 1 << 10,
            "m" | "M" | "MiB" | "MIB" | "mib" => 1 << 20,
            "g" | "G" | "GiB" | "GIB" | "gib" => 1 << 30,
            "KB" | "kB" | "kb" | "Kb" => 1_000,
            "MB" | "mB" | "mb" | "Mb" => 1_000_000,
            "GB" | "gB" | "gb" | "Gb" => 1_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(mult)
            .map(DiskFreeLimit::Bytes)
            .ok_or_else(bad)
    }
}

impl fmt::Display for DiskFreeLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskFreeLimit::Bytes(n) => write!(f, "{n}"),
            DiskFreeLimit::MemRelative(x) => write!(f, "mem_relative:{x}"),
        }
    }
}

/// Serde for a typed setting written as text in TOML (`listen = "0.0.0.0:5672"`,
/// `fsync = "always"`): its `FromStr` and `Display`.
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// Serde for a [`Duration`] written in TOML as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Serde for a [`Duration`] written in TOML as whole seconds.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

/// What a flag's value is, so that the command line can check numbers and paths
/// itself (`--heartbeat x` is refused by the argument parser, with its usual message,
/// before the configuration is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagValue {
    /// Text, read into its type by [`Config::load`].
    Text,
    /// A file system path (need not be UTF-8).
    Path,
    /// An unsigned 16-bit number.
    U16,
    /// An unsigned 32-bit number.
    U32,
    /// An unsigned 64-bit number.
    U64,
    /// An unsigned machine-word number.
    Usize,
}

/// One setting that a flag, an environment variable and a TOML key all set.
pub struct Flag {
    /// The TOML key, `section.name` (`amqp.listen`), as error messages name it.
    pub key: &'static str,
    /// The flag without its dashes (`amqp-listen`); the variable is [`Flag::env`].
    pub flag: &'static str,
    /// What the value is.
    pub value: FlagValue,
    /// One line of help, ending with the default.
    pub help: &'static str,
    /// Reads a value into the field, or says why it is not one.
    set: fn(&mut Config, &OsStr) -> Result<(), String>,
}

impl Flag {
    /// `QGATE_AMQP_LISTEN` for `amqp-listen`.
    pub fn env(&self) -> String {
        format!("QGATE_{}", self.flag.replace('-', "_").to_ascii_uppercase())
    }

    /// Sets the field from `value`; a bad value is refused by the setting's name.
    pub fn set(&self, config: &mut Config, value: &OsStr) -> Result<(), ConfigError> {
        (self.set)(config, value).map_err(|reason| ConfigError::Invalid {
            name: self.key,
            reason,
        })
    }
}

impl fmt::Debug for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "--{} ({})", self.flag, self.key)
    }
}

fn utf8(v: &OsStr) -> Result<&str, String> {
    v.to_str()
        .ok_or_else(|| format!("'{}' is not UTF-8", v.to_string_lossy()))
}

fn number<T: FromStr>(v: &OsStr) -> Result<T, String> {
    let v = utf8(v)?;
    v.parse()
        .map_err(|_| format!("'{v}' is not a number in range"))
}

fn listen(v: &OsStr) -> Result<SocketAddr, String> {
    let v = utf8(v)?;
    v.parse()
        .map_err(|e| format!("'{v}' is not an ip:port address ({e})"))
}

/// Every setting with a flag, in the order `qgate --help` lists them.
pub const FLAGS: &[Flag] = &[
    Flag {
        key: "amqp.listen",
        flag: "amqp-listen",
        value: FlagValue::Text,
        help: "AMQP listen address [default: 0.0.0.0:5672]",
        set: |c, v| {
            c.amqp.listen = listen(v)?;
            Ok(())
        },
    },
    Flag {
        key: "memcache.listen",
        flag: "memcache-listen",
        value: FlagValue::Text,
        help: "memcache listen address [default: 127.0.0.1:22201]",
        set: |c, v| {
            c.memcache.listen = listen(v)?;
            Ok(())
        },
    },
    Flag {
        key: "http.listen",
        flag: "http-listen",
        value: FlagValue::Text,
        help: "HTTP (metrics, health, admin API) listen address [default: 127.0.0.1:15692]",
        set: |c, v| {
            c.http.listen = listen(v)?;
            Ok(())
        },
    },
    Flag {
        key: "storage.data_dir",
        flag: "data-dir",
        value: FlagValue::Path,
        help: "Data directory [default: ./qgate-data]",
        set: |c, v| {
            c.storage.data_dir = v.into();
            Ok(())
        },
    },
    Flag {
        key: "storage.fsync",
        flag: "fsync",
        value: FlagValue::Text,
        help: "fsync policy: always | interval:<ms> | never [default: always]",
        set: |c, v| {
            c.storage.fsync = utf8(v)?.parse()?;
            Ok(())
        },
    },
    Flag {
        key: "log",
        flag: "log",
        value: FlagValue::Text,
        help: "Log filter, e.g. info, debug, qgate=trace [default: info]",
        set: |c, v| {
            c.log = utf8(v)?.to_owned();
            Ok(())
        },
    },
    Flag {
        key: "memcache.max_message",
        flag: "memcache-max-message",
        value: FlagValue::Usize,
        help: "Largest memcache data block in bytes [default: 1048576]",
        set: |c, v| {
            c.memcache.max_message = number(v)?;
            Ok(())
        },
    },
    Flag {
        key: "memcache.vhost",
        flag: "memcache-vhost",
        value: FlagValue::Text,
        help: "Vhost of the memcache queues [default: /]",
        set: |c, v| {
            c.memcache.vhost = utf8(v)?.to_owned();
            Ok(())
        },
    },
    Flag {
        key: "http.metrics_prefix",
        flag: "metrics-prefix",
        value: FlagValue::Text,
        help: "Prefix of metric names; `rabbitmq` for RabbitMQ dashboards [default: qgate]",
        set: |c, v| {
            c.http.metrics_prefix = utf8(v)?.to_owned();
            Ok(())
        },
    },
    Flag {
        key: "amqp.heartbeat",
        flag: "heartbeat",
        value: FlagValue::U16,
        help: "Heartbeat proposed to AMQP clients, seconds [default: 60]",
        set: |c, v| {
            c.amqp.heartbeat = number(v)?;
            Ok(())
        },
    },
    Flag {
        key: "memory_high_watermark",
        flag: "memory-high-watermark",
        value: FlagValue::Text,
        help: "Memory queued messages may hold before publishers are blocked: a fraction of \
               physical memory, a byte count, or 0 for none [default: 0.4]",
        set: |c, v| {
            c.memory_high_watermark = utf8(v)?.parse()?;
            Ok(())
        },
    },
    Flag {
        key: "amqp.connection_max",
        flag: "amqp-connection-max",
        value: FlagValue::U32,
        help: "Most AMQP connections open at once; 0 for none [default: 0]",
        set: |c, v| {
            c.amqp.connection_max = number(v)?;
            Ok(())
        },
    },
    Flag {
        key: "memcache.connection_max",
        flag: "memcache-connection-max",
        value: FlagValue::U32,
        help: "Most memcache connections open at once; 0 for none [default: 1024]",
        set: |c, v| {
            c.memcache.connection_max = number(v)?;
            Ok(())
        },
    },
    Flag {
        key: "amqp.channel_max",
        flag: "channel-max",
        value: FlagValue::U16,
        help: "channel_max proposed to AMQP clients [default: 2047]",
        set: |c, v| {
            c.amqp.channel_max = number(v)?;
            Ok(())
        },
    },
    Flag {
        key: "amqp.frame_max",
        flag: "frame-max",
        value: FlagValue::U32,
        help: "frame_max proposed to AMQP clients, bytes; 0 for none [default: 131072]",
        set: |c, v| {
            c.amqp.frame_max = number(v)?;
            Ok(())
        },
    },
    Flag {
        key: "amqp.max_message",
        flag: "max-message-size",
        value: FlagValue::U64,
        help: "Largest AMQP message body, bytes [default: 134217728]",
        set: |c, v| {
            c.amqp.max_message = number(v)?;
            Ok(())
        },
    },
    Flag {
        key: "amqp.handshake_timeout",
        flag: "handshake-timeout",
        value: FlagValue::U64,
        help: "Time an AMQP client has to open its connection, ms [default: 10000]",
        set: |c, v| {
            c.amqp.handshake_timeout = Duration::from_millis(number(v)?);
            Ok(())
        },
    },
    Flag {
        key: "memcache.idle_timeout",
        flag: "memcache-idle-timeout",
        value: FlagValue::U64,
        help: "Close memcache connections silent for this many seconds; 0 for never [default: 0]",
        set: |c, v| {
            c.memcache.idle_timeout = Duration::from_secs(number(v)?);
            Ok(())
        },
    },
    Flag {
        key: "disk_free_limit",
        flag: "disk-free-limit",
        value: FlagValue::Text,
        help: "Free disk space below which publishers are blocked (RabbitMQ's \
               disk_free_limit): 50MB, 1GB, 2GiB, bytes, mem_relative:<f>, or 0 for none \
               [default: 50MB]",
        set: |c, v| {
            c.disk_free_limit = utf8(v)?.parse()?;
            Ok(())
        },
    },
    Flag {
        key: "queue_window",
        flag: "queue-window",
        value: FlagValue::Usize,
        help: "Ready messages a queue keeps in memory; the rest is paged to disk and read \
               back in order as it drains; 0 to never page [default: 8192]",
        set: |c, v| {
            c.queue_window = number(v)?;
            Ok(())
        },
    },
    Flag {
        key: "queue_window_bytes",
        flag: "queue-window-bytes",
        value: FlagValue::U64,
        help: "Bytes of ready messages a queue keeps in memory before it pages; 0 for no \
               byte bound [default: 33554432]",
        set: |c, v| {
            c.queue_window_bytes = number(v)?;
            Ok(())
        },
    },
    Flag {
        key: "upstream.url",
        flag: "upstream",
        value: FlagValue::Text,
        help: "Upstream mode: serve the memcache listener from a RabbitMQ cluster, \
               amqp://user:pass@host1:5672,host2:5672/vhost (the AMQP listener is off)",
        set: |c, v| {
            c.upstream.url = utf8(v)?.to_owned();
            Ok(())
        },
    },
    Flag {
        key: "loopback_users",
        flag: "loopback-users",
        value: FlagValue::Text,
        help: "Users who may log in only from loopback addresses, comma-separated; \"\" lets \
               every user in from anywhere (RabbitMQ's loopback_users) [default: guest]",
        set: |c, v| {
            let users = utf8(v)?.split(',').map(str::trim).filter(|s| !s.is_empty());
            c.loopback_users = Some(users.map(str::to_owned).collect());
            Ok(())
        },
    },
    Flag {
        key: "memcache.user",
        flag: "memcache-user",
        value: FlagValue::Text,
        help: "User whose permissions govern memcache commands [default: guest]",
        set: |c, v| {
            c.memcache.user = utf8(v)?.to_owned();
            Ok(())
        },
    },
    Flag {
        key: "management.listen",
        flag: "management-listen",
        value: FlagValue::Text,
        help: "Management (HTTP API, web console) listen address [default: 127.0.0.1:15672]",
        set: |c, v| {
            c.management.listen = listen(v)?;
            Ok(())
        },
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(name: &str) -> &'static Flag {
        FLAGS.iter().find(|f| f.flag == name).expect(name)
    }

    /// A TOML file of its own, removed on drop.
    struct File(PathBuf);

    impl File {
        fn new(tag: &str, text: &str) -> File {
            let p = std::env::temp_dir()
                .join(format!("qgate-config-{tag}-{}.toml", std::process::id()));
            std::fs::write(&p, text).unwrap();
            File(p)
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn file_then_overrides() {
        let f = File::new(
            "layers",
            "log = \"debug\"\n[amqp]\nlisten = \"127.0.0.1:1\"\nhandshake_timeout = 2500\n\
             [storage]\nfsync = \"interval:20\"\n",
        );
        let c = Config::load(Some(&f.0), &[]).unwrap();
        assert_eq!(c.amqp.listen, addr("127.0.0.1:1"));
        assert_eq!(c.memcache.listen, addr(DEFAULT_MEMCACHE_LISTEN));
        assert_eq!(c.amqp.handshake_timeout, Duration::from_millis(2500));
        assert_eq!(
            c.storage.fsync,
            FsyncPolicy::Interval(Duration::from_millis(20))
        );
        let given = [
            (flag("amqp-listen"), OsStr::new("127.0.0.1:2")),
            (flag("fsync"), OsStr::new("never")),
            (flag("memcache-idle-timeout"), OsStr::new("30")),
        ];
        let c = Config::load(Some(&f.0), &given).unwrap();
        assert_eq!(c.amqp.listen, addr("127.0.0.1:2"));
        assert_eq!(c.storage.fsync, FsyncPolicy::Never);
        assert_eq!(c.log, "debug");
        assert_eq!(c.memcache.idle_timeout, Duration::from_secs(30));
        assert_eq!(c.limits().memcache_idle_timeout_s, 30);
    }

    #[test]
    fn a_bad_file_value_is_refused_by_name_unless_overridden() {
        let f = File::new("bad", "[storage]\nfsync = \"rarely\"\n");
        let e = Config::load(Some(&f.0), &[]).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid setting storage.fsync (--fsync, QGATE_FSYNC): 'rarely' is not a fsync \
             policy: expected always, never or interval:<ms> (e.g. interval:100)"
        );
        let c = Config::load(Some(&f.0), &[(flag("fsync"), OsStr::new("always"))]).unwrap();
        assert_eq!(c.storage.fsync, FsyncPolicy::Always);
        // A schema error keeps TOML's line and column.
        let f = File::new("schema", "[amqp]\nheartbeat = \"x\"\n");
        let e = Config::load(Some(&f.0), &[]).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn upstream_url_lists_nodes() {
        let u = UpstreamConfig {
            url: "amqp://u:p@h1:5672,h2,10.0.0.3:5673/%2f?heartbeat=10".into(),
            ..Default::default()
        };
        assert_eq!(
            u.node_urls().unwrap(),
            [
                "amqp://u:p@h1:5672/%2f?heartbeat=10",
                "amqp://u:p@h2:5672/%2f?heartbeat=10",
                "amqp://u:p@10.0.0.3:5673/%2f?heartbeat=10",
            ]
        );
        for bad in ["http://h", "amqp://u@h1,,h2/", "amqp://h:x/", "nonsense"] {
            let u = UpstreamConfig {
                url: bad.into(),
                ..Default::default()
            };
            assert!(u.node_urls().is_err(), "{bad}");
        }
    }

    #[test]
    fn timeouts_keep_their_toml_units() {
        let c: Config = toml::from_str(
            "[amqp]\nhandshake_timeout = 1500\n[memcache]\nidle_timeout = 7\n\
             [upstream]\nconfirm_timeout_ms = 250\n",
        )
        .unwrap();
        assert_eq!(c.amqp.handshake_timeout, Duration::from_millis(1500));
        assert_eq!(c.memcache.idle_timeout, Duration::from_secs(7));
        assert_eq!(c.upstream.confirm_timeout, Duration::from_millis(250));
        let text = toml::to_string(&c).unwrap();
        assert!(text.contains("confirm_timeout_ms = 250"), "{text}");
        assert!(text.contains("handshake_timeout = 1500"), "{text}");
    }

    #[test]
    fn loopback_users() {
        let c: Config = toml::from_str("loopback_users = []\n").unwrap();
        assert_eq!(c.loopback_users, Some(vec![]));
        assert_eq!(Config::default().loopback_users, None);
        let given = [(flag("loopback-users"), OsStr::new("guest, ops"))];
        let c = Config::load(None, &given).unwrap();
        assert_eq!(c.loopback_users, Some(vec!["guest".into(), "ops".into()]));
        let perms: Config = toml::from_str(
            "[[permissions]]\nuser = \"u\"\nconfigure = \".*\"\nwrite = \"\"\nread = \"\"\n",
        )
        .unwrap();
        assert_eq!(perms.permissions[0].vhost, "/");
    }

    #[test]
    fn rejects_bad_values() {
        let e = Config::load(None, &[(flag("amqp-listen"), OsStr::new("nonsense"))])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid setting amqp.listen (--amqp-listen, QGATE_AMQP_LISTEN): 'nonsense' is \
             not an ip:port address (invalid socket address syntax)"
        );
        let e = Config::load(None, &[(flag("management-listen"), OsStr::new("x"))])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid setting management.listen: 'x'"),
            "{e}"
        );
        let e = Config::load(None, &[(flag("frame-max"), OsStr::new("1"))])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid setting amqp.frame_max: must be 0 or at least 4096"
        );
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }

    #[test]
    fn memory_high_watermark() {
        let c = Config::default();
        assert_eq!(c.memory_high_watermark.bytes(1000), 400);
        let given = [(flag("memory-high-watermark"), OsStr::new("536870912"))];
        let c = Config::load(None, &given).unwrap();
        assert_eq!(c.memory_high_watermark, MemoryWatermark::Bytes(536_870_912));
        for bad in ["lots", "1.5", "-0.1"] {
            assert!(bad.parse::<MemoryWatermark>().is_err(), "{bad}");
        }
    }

    #[test]
    fn disk_free_limit() {
        let c = Config::default();
        assert_eq!(c.disk_free_limit.bytes(1 << 30), 50_000_000);
        let c: Config = toml::from_str("disk_free_limit = \"mem_relative:2.0\"").unwrap();
        assert_eq!(c.disk_free_limit.bytes(1 << 30), 2 << 30);
        let c = Config::load(None, &[(flag("disk-free-limit"), OsStr::new("1GB"))]).unwrap();
        assert_eq!(c.disk_free_limit.bytes(1), 1_000_000_000);
        let e = Config::load(None, &[(flag("disk-free-limit"), OsStr::new("lots"))])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--disk-free-limit, QGATE_DISK_FREE_LIMIT"),
            "{e}"
        );
    }

    #[test]
    fn disk_free_limits_parse_like_rabbitmq() {
        let gib = 1u64 << 30;
        let bytes = |s: &str| s.parse::<DiskFreeLimit>().map(|l| l.bytes(gib));
        assert_eq!(bytes("50MB").unwrap(), 50_000_000);
        assert_eq!(bytes("1GB").unwrap(), 1_000_000_000);
        assert_eq!(bytes("2GiB").unwrap(), 2 * gib);
        assert_eq!(bytes("512M").unwrap(), 512 << 20);
        assert_eq!(bytes("10kB").unwrap(), 10_000);
        assert_eq!(bytes("10k").unwrap(), 10_240);
        assert_eq!(bytes("123456").unwrap(), 123_456);
        assert_eq!(bytes("0").unwrap(), 0);
        assert_eq!(bytes("mem_relative:1.5").unwrap(), gib * 3 / 2);
        assert_eq!(bytes("mem_relative,0.5").unwrap(), gib / 2);
        for bad in [
            "",
            "MB",
            "50 XB",
            "-1",
            "1.5GB",
            "mem_relative:",
            "mem_relative:-1",
        ] {
            assert!(bytes(bad).is_err(), "{bad}");
        }
        assert!(bytes("99999999999999999999GB").is_err());
    }

    #[test]
    fn fsync_policy_parse_display() {
        for s in ["always", "never", "interval:250"] {
            let p: FsyncPolicy = s.parse().unwrap();
            assert_eq!(p.to_string(), s);
        }
        assert_eq!(
            "interval:5".parse::<FsyncPolicy>().unwrap(),
            FsyncPolicy::Interval(Duration::from_millis(5))
        );
        assert!("interval:".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
    }

    #[test]
    fn each_setting_is_declared_once_and_typed_values_round_trip() {
        for (i, f) in FLAGS.iter().enumerate() {
            assert!(
                FLAGS[i + 1..]
                    .iter()
                    .all(|g| g.key != f.key && g.flag != f.flag),
                "{f:?} twice"
            );
        }
        assert_eq!(flag("max-message-size").env(), "QGATE_MAX_MESSAGE_SIZE");
        assert_eq!(
            setting_label("storage.fsync"),
            "storage.fsync (--fsync, QGATE_FSYNC)"
        );
        assert_eq!(setting_label("amqp.frame_max"), "amqp.frame_max");
        // What the defaults serialize to reads back as the defaults.
        let text = toml::to_string(&Config::default()).unwrap();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), Config::default());
    }
}
