//! `qgate ctl`: inspects a running broker through its HTTP admin API, printing what
//! `rabbitmqctl` prints for the same command, so scripts written for it keep working.
//!
//! Output: unless `-q`, an informational banner (`Timeout: 60.0 seconds ...`,
//! `Listing queues for vhost / ...`), then a header row of column names (unless
//! `--no-table-headers`), then one tab-separated row per object. As in rabbitmqctl 3.7+,
//! `-q` drops only the banner; `-q --no-table-headers` prints rows alone.
//!
//! Transport: one plain HTTP/1.1 GET per command over `std::net::TcpStream` to `--url`
//! (default `http://127.0.0.1:15692`, env `QGATE_CTL_URL`). When nothing answers the
//! command fails with a message naming the URL and exit status 69 (EX_UNAVAILABLE, as
//! rabbitmqctl).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// Time allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the whole answer.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer accepted.
const MAX_RESPONSE: u64 = 256 * 1024 * 1024;

/// `qgate ctl` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct CtlArgs {
    /// Base URL of the broker's HTTP listener.
    #[arg(long, env = "QGATE_CTL_URL", default_value = "http://127.0.0.1:15692")]
    pub url: String,
    /// Suppress informational messages (banners); rows and the header remain.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Do not print the header row of column names.
    #[arg(long, global = true)]
    pub no_table_headers: bool,
    /// Virtual host of list commands.
    #[arg(short = 'p', long, global = true, default_value = "/")]
    pub vhost: String,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The commands, named as rabbitmqctl's.
#[derive(clap::Subcommand, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub enum CtlCommand {
    /// Lists queues: name messages_ready messages_unacknowledged messages consumers
    /// durable auto_delete exclusive arguments type state vhost [default: name messages].
    ListQueues {
        /// Columns to print.
        columns: Vec<String>,
    },
    /// Lists exchanges: name type durable auto_delete internal arguments vhost
    /// [default: name type].
    ListExchanges {
        /// Columns to print.
        columns: Vec<String>,
    },
    /// Lists bindings: source_name source_kind destination_name destination_kind
    /// routing_key arguments vhost [default: all but vhost].
    ListBindings {
        /// Columns to print.
        columns: Vec<String>,
    },
    /// Lists connections: name user peer_host peer_port state protocol vhost channels
    /// recv_oct send_oct connected_at [default: user peer_host peer_port state].
    ListConnections {
        /// Columns to print.
        columns: Vec<String>,
    },
    /// Lists consumers: queue_name channel_pid consumer_tag ack_required prefetch_count
    /// active activity_status exclusive arguments [default: all but exclusive and
    /// activity_status].
    ListConsumers {
        /// Columns to print.
        columns: Vec<String>,
    },
    /// Shows the broker's status: version, uptime, listeners, totals.
    Status,
    /// Checks that the broker answers on /healthz.
    Ping,
}

/// A `qgate ctl` failure.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// `--url` is not an `http://host:port` URL.
    #[error("invalid --url '{url}': {reason}")]
    Url {
        /// As given.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// Nothing answered.
    #[error("unable to connect to qgate at {url}: {cause}. Is the broker running and --url (QGATE_CTL_URL) right?")]
    Unreachable {
        /// Base URL.
        url: String,
        /// Cause (not a `source`: the message already says it).
        cause: std::io::Error,
    },
    /// The answer could not be read.
    #[error("error talking to qgate at {url}: {cause}")]
    Io {
        /// Base URL.
        url: String,
        /// Cause.
        cause: std::io::Error,
    },
    /// Something answered, but not like qgate.
    #[error("unexpected answer from {url}{path}: {reason}")]
    Protocol {
        /// Base URL.
        url: String,
        /// Path asked for.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// The broker answered with an error status.
    #[error("{path}: HTTP {status}: {reason}")]
    Status {
        /// Path asked for.
        path: String,
        /// Status code.
        status: u16,
        /// The error's reason.
        reason: String,
    },
    /// Columns that the command does not know.
    #[error("invalid column(s): {invalid}. Valid columns: {valid}")]
    Columns {
        /// The unknown ones.
        invalid: String,
        /// The known ones.
        valid: String,
    },
}

impl CtlError {
    /// The process exit status, following rabbitmqctl (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Url { .. } | CtlError::Columns { .. } => 64,
            CtlError::Unreachable { .. } => 69,
            CtlError::Status { status: 404, .. } => 1,
            _ => 70,
        }
    }
}

