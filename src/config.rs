//! Configuration: one struct per section, embedded defaults, then a TOML file
//! (`--config`), then environment (`QGATE_<NAME>`), then flags, in rising priority.
//! Flags and env are read by clap in `main.rs` and applied with [`Config::apply`].

use std::net::SocketAddr;
use std::path::PathBuf;

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
pub const DEFAULT_MEMORY_HIGH_WATERMARK: &str = "0.4";
/// Default largest memcache data block.
pub const DEFAULT_MEMCACHE_MAX_MESSAGE: usize = 1024 * 1024;
/// Default AMQP connection limit: none (RabbitMQ's `connection_max = infinity`).
pub const DEFAULT_AMQP_CONNECTION_MAX: u32 = 0;
/// Default memcache connection limit (memcached's `-c 1024`).
pub const DEFAULT_MEMCACHE_CONNECTION_MAX: u32 = 1024;
/// Default time a client has to finish the AMQP handshake, ms (RabbitMQ's
/// `handshake_timeout`).
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Longest memcache command line (memcached's 2048; the parser's `DEFAULT_MAX_LINE`,
/// which a test keeps equal: config sits below the front ends and cannot import it).
pub const MEMCACHE_MAX_LINE: u64 = 2048;
/// Largest `max_message_size` RabbitMQ accepts (512 MiB).
pub const MAX_MAX_MESSAGE: u64 = 512 * 1024 * 1024;

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
    pub memory_high_watermark: String,
    /// Free space the data directory's file system must keep, or publishers are blocked:
    /// RabbitMQ's `disk_free_limit` (`50MB`, its default; `1GB`, `2GiB`, a byte count,
    /// `mem_relative:1.0` for a multiple of physical memory, or `0` for no disk alarm).
    pub disk_free_limit: String,
    /// Upstream mode: the memcache listener's queues live in a RabbitMQ cluster.
    pub upstream: UpstreamConfig,
}

/// Default queue type the gateway declares upstream (replicated, fails over).
pub const DEFAULT_UPSTREAM_QUEUE_TYPE: &str = "quorum";
/// Default number of AMQP connections to the cluster.
pub const DEFAULT_UPSTREAM_POOL: usize = 3;
/// Default wait for a publisher confirm before the publish is retried.
pub const DEFAULT_UPSTREAM_CONFIRM_TIMEOUT_MS: u64 = 5000;
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
    /// Milliseconds to wait for a publisher confirm before retrying on a fresh channel.
    pub confirm_timeout_ms: u64,
    /// Attempts per `set` before answering `SERVER_ERROR`.
    pub publish_attempts: u32,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            queue_type: DEFAULT_UPSTREAM_QUEUE_TYPE.into(),
            pool: DEFAULT_UPSTREAM_POOL,
            confirm_timeout_ms: DEFAULT_UPSTREAM_CONFIRM_TIMEOUT_MS,
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
    pub listen: String,
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
    /// Milliseconds a client has from TCP accept to connection.open (RabbitMQ's
    /// `handshake_timeout`).
    pub handshake_timeout: u64,
}

/// `[memcache]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MemcacheConfig {
    /// Listen address.
    pub listen: String,
    /// Largest data block accepted by `set`.
    pub max_message: usize,
    /// Vhost the memcache queues live in.
    pub vhost: String,
    /// Most client connections open at once (0 = no limit; memcached's `-c`).
    pub connection_max: u32,
    /// Seconds a connection may stay silent before it is closed (0 = never; memcached's
    /// `-o idle_timeout`).
    pub idle_timeout: u64,
    /// User whose permissions govern memcache commands (the protocol has no login).
    pub user: String,
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub listen: String,
    /// Metric name prefix (`rabbitmq` makes RabbitMQ dashboards work unchanged).
    pub metrics_prefix: String,
}

/// `[management]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ManagementConfig {
    /// Listen address.
    pub listen: String,
}