/// Runs one command, printing to stdout.
pub fn run(args: CtlArgs) -> Result<(), CtlError> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let text = execute(&args)?;
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    Ok(())
}

/// Runs one command and returns what it prints.
pub fn execute(args: &CtlArgs) -> Result<String, CtlError> {
    let client = Client::new(&args.url)?;
    let vhost = encode_segment(&args.vhost);
    let mut out = String::new();
    let banner = |out: &mut String, what: String| {
        if !args.quiet {
            out.push_str("Timeout: 60.0 seconds ...\n");
            out.push_str(&what);
            out.push('\n');
        }
    };
    match &args.command {
        CtlCommand::ListQueues { columns } => {
            let cols = columns_or(columns, &["name", "messages"], QUEUE_COLUMNS)?;
            let rows = client.get_json(&format!("/api/queues/{vhost}"))?;
            banner(
                &mut out,
                format!("Listing queues for vhost {} ...", args.vhost),
            );
            table(&mut out, args, &cols, &rows, |row, col| match col {
                "policy" => Some(Value::String(String::new())),
                _ => row.get(col).cloned(),
            });
        }
        CtlCommand::ListExchanges { columns } => {
            let cols = columns_or(columns, &["name", "type"], EXCHANGE_COLUMNS)?;
            let rows = client.get_json(&format!("/api/exchanges/{vhost}"))?;
            banner(
                &mut out,
                format!("Listing exchanges for vhost {} ...", args.vhost),
            );
            table(&mut out, args, &cols, &rows, |row, col| match col {
                "policy" => Some(Value::String(String::new())),
                _ => row.get(col).cloned(),
            });
        }
        CtlCommand::ListBindings { columns } => {
            let default = &BINDING_COLUMNS[..6];
            let cols = columns_or(columns, default, BINDING_COLUMNS)?;
            let rows = client.get_json(&format!("/api/bindings/{vhost}"))?;
            banner(
                &mut out,
                format!("Listing bindings for vhost {}...", args.vhost),
            );
            table(&mut out, args, &cols, &rows, |row, col| match col {
                "source_name" => row.get("source").cloned(),
                "source_kind" => Some(Value::String("exchange".into())),
                "destination_name" => row.get("destination").cloned(),
                "destination_kind" => row.get("destination_type").cloned(),
                _ => row.get(col).cloned(),
            });
        }
        CtlCommand::ListConnections { columns } => {
            let default = ["user", "peer_host", "peer_port", "state"];
            let cols = columns_or(columns, &default, CONNECTION_COLUMNS)?;
            let rows = client.get_json("/api/connections")?;
            banner(&mut out, "Listing connections ...".into());
            table(&mut out, args, &cols, &rows, |row, col| {
                row.get(col).cloned()
            });
        }
        CtlCommand::ListConsumers { columns } => {
            let default = &CONSUMER_COLUMNS[..7];
            let cols = columns_or(columns, default, CONSUMER_COLUMNS)?;
            let rows = client.get_json(&format!("/api/consumers/{vhost}"))?;
            banner(
                &mut out,
                format!("Listing consumers in vhost {} ...", args.vhost),
            );
            table(&mut out, args, &cols, &rows, |row, col| match col {
                "queue_name" => row.pointer("/queue/name").cloned(),
                "channel_pid" => row.pointer("/channel_details/connection_name").cloned(),
                "arguments" => Some(Value::Object(Default::default())),
                _ => row.get(col).cloned(),
            });
        }
        CtlCommand::Status => {
            let o = client.get_json("/api/overview")?;
            status(&mut out, &o, args.quiet);
        }
        CtlCommand::Ping => {
            let body = client.get("/healthz")?;
            if !args.quiet {
                out.push_str(&format!("Will ping qgate at {} ...\n", client.base));
            }
            if body.trim() != "ok" {
                return Err(CtlError::Protocol {
                    url: client.base.clone(),
                    path: "/healthz".into(),
                    reason: format!("answered '{}'", body.trim()),
                });
            }
            out.push_str("Ping succeeded\n");
        }
    }
    Ok(out)
}

const QUEUE_COLUMNS: &[&str] = &[
    "name",
    "messages_ready",
    "messages_unacknowledged",
    "messages",
    "consumers",
    "durable",
    "auto_delete",
    "exclusive",
    "arguments",
    "type",
    "state",
    "vhost",
    "policy",
];
const EXCHANGE_COLUMNS: &[&str] = &[
    "name",
    "type",
    "durable",
    "auto_delete",
    "internal",
    "arguments",
    "vhost",
    "policy",
];
const BINDING_COLUMNS: &[&str] = &[
    "source_name",
    "source_kind",
    "destination_name",
    "destination_kind",
    "routing_key",
    "arguments",
    "vhost",
];
const CONNECTION_COLUMNS: &[&str] = &[
    "name",
    "user",
    "peer_host",
    "peer_port",
    "state",
    "protocol",
    "vhost",
    "channels",
    "recv_oct",
    "send_oct",
    "connected_at",
];
const CONSUMER_COLUMNS: &[&str] = &[
    "queue_name",
    "channel_pid",
    "consumer_tag",
    "ack_required",
    "prefetch_count",
    "active",
    "arguments",
    "activity_status",
    "exclusive",
];

/// The requested columns (or the defaults), checked against the known ones.
fn columns_or(given: &[String], default: &[&str], valid: &[&str]) -> Result<Vec<String>, CtlError> {
    if given.is_empty() {
        return Ok(default.iter().map(|s| (*s).to_owned()).collect());
    }
    // rabbitmqctl also accepts comma-separated lists.
    let cols: Vec<String> = given
        .iter()
        .flat_map(|c| c.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let invalid: Vec<&str> = cols
        .iter()
        .map(String::as_str)
        .filter(|c| !valid.contains(c))
        .collect();
    if !invalid.is_empty() {
        return Err(CtlError::Columns {
            invalid: invalid.join(", "),
            valid: valid.join(", "),
        });
    }
    Ok(cols)
}

fn table(
    out: &mut String,
    args: &CtlArgs,
    cols: &[String],
    rows: &Value,
    cell: impl Fn(&Value, &str) -> Option<Value>,
) {
    if !args.no_table_headers {
        out.push_str(&cols.join("\t"));
        out.push('\n');
    }
    let empty = Vec::new();
    for row in rows.as_array().unwrap_or(&empty) {
        for (i, col) in cols.iter().enumerate() {
            if i > 0 {
                out.push('\t');
            }
            format_value(out, cell(row, col).as_ref().unwrap_or(&Value::Null), true);
        }
        out.push('\n');
    }
}

/// A value as rabbitmqctl prints it: strings bare, booleans and numbers as text,
/// tables as Erlang-style proplists (`[]`, `[{"x-max-length",10}]`).
fn format_value(out: &mut String, v: &Value, top: bool) {
    match v {
        Value::Null => {}
        Value::String(s) if top => out.push_str(&s.replace(['\t', '\n'], " ")),
        Value::String(s) => {
            out.push('"');
            out.push_str(s);
            out.push('"');
        }
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                format_value(out, x, false);
            }
            out.push(']');
        }
        Value::Object(m) => {
            out.push('[');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"");
                out.push_str(k);
                out.push_str("\",");
                format_value(out, x, false);
                out.push('}');
            }
            out.push(']');
        }
    }
}

fn status(out: &mut String, o: &Value, quiet: bool) {
    let s = |p: &str| match o.pointer(p) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    };
    if !quiet {
        out.push_str(&format!("Status of node {} ...\n", s("/node")));
    }
    out.push_str("Runtime\n\n");
    out.push_str(&format!("Product name: {}\n", s("/product_name")));
    out.push_str(&format!("Product version: {}\n", s("/product_version")));
    let uptime_ms = o.pointer("/uptime").and_then(Value::as_u64).unwrap_or(0);
    out.push_str(&format!("Uptime (seconds): {}\n", uptime_ms / 1000));
    out.push_str(&format!("Metrics prefix: {}\n", s("/metrics_prefix")));
    out.push_str("\nListeners\n\n");
    let empty = Vec::new();
    for l in o
        .pointer("/listeners")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let get = |k: &str| match l.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        let purpose = match get("protocol").as_str() {
            "amqp" => "AMQP 0-9-1",
            "memcache" => "memcache text protocol",
            "http" => "HTTP API, Prometheus metrics",
            _ => "",
        };
        out.push_str(&format!(
            "Interface: {}, port: {}, protocol: {}, purpose: {}\n",
            get("ip_address"),
            get("port"),
            get("protocol"),
            purpose
        ));
    }
    out.push_str("\nTotals\n\n");
    for (label, path) in [
        ("Connection count", "/object_totals/connections"),
        ("Channel count", "/object_totals/channels"),
        ("Queue count", "/object_totals/queues"),
        ("Consumer count", "/object_totals/consumers"),
        ("Exchange count", "/object_totals/exchanges"),
        ("Messages ready", "/queue_totals/messages_ready"),
        (
            "Messages unacknowledged",
            "/queue_totals/messages_unacknowledged",
        ),
    ] {
        out.push_str(&format!("{label}: {}\n", s(path)));
    }
}