impl Default for ManagementConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_MANAGEMENT_LISTEN.into(),
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
    pub fsync: String,
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
            memory_high_watermark: DEFAULT_MEMORY_HIGH_WATERMARK.into(),
            disk_free_limit: crate::core::disk_alarm::DEFAULT_LIMIT.into(),
            upstream: UpstreamConfig::default(),
            management: ManagementConfig::default(),
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_AMQP_LISTEN.into(),
            heartbeat: DEFAULT_HEARTBEAT,
            frame_max: DEFAULT_FRAME_MAX,
            channel_max: DEFAULT_CHANNEL_MAX,
            max_message: DEFAULT_MAX_MESSAGE,
            connection_max: DEFAULT_AMQP_CONNECTION_MAX,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT_MS,
        }
    }
}

impl Default for MemcacheConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_MEMCACHE_LISTEN.into(),
            max_message: DEFAULT_MEMCACHE_MAX_MESSAGE,
            vhost: "/".into(),
            connection_max: DEFAULT_MEMCACHE_CONNECTION_MAX,
            idle_timeout: 0,
            user: "guest".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_HTTP_LISTEN.into(),
            metrics_prefix: "qgate".into(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: DEFAULT_DATA_DIR.into(),
            fsync: "always".into(),
        }
    }
}

/// Values given on the command line or in the environment; `None` = not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--amqp-listen` / `QGATE_AMQP_LISTEN`
    pub amqp_listen: Option<String>,
    /// `--memcache-listen` / `QGATE_MEMCACHE_LISTEN`
    pub memcache_listen: Option<String>,
    /// `--http-listen` / `QGATE_HTTP_LISTEN`
    pub http_listen: Option<String>,
    /// `--data-dir` / `QGATE_DATA_DIR`
    pub data_dir: Option<PathBuf>,
    /// `--fsync` / `QGATE_FSYNC`
    pub fsync: Option<String>,
    /// `--log` / `QGATE_LOG`
    pub log: Option<String>,
    /// `--memcache-max-message` / `QGATE_MEMCACHE_MAX_MESSAGE`
    pub memcache_max_message: Option<usize>,
    /// `--memcache-vhost` / `QGATE_MEMCACHE_VHOST`
    pub memcache_vhost: Option<String>,
    /// `--metrics-prefix` / `QGATE_METRICS_PREFIX`
    pub metrics_prefix: Option<String>,
    /// `--heartbeat` / `QGATE_HEARTBEAT`
    pub heartbeat: Option<u16>,
    /// `--memory-high-watermark` / `QGATE_MEMORY_HIGH_WATERMARK`
    pub memory_high_watermark: Option<String>,
    /// `--amqp-connection-max` / `QGATE_AMQP_CONNECTION_MAX`
    pub amqp_connection_max: Option<u32>,
    /// `--memcache-connection-max` / `QGATE_MEMCACHE_CONNECTION_MAX`
    pub memcache_connection_max: Option<u32>,
    /// `--channel-max` / `QGATE_CHANNEL_MAX`
    pub channel_max: Option<u16>,
    /// `--frame-max` / `QGATE_FRAME_MAX`
    pub frame_max: Option<u32>,
    /// `--max-message-size` / `QGATE_MAX_MESSAGE_SIZE`
    pub max_message_size: Option<u64>,
    /// `--handshake-timeout` / `QGATE_HANDSHAKE_TIMEOUT` (ms)
    pub handshake_timeout: Option<u64>,
    /// `--memcache-idle-timeout` / `QGATE_MEMCACHE_IDLE_TIMEOUT` (s)
    pub memcache_idle_timeout: Option<u64>,
    /// `--disk-free-limit` / `QGATE_DISK_FREE_LIMIT`
    pub disk_free_limit: Option<String>,
    /// `--upstream` / `QGATE_UPSTREAM`
    pub upstream: Option<String>,
    /// `--loopback-users` / `QGATE_LOOPBACK_USERS` (comma-separated; empty = none)
    pub loopback_users: Option<String>,
    /// `--memcache-user` / `QGATE_MEMCACHE_USER`
    pub memcache_user: Option<String>,
    /// `--management-listen` / `QGATE_MANAGEMENT_LISTEN`
    pub management_listen: Option<String>,
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

/// `amqp.listen (--amqp-listen, QGATE_AMQP_LISTEN)`: a setting's TOML key, then the
/// flag and environment variable that override it, when there are.
pub fn setting_label(name: &str) -> String {
    let flag = match name {
        "amqp.listen" => "amqp-listen",
        "memcache.listen" => "memcache-listen",
        "http.listen" => "http-listen",
        "storage.data_dir" => "data-dir",
        "storage.fsync" => "fsync",
        "log" => "log",
        "memcache.max_message" => "memcache-max-message",
        "memcache.vhost" => "memcache-vhost",
        "http.metrics_prefix" => "metrics-prefix",
        "amqp.heartbeat" => "heartbeat",
        "memory_high_watermark" => "memory-high-watermark",
        "disk_free_limit" => "disk-free-limit",
        _ => return name.to_owned(),
    };
    let env = format!("QGATE_{}", flag.replace('-', "_").to_ascii_uppercase());
    format!("{name} (--{flag}, {env})")
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Applies env/flag overrides.
    pub fn apply(&mut self, o: Overrides) {
        if let Some(v) = o.amqp_listen {
            self.amqp.listen = v;
        }
        if let Some(v) = o.memcache_listen {
            self.memcache.listen = v;
        }
        if let Some(v) = o.http_listen {
            self.http.listen = v;
        }
        if let Some(v) = o.data_dir {
            self.storage.data_dir = v;
        }
        if let Some(v) = o.fsync {
            self.storage.fsync = v;
        }
        if let Some(v) = o.log {
            self.log = v;
        }
        if let Some(v) = o.memcache_max_message {
            self.memcache.max_message = v;
        }
        if let Some(v) = o.memcache_vhost {
            self.memcache.vhost = v;
        }
        if let Some(v) = o.metrics_prefix {
            self.http.metrics_prefix = v;
        }
        if let Some(v) = o.heartbeat {
            self.amqp.heartbeat = v;
        }
        if let Some(v) = o.memory_high_watermark {
            self.memory_high_watermark = v;
        }
        if let Some(v) = o.amqp_connection_max {
            self.amqp.connection_max = v;
        }
        if let Some(v) = o.memcache_connection_max {
            self.memcache.connection_max = v;
        }
        if let Some(v) = o.channel_max {
            self.amqp.channel_max = v;
        }
        if let Some(v) = o.frame_max {
            self.amqp.frame_max = v;
        }
        if let Some(v) = o.max_message_size {
            self.amqp.max_message = v;
        }
        if let Some(v) = o.handshake_timeout {
            self.amqp.handshake_timeout = v;
        }
        if let Some(v) = o.memcache_idle_timeout {
            self.memcache.idle_timeout = v;
        }
        if let Some(v) = o.disk_free_limit {
            self.disk_free_limit = v;
        }
        if let Some(v) = o.upstream {
            self.upstream.url = v;
        }
        if let Some(v) = o.loopback_users {
            self.loopback_users = Some(
                v.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            );
        }
        if let Some(v) = o.memcache_user {
            self.memcache.user = v;
        }
        if let Some(v) = o.management_listen {
            self.management.listen = v;
        }
    }

    /// The disk free limit in bytes (0 = no disk alarm), given the machine's memory.
    pub fn disk_free_limit_bytes(&self, physical: u64) -> Result<u64, ConfigError> {
        crate::core::disk_alarm::parse_limit(&self.disk_free_limit, physical).map_err(|reason| {
            ConfigError::Invalid {
                name: "disk_free_limit",
                reason,
            }
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
            handshake_timeout_ms: self.amqp.handshake_timeout,
            memcache_max_message: self.memcache.max_message as u64,
            memcache_max_line: MEMCACHE_MAX_LINE,
            memcache_idle_timeout_s: self.memcache.idle_timeout,
            table_max_depth: crate::content::value::MAX_DEPTH as u64,
        }
    }

    /// The memory high watermark in bytes (0 = none), given the machine's memory.
    pub fn memory_high_watermark_bytes(&self, physical: u64) -> Result<u64, ConfigError> {
        let v = self.memory_high_watermark.trim();
        let invalid = || ConfigError::Invalid {
            name: "memory_high_watermark",
            reason: format!("'{v}' is neither a fraction of memory (0.4) nor a byte count"),
        };
        if let Ok(bytes) = v.parse::<u64>() {
            return Ok(bytes);
        }
        match v.parse::<f64>() {
            Ok(f) if (0.0..=1.0).contains(&f) => Ok((physical as f64 * f) as u64),
            _ => Err(invalid()),
        }
    }

    /// Checks ranges and formats; kept apart from the structs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, addr) in [
            ("amqp.listen", &self.amqp.listen),
            ("memcache.listen", &self.memcache.listen),
            ("http.listen", &self.http.listen),
            ("management.listen", &self.management.listen),
        ] {
            addr.parse::<SocketAddr>()
                .map_err(|e| ConfigError::Invalid {
                    name,
                    reason: format!("'{addr}' is not an ip:port address ({e})"),
                })?;
        }
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
        if self.amqp.handshake_timeout == 0 {
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
        self.memory_high_watermark_bytes(1)?;
        self.disk_free_limit_bytes(1)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let mut c: Config = toml::from_str(
            "log = \"debug\"\n[amqp]\nlisten = \"127.0.0.1:1\"\n[storage]\nfsync = \"never\"\n",
        )
        .unwrap();
        assert_eq!(c.amqp.listen, "127.0.0.1:1");
        assert_eq!(c.memcache.listen, DEFAULT_MEMCACHE_LISTEN);
        c.apply(Overrides {
            amqp_listen: Some("127.0.0.1:2".into()),
            ..Default::default()
        });
        assert_eq!(c.amqp.listen, "127.0.0.1:2");
        assert_eq!(c.storage.fsync, "never");
        c.validate().unwrap();
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
    fn loopback_users() {
        let c: Config = toml::from_str("loopback_users = []\n").unwrap();
        assert_eq!(c.loopback_users, Some(vec![]));
        assert_eq!(Config::default().loopback_users, None);
        let mut c = Config::default();
        c.apply(Overrides {
            loopback_users: Some("guest, ops".into()),
            ..Default::default()
        });
        assert_eq!(c.loopback_users, Some(vec!["guest".into(), "ops".into()]));
        let perms: Config = toml::from_str(
            "[[permissions]]\nuser = \"u\"\nconfigure = \".*\"\nwrite = \"\"\nread = \"\"\n",
        )
        .unwrap();
        assert_eq!(perms.permissions[0].vhost, "/");
    }

    #[test]
    fn rejects_bad_values() {
        let mut c = Config::default();
        c.amqp.listen = "nonsense".into();
        assert!(c.validate().is_err());
        assert!(toml::from_str::<Config>("bogus = 1").is_err());
    }

    #[test]
    fn disk_free_limit() {
        let mut c = Config::default();
        assert_eq!(c.disk_free_limit_bytes(1 << 30).unwrap(), 50_000_000);
        c = toml::from_str("disk_free_limit = \"mem_relative:2.0\"").unwrap();
        assert_eq!(c.disk_free_limit_bytes(1 << 30).unwrap(), 2 << 30);
        c.apply(Overrides {
            disk_free_limit: Some("1GB".into()),
            ..Default::default()
        });
        assert_eq!(c.disk_free_limit_bytes(1).unwrap(), 1_000_000_000);
        c.disk_free_limit = "lots".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("--disk-free-limit, QGATE_DISK_FREE_LIMIT"),
            "{e}"
        );
    }
}