/// Percent-encodes one path segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A one-request-per-connection HTTP/1.1 client.
struct Client {
    base: String,
    host: String,
    port: u16,
    prefix: String,
}

impl Client {
    fn new(url: &str) -> Result<Self, CtlError> {
        let bad = |reason| CtlError::Url {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// URLs are supported"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad("invalid port"))?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port,
            prefix: prefix.to_owned(),
        })
    }

    fn connect(&self) -> Result<TcpStream, CtlError> {
        let unreachable = |cause| CtlError::Unreachable {
            url: self.base.clone(),
            cause,
        };
        let addrs = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(unreachable)?;
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(unreachable(last))
    }

    /// GETs `path`; returns the body of a 200 answer.
    fn get(&self, path: &str) -> Result<String, CtlError> {
        let mut stream = self.connect()?;
        let io = |cause| CtlError::Io {
            url: self.base.clone(),
            cause,
        };
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let host = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let request = format!(
            "GET {}{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: qgate-ctl\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.prefix, path, host
        );
        stream.write_all(request.as_bytes()).map_err(io)?;
        let mut raw = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .map_err(io)?;
        let protocol = |reason: String| CtlError::Protocol {
            url: self.base.clone(),
            path: path.to_owned(),
            reason,
        };
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| protocol("no HTTP response head".into()))?;
        let head = String::from_utf8_lossy(&raw[..end]);
        let body = String::from_utf8_lossy(&raw[end + 4..]).into_owned();
        let status = head
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| {
                protocol(format!(
                    "bad status line '{}'",
                    head.lines().next().unwrap_or("")
                ))
            })?;
        if status != 200 {
            let reason = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| body.trim().to_owned());
            return Err(CtlError::Status {
                path: path.to_owned(),
                status,
                reason,
            });
        }
        Ok(body)
    }

    fn get_json(&self, path: &str) -> Result<Value, CtlError> {
        let body = self.get(path)?;
        serde_json::from_str(&body).map_err(|e| CtlError::Protocol {
            url: self.base.clone(),
            path: path.to_owned(),
            reason: format!("invalid JSON: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = Client::new("http://127.0.0.1:15692").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_str()),
            ("127.0.0.1", 15692, "")
        );
        let c = Client::new("http://[::1]:8080/qgate/").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_str()),
            ("::1", 8080, "/qgate")
        );
        let c = Client::new("http://localhost").unwrap();
        assert_eq!(c.port, 80);
        assert!(Client::new("https://x:1").is_err());
        assert!(Client::new("http://x:notaport").is_err());
    }

    #[test]
    fn formats_values_like_rabbitmqctl() {
        let mut s = String::new();
        format_value(
            &mut s,
            &serde_json::json!({"x-max-length": 10, "x-q": "a"}),
            true,
        );
        assert_eq!(s, "[{\"x-max-length\",10},{\"x-q\",\"a\"}]");
        s.clear();
        format_value(&mut s, &serde_json::json!({}), true);
        assert_eq!(s, "[]");
        assert_eq!(encode_segment("/"), "%2F");
    }

    #[test]
    fn rejects_unknown_columns() {
        let e = columns_or(&["name".into(), "bogus".into()], &[], QUEUE_COLUMNS).unwrap_err();
        assert!(e.to_string().contains("bogus"));
        let ok = columns_or(&["name,messages".into()], &[], QUEUE_COLUMNS).unwrap();
        assert_eq!(ok, vec!["name", "messages"]);
    }
}
