//! `qgate ctl`: drives a running broker through its management HTTP API (the
//! RabbitMQ-compatible `/api/*` on the management listener), with `rabbitmqctl`'s verbs,
//! arguments, output, error messages and exit codes, so scripts and tutorials written
//! for it keep working.
//!
//! Output: unless `-q`, an informational banner (`Adding user "u" ...`, `Listing queues
//! for vhost / ...`) on stdout, then for listings a header row of column names (unless
//! `--no-table-headers`; none for an empty listing, as rabbitmqctl) and one
//! tab-separated row per object. Errors go to stderr as rabbitmqctl words them
//! (`Error:` then the reason) with its exit codes (sysexits.h: 64 usage, 65 data error,
//! 67 no such user, 69 unavailable, 70 software error).
//!
//! Transport: one plain HTTP/1.1 request per call over `std::net::TcpStream` to `--url`
//! (default `http://127.0.0.1:15672`, env `QGATE_CTL_URL`). Credentials, in order:
//! `--user`/`--password` (env `QGATE_CTL_USER`/`QGATE_CTL_PASSWORD`) as HTTP Basic
//! (an administrator for changes); else the broker's local cookie,
//! `<--data-dir>/.qgate-cookie` (mode 0600, readable only by the broker's OS user), sent
//! as `X-Qgate-Cookie`: like rabbitmqctl's Erlang cookie it works on the broker's
//! machine without a password, even after `delete_user guest`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

/// Time allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the whole answer.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest answer accepted.
const MAX_RESPONSE: u64 = 256 * 1024 * 1024;
/// The local credential's file name in the data directory.
pub const COOKIE_FILE: &str = ".qgate-cookie";
/// The header carrying it.
pub const COOKIE_HEADER: &str = "X-Qgate-Cookie";

/// `qgate ctl` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct CtlArgs {
    /// Base URL of the broker's management listener.
    #[arg(long, env = "QGATE_CTL_URL", default_value = "http://127.0.0.1:15672")]
    pub url: String,
    /// User to authenticate as (HTTP Basic); without it the local cookie is used.
    #[arg(id = "auth_user", long = "user", env = "QGATE_CTL_USER", global = true)]
    pub user: Option<String>,
    /// Password of --user.
    #[arg(
        id = "auth_password",
        long = "password",
        env = "QGATE_CTL_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// The broker's data directory, where its local cookie file is.
    #[arg(long, env = "QGATE_DATA_DIR", global = true, default_value = qgate::config::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Suppress informational messages (banners); rows and the header remain.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Do not print the header row of column names.
    #[arg(long, global = true)]
    pub no_table_headers: bool,
    /// Virtual host of list and permission commands.
    #[arg(
        id = "list_vhost",
        short = 'p',
        long = "vhost",
        global = true,
        default_value = "/"
    )]
    pub vhost: String,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The commands, named as rabbitmqctl's.
#[derive(clap::Subcommand, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub enum CtlCommand {
    /// Creates a user (no permissions on any vhost yet).
    AddUser {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// Deletes a user, its permissions, and closes its connections.
    DeleteUser {
        /// User name.
        username: String,
    },
    /// Changes a user's password.
    ChangePassword {
        /// User name.
        username: String,
        /// New password.
        password: String,
    },
    /// Checks a user's password; exits non-zero when it is wrong.
    AuthenticateUser {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// Sets a user's tags (administrator, monitoring, management, ...); none clears them.
    SetUserTags {
        /// User name.
        username: String,
        /// Tags.
        tags: Vec<String>,
    },
    /// Lists users and their tags.
    ListUsers,
    /// Creates a virtual host.
    AddVhost {
        /// Vhost name.
        vhost: String,
    },
    /// Deletes a virtual host with its queues, exchanges, bindings and messages.
    DeleteVhost {
        /// Vhost name.
        vhost: String,
    },
    /// Lists virtual hosts: name description tags tracing [default: name].
    ListVhosts {
        /// Columns to print.
        columns: Vec<String>,
    },
    /// Sets a user's configure, write and read regexps in the vhost of -p.
    SetPermissions {
        /// User name.
        username: String,
        /// Configure regexp.
        conf: String,
        /// Write regexp.
        write: String,
        /// Read regexp.
        read: String,
    },
    /// Revokes a user's permissions in the vhost of -p.
    ClearPermissions {
        /// User name.
        username: String,
    },
    /// Lists the permissions in the vhost of -p.
    ListPermissions,
    /// Lists a user's permissions in every vhost.
    ListUserPermissions {
        /// User name.
        username: String,
    },
    /// Writes the definitions (users, vhosts, permissions, queues, exchanges, bindings)
    /// as RabbitMQ's JSON to FILE (`-` = stdout).
    ExportDefinitions {
        /// Target file.
        file: String,
    },
    /// Loads definitions in RabbitMQ's JSON from FILE (`-` = stdin).
    ImportDefinitions {
        /// Source file.
        file: String,
    },
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
    /// Checks that the broker answers.
    Ping,
    /// Stops the broker (gracefully, as SIGTERM).
    Stop,
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
    #[error("Error (argument validation): Info key(s) {invalid} are not supported. Valid columns: {valid}")]
    Columns {
        /// The unknown ones.
        invalid: String,
        /// The known ones.
        valid: String,
    },
    /// A failure rabbitmqctl reports in its own words: `text` is printed as is.
    #[error("{text}")]
    Said {
        /// What rabbitmqctl prints on stderr.
        text: String,
        /// Its exit status.
        code: u8,
    },
}

impl CtlError {
    /// The process exit status, following rabbitmqctl (sysexits.h).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Url { .. } | CtlError::Columns { .. } => 64,
            CtlError::Unreachable { .. } => 69,
            CtlError::Status { status: 401, .. } => 77,
            CtlError::Status { status: 404, .. } => 1,
            CtlError::Said { code, .. } => *code,
            _ => 70,
        }
    }

    fn said(code: u8, text: impl Into<String>) -> Self {
        CtlError::Said {
            text: text.into(),
            code,
        }
    }
}

/// Runs one command: prints its output on stdout and, on failure, the error on
/// stderr, then exits with rabbitmqctl's status (does not return on failure).
pub fn run(args: CtlArgs) -> Result<(), CtlError> {
    let mut out = String::new();
    let result = execute_into(&args, &mut out);
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let _ = stdout.write_all(out.as_bytes());
    let _ = stdout.flush();
    if let Err(e) = result {
        let text = match &e {
            CtlError::Said { text, .. } => text.clone(),
            other => format!("Error:\n{other}"),
        };
        eprintln!("{text}");
        std::process::exit(i32::from(e.exit_code()));
    }
    Ok(())
}

fn no_user(name: &str) -> CtlError {
    CtlError::said(67, format!("Error:\nUser \"{name}\" does not exist"))
}

/// Runs one command, appending what it prints on stdout to `out` (also when it fails
/// after its banner, as rabbitmqctl prints the banner first).
pub fn execute_into(args: &CtlArgs, out: &mut String) -> Result<(), CtlError> {
    let client = Client::new(&args.url, credentials(args))?;
    let vhost = encode_segment(&args.vhost);
    let say = |out: &mut String, what: String| {
        if !args.quiet {
            out.push_str(&what);
            out.push('\n');
        }
    };
    let banner = |out: &mut String, what: String| {
        if !args.quiet {
            out.push_str("Timeout: 60.0 seconds ...\n");
            out.push_str(&what);
            out.push('\n');
        }
    };
    match &args.command {
        CtlCommand::AddUser { username, password } => {
            say(out, format!("Adding user \"{username}\" ..."));
            let path = format!("/api/users/{}", encode_segment(username));
            if client.exists(&path)? {
                return Err(CtlError::said(
                    70,
                    format!("Error:\nUser \"{username}\" already exists"),
                ));
            }
            client.send("PUT", &path, &json!({"password": password, "tags": ""}))?;
            say(out, "Done. Don't forget to grant the user permissions to some virtual hosts! See 'rabbitmqctl help set_permissions' to learn more.".into());
        }
        CtlCommand::DeleteUser { username } => {
            say(out, format!("Deleting user \"{username}\" ..."));
            let path = format!("/api/users/{}", encode_segment(username));
            match client.request("DELETE", &path, None) {
                Err(CtlError::Status { status: 404, .. }) => return Err(no_user(username)),
                r => r.map(drop)?,
            }
        }
        CtlCommand::ChangePassword { username, password } => {
            say(
                out,
                format!("Changing password for user \"{username}\" ..."),
            );
            let path = format!("/api/users/{}", encode_segment(username));
            let user = match client.get_json(&path) {
                Err(CtlError::Status { status: 404, .. }) => return Err(no_user(username)),
                r => r?,
            };
            let tags = user.get("tags").cloned().unwrap_or(json!([]));
            client.send("PUT", &path, &json!({"password": password, "tags": tags}))?;
        }
        CtlCommand::AuthenticateUser { username, password } => {
            say(out, format!("Authenticating user \"{username}\" ..."));
            // The management API checks the password before the tags: "Not management
            // user" means the credentials were right.
            let as_user = Client::new(
                &args.url,
                Credentials::Basic(username.clone(), password.clone()),
            )?;
            match as_user.raw("GET", "/api/whoami", None) {
                Ok(_) => {}
                Err(CtlError::Status {
                    status: 401,
                    reason,
                    ..
                }) if reason == "Not management user" => {}
                Err(CtlError::Status { status: 401, .. }) => {
                    return Err(CtlError::said(
                        65,
                        format!(
                            "Error:\nError: failed to authenticate user \"{username}\"\nuser '{username}' - invalid credentials"
                        ),
                    ))
                }
                Err(e) => return Err(e),
            }
            out.push_str("Success\n");
        }
        CtlCommand::SetUserTags { username, tags } => {
            say(
                out,
                format!(
                    "Setting tags for user \"{username}\" to [{}] ...",
                    tags.join(", ")
                ),
            );
            let path = format!("/api/users/{}", encode_segment(username));
            let user = match client.get_json(&path) {
                Err(CtlError::Status { status: 404, .. }) => return Err(no_user(username)),
                r => r?,
            };
            // Keeps the password: PUT without one leaves it unchanged.
            let mut body = json!({"tags": tags.join(",")});
            if let Some(h) = user.get("password_hash") {
                body["password_hash"] = h.clone();
                body["hashing_algorithm"] = user
                    .get("hashing_algorithm")
                    .cloned()
                    .unwrap_or(json!(qgate::core::access::HASHING_SHA256));
            }
            client.send("PUT", &path, &body)?;
        }
        CtlCommand::ListUsers => {
            let rows = client.get_json("/api/users")?;
            say(out, "Listing users ...".into());
            let cols = vec!["user".to_owned(), "tags".to_owned()];
            table(out, args, &cols, &rows, |row, col| match col {
                "user" => row.get("name").cloned(),
                _ => Some(Value::String(format!(
                    "[{}]",
                    qgate::definitions::tags(row).join(", ")
                ))),
            });
        }
        CtlCommand::AddVhost { vhost: name } => {
            say(out, format!("Adding vhost \"{name}\" ..."));
            client.send(
                "PUT",
                &format!("/api/vhosts/{}", encode_segment(name)),
                &json!({}),
            )?;
        }
        CtlCommand::DeleteVhost { vhost: name } => {
            say(out, format!("Deleting vhost \"{name}\" ..."));
            match client.request(
                "DELETE",
                &format!("/api/vhosts/{}", encode_segment(name)),
                None,
            ) {
                Err(CtlError::Status { status: 404, .. }) => {
                    return Err(CtlError::said(
                        65,
                        format!("Virtual host '{name}' does not exist"),
                    ))
                }
                r => r.map(drop)?,
            }
        }
        CtlCommand::ListVhosts { columns } => {
            let cols = columns_or(columns, &["name"], VHOST_COLUMNS)?;
            let rows = client.get_json("/api/vhosts")?;
            say(out, "Listing vhosts ...".into());
            table(out, args, &cols, &rows, |row, col| match col {
                "tracing" => Some(row.get(col).cloned().unwrap_or(json!(false))),
                "description" => Some(row.get(col).cloned().unwrap_or(json!(""))),
                "tags" => Some(Value::String(format!(
                    "[{}]",
                    qgate::definitions::tags(row).join(", ")
                ))),
                _ => row.get(col).cloned(),
            });
        }
        CtlCommand::SetPermissions {
            username,
            conf,
            write,
            read,
        } => {
            say(
                out,
                format!(
                    "Setting permissions for user \"{username}\" in vhost \"{}\" ...",
                    args.vhost
                ),
            );
            user_and_vhost(&client, username, &args.vhost)?;
            let path = format!("/api/permissions/{vhost}/{}", encode_segment(username));
            let body = json!({"configure": conf, "write": write, "read": read});
            match client.request("PUT", &path, Some(&body)) {
                Err(CtlError::Status { reason, .. }) if reason.contains("regexp") => {
                    return Err(CtlError::said(69, format!("Error:\n{reason}")))
                }
                r => r.map(drop)?,
            }
        }
        CtlCommand::ClearPermissions { username } => {
            say(
                out,
                format!(
                    "Clearing permissions for user \"{username}\" in vhost \"{}\" ...",
                    args.vhost
                ),
            );
            user_and_vhost(&client, username, &args.vhost)?;
            let path = format!("/api/permissions/{vhost}/{}", encode_segment(username));
            match client.request("DELETE", &path, None) {
                // Clearing what is not set succeeds, as rabbitmqctl.
                Err(CtlError::Status { status: 404, .. }) => {}
                r => r.map(drop)?,
            }
        }
        CtlCommand::ListPermissions => {
            say(
                out,
                format!("Listing permissions for vhost \"{}\" ...", args.vhost),
            );
            let rows = match client.get_json(&format!("/api/vhosts/{vhost}/permissions")) {
                Err(CtlError::Status { status: 404, .. }) => {
                    return Err(CtlError::said(
                        65,
                        format!("Virtual host '{}' does not exist", args.vhost),
                    ))
                }
                r => r?,
            };
            let cols: Vec<String> = ["user", "configure", "write", "read"]
                .map(str::to_owned)
                .to_vec();
            table(out, args, &cols, &rows, |row, col| row.get(col).cloned());
        }
        CtlCommand::ListUserPermissions { username } => {
            say(
                out,
                format!("Listing permissions for user \"{username}\" ..."),
            );
            let path = format!("/api/users/{}/permissions", encode_segment(username));
            let rows = match client.get_json(&path) {
                Err(CtlError::Status { status: 404, .. }) => {
                    return Err(CtlError::said(
                        69,
                        format!("Error:\n{{:no_such_user, \"{username}\"}}"),
                    ))
                }
                r => r?,
            };
            let cols: Vec<String> = ["vhost", "configure", "write", "read"]
                .map(str::to_owned)
                .to_vec();
            table(out, args, &cols, &rows, |row, col| row.get(col).cloned());
        }
        CtlCommand::ExportDefinitions { file } => {
            let defs = client.get_json("/api/definitions")?;
            let text = serde_json::to_string(&defs).expect("JSON value serialises");
            if file == "-" {
                out.push_str(&text);
            } else {
                say(
                    out,
                    format!("Exporting definitions in JSON to a file at \"{file}\" ..."),
                );
                std::fs::write(file, text.as_bytes())
                    .map_err(|e| CtlError::said(73, format!("Error:\ncannot write {file}: {e}")))?;
            }
        }
        CtlCommand::ImportDefinitions { file } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| CtlError::said(65, format!("Error:\ncannot read stdin: {e}")))?;
                s
            } else {
                match std::fs::read_to_string(file) {
                    Ok(s) => s,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(CtlError::said(
                            65,
                            format!("Error (argument validation): Bad argument: File {file} does not exist"),
                        ))
                    }
                    Err(e) => {
                        return Err(CtlError::said(65, format!("Error:\ncannot read {file}: {e}")))
                    }
                }
            };
            say(
                out,
                format!("Importing definitions in JSON from a file at \"{file}\" ..."),
            );
            let defs: Value = serde_json::from_str(&text).map_err(|e| {
                CtlError::said(
                    65,
                    format!("Error:\nFailed to deserialise input (format: JSON) (error: {e})"),
                )
            })?;
            match client.request("POST", "/api/definitions", Some(&defs)) {
                Err(CtlError::Status {
                    status: 400,
                    reason,
                    ..
                }) => return Err(CtlError::said(69, format!("Error:\n{reason}"))),
                r => r.map(drop)?,
            }
            say(out, "Successfully started definition import. This process is asynchronous and can take some time.".into());
        }
        CtlCommand::ListQueues { columns } => {
            let cols = columns_or(columns, &["name", "messages"], QUEUE_COLUMNS)?;
            let rows = client.get_json(&format!("/api/queues/{vhost}"))?;
            banner(out, format!("Listing queues for vhost {} ...", args.vhost));
            table(out, args, &cols, &rows, |row, col| match col {
                "policy" => Some(Value::String(String::new())),
                _ => row.get(col).cloned(),
            });
        }
        CtlCommand::ListExchanges { columns } => {
            let cols = columns_or(columns, &["name", "type"], EXCHANGE_COLUMNS)?;
            let rows = client.get_json(&format!("/api/exchanges/{vhost}"))?;
            banner(
                out,
                format!("Listing exchanges for vhost {} ...", args.vhost),
            );
            table(out, args, &cols, &rows, |row, col| match col {
                "policy" => Some(Value::String(String::new())),
                _ => row.get(col).cloned(),
            });
        }
        CtlCommand::ListBindings { columns } => {
            let default = &BINDING_COLUMNS[..6];
            let cols = columns_or(columns, default, BINDING_COLUMNS)?;
            let rows = client.get_json(&format!("/api/bindings/{vhost}"))?;
            banner(out, format!("Listing bindings for vhost {}...", args.vhost));
            table(out, args, &cols, &rows, |row, col| match col {
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
            say(out, "Listing connections ...".into());
            table(out, args, &cols, &rows, |row, col| row.get(col).cloned());
        }
        CtlCommand::ListConsumers { columns } => {
            let default = &CONSUMER_COLUMNS[..7];
            let cols = columns_or(columns, default, CONSUMER_COLUMNS)?;
            let rows = client.get_json(&format!("/api/consumers/{vhost}"))?;
            say(
                out,
                format!("Listing consumers in vhost {} ...", args.vhost),
            );
            table(out, args, &cols, &rows, |row, col| match col {
                "queue_name" => row.pointer("/queue/name").cloned(),
                "channel_pid" => row.pointer("/channel_details/connection_name").cloned(),
                "arguments" => Some(Value::Object(Default::default())),
                _ => row.get(col).cloned(),
            });
        }
        CtlCommand::Status => {
            let o = client.get_json("/api/overview")?;
            status(out, &o, args.quiet);
            let node = client.get_json("/api/nodes")?;
            node_status(out, node.get(0).unwrap_or(&Value::Null));
            limits_status(out, &client.get_json("/api/qgate/limits")?);
            // 404 in local mode: only a gateway has an upstream to report.
            if let Ok(u) = client.get_json("/api/upstream") {
                upstream_status(out, &u);
            }
        }
        CtlCommand::Ping => {
            say(out, format!("Will ping qgate at {} ...", client.base));
            client.get("/api/healthchecks/node")?;
            out.push_str("Ping succeeded\n");
        }
        CtlCommand::Stop => {
            let o = client.get_json("/api/overview")?;
            let node = o.get("node").and_then(Value::as_str).unwrap_or("qgate");
            say(out, format!("Stopping and halting node {node} ..."));
            client.request("POST", "/api/qgate/stop", Some(&json!({})))?;
            // As rabbitmqctl stop: return once the broker is gone, so a script can
            // start it again right after.
            let deadline = std::time::Instant::now() + IO_TIMEOUT;
            while std::time::Instant::now() < deadline {
                if matches!(client.connect(), Err(CtlError::Unreachable { .. })) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return Err(CtlError::said(
                75,
                format!(
                    "Error:\nthe broker at {} did not stop within {} seconds",
                    client.base,
                    IO_TIMEOUT.as_secs()
                ),
            ));
        }
    }
    Ok(())
}

/// rabbitmqctl checks the user, then the vhost, before touching permissions.
fn user_and_vhost(client: &Client, user: &str, vhost: &str) -> Result<(), CtlError> {
    if !client.exists(&format!("/api/users/{}", encode_segment(user)))? {
        return Err(CtlError::said(
            67,
            format!("Error:\nUser {user} does not exist"),
        ));
    }
    if !client.exists(&format!("/api/vhosts/{}", encode_segment(vhost)))? {
        return Err(CtlError::said(
            69,
            format!("Error:\nVirtual host {vhost} does not exist"),
        ));
    }
    Ok(())
}

const VHOST_COLUMNS: &[&str] = &["name", "description", "tags", "tracing"];

/// How ctl proves who it is.
#[derive(Debug, Clone)]
enum Credentials {
    Basic(String, String),
    Cookie(String),
    None,
}

fn credentials(args: &CtlArgs) -> Credentials {
    if let Some(user) = &args.user {
        return Credentials::Basic(user.clone(), args.password.clone().unwrap_or_default());
    }
    match std::fs::read_to_string(args.data_dir.join(COOKIE_FILE)) {
        Ok(token) if !token.trim().is_empty() => Credentials::Cookie(token.trim().to_owned()),
        _ => Credentials::None,
    }
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
    // rabbitmqctl's memory items: what of the queue is in memory (the rest is paged).
    "messages_ram",
    "messages_ready_ram",
    "message_bytes_ready",
    "message_bytes_ram",
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
    let empty = Vec::new();
    let rows = rows.as_array().unwrap_or(&empty);
    // rabbitmqctl prints no header for an empty listing.
    if !args.no_table_headers && !rows.is_empty() {
        out.push_str(&cols.join("\t"));
        out.push('\n');
    }
    for row in rows {
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
            "http" => "Prometheus metrics",
            "management" => "HTTP API",
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

/// Bytes as rabbitmqctl status prints them (`0.0523 gb`, decimal gigabytes).
fn gb(bytes: u64) -> String {
    format!("{:.4} gb", bytes as f64 / 1e9)
}

/// rabbitmqctl status's Alarms, Memory and Free Disk Space sections, from /api/nodes.
fn node_status(out: &mut String, n: &Value) {
    let num = |k: &str| n.get(k).and_then(Value::as_u64).unwrap_or(0);
    let flag = |k: &str| n.get(k).and_then(Value::as_bool).unwrap_or(false);
    let name = n.get("name").and_then(Value::as_str).unwrap_or("qgate");
    out.push_str("\nAlarms\n\n");
    let mut any = false;
    if flag("mem_alarm") {
        out.push_str(&format!("Memory alarm on node {name}\n"));
        any = true;
    }
    if flag("disk_free_alarm") {
        out.push_str(&format!("Free disk space alarm on node {name}\n"));
        any = true;
    }
    if !any {
        out.push_str("(none)\n");
    }
    out.push_str("\nMemory\n\n");
    out.push_str(&format!("Total memory used: {}\n", gb(num("mem_used"))));
    out.push_str("Calculation strategy: rss\n");
    out.push_str(&format!(
        "Memory high watermark: {}\n",
        gb(num("mem_limit"))
    ));
    out.push_str("\nFree Disk Space\n\n");
    let limit = num("disk_free_limit");
    if limit == 0 {
        out.push_str("Low free disk space watermark: none (disk alarm off)\n");
    } else {
        out.push_str(&format!("Low free disk space watermark: {}\n", gb(limit)));
    }
    out.push_str(&format!("Free disk space: {}\n", gb(num("disk_free"))));
}

/// The limits a client can run into (README "Limits and hardening"); 0 = none.
fn limits_status(out: &mut String, limits: &Value) {
    out.push_str("\nLimits\n\n");
    if let Some(m) = limits.as_object() {
        for (k, v) in m {
            out.push_str(&format!("{k}: {v}\n"));
        }
    }
}

/// Upstream mode: the gateway's own figures and the upstream queue depths it has seen.
fn upstream_status(out: &mut String, u: &Value) {
    let num = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    out.push_str("\nUpstream\n\n");
    let empty = Vec::new();
    for c in u
        .get("connections")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        let node = c.get("node").and_then(Value::as_str).unwrap_or("");
        let up = c.get("connected").and_then(Value::as_bool).unwrap_or(false);
        let state = if up { "connected" } else { "down" };
        out.push_str(&format!("Connection: node {node}, {state}\n"));
    }
    if let Some(ops) = u.get("operations").and_then(Value::as_object) {
        for (op, counts) in ops {
            let c = |k: &str| counts.get(k).and_then(Value::as_u64).unwrap_or(0);
            out.push_str(&format!(
                "Operation {op}: ok {}, miss {}, error {}\n",
                c("ok"),
                c("miss"),
                c("error")
            ));
        }
    }
    out.push_str(&format!("Confirms: {}\n", num("/confirms")));
    let ms = |p: &str| match u.pointer(p).and_then(Value::as_f64) {
        Some(v) => format!("{v} ms"),
        None => "n/a".into(),
    };
    out.push_str(&format!(
        "Confirm latency: p50 {}, p99 {}\n",
        ms("/confirm_p50_ms"),
        ms("/confirm_p99_ms")
    ));
    out.push_str(&format!(
        "Possible duplicates: {}\n",
        num("/possible_duplicates")
    ));
    out.push_str(&format!(
        "Connections lost: {}, connect failures: {}\n",
        num("/connections_lost"),
        num("/connect_failures")
    ));
    if let Some(qs) = u.get("queues").and_then(Value::as_object) {
        for (q, d) in qs {
            let c = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
            out.push_str(&format!(
                "Queue {q}: messages_ready {}, consumers {}\n",
                c("messages_ready"),
                c("consumers")
            ));
        }
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
    credentials: Credentials,
}

impl Client {
    fn new(url: &str, credentials: Credentials) -> Result<Self, CtlError> {
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
            credentials,
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

    fn auth_header(&self) -> String {
        match &self.credentials {
            Credentials::Basic(u, p) => format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            ),
            Credentials::Cookie(token) => format!("{COOKIE_HEADER}: {token}\r\n"),
            Credentials::None => String::new(),
        }
    }

    /// Sends one request; returns the body of a 2xx answer. A refusal of ctl's own
    /// credentials comes back as advice on how to authenticate.
    fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<String, CtlError> {
        self.raw(method, path, body).map_err(|e| self.explain(e))
    }

    /// [`Client::request`] without the advice.
    fn raw(&self, method: &str, path: &str, body: Option<&Value>) -> Result<String, CtlError> {
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
        let payload = body.map(|b| serde_json::to_vec(b).expect("JSON value serialises"));
        let mut request = format!(
            "{method} {}{} HTTP/1.1\r\nHost: {}\r\nUser-Agent: qgate-ctl\r\nAccept: application/json\r\nConnection: close\r\n{}",
            self.prefix,
            path,
            host,
            self.auth_header()
        );
        if let Some(p) = &payload {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                p.len()
            ));
        } else if method != "GET" {
            request.push_str("Content-Length: 0\r\n");
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        if let Some(p) = payload {
            bytes.extend_from_slice(&p);
        }
        stream.write_all(&bytes).map_err(io)?;
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
        let mut body = raw[end + 4..].to_vec();
        if head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:")
                && l.to_ascii_lowercase().contains("chunked")
        }) {
            body = dechunk(&body).ok_or_else(|| protocol("bad chunked body".into()))?;
        }
        let body = String::from_utf8_lossy(&body).into_owned();
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
        if !(200..300).contains(&status) {
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

    fn get(&self, path: &str) -> Result<String, CtlError> {
        self.request("GET", path, None)
    }

    /// PUT / POST / DELETE with a JSON body.
    fn send(&self, method: &str, path: &str, body: &Value) -> Result<(), CtlError> {
        self.request(method, path, Some(body)).map(drop)
    }

    /// Whether GET `path` finds something (200) or not (404).
    fn exists(&self, path: &str) -> Result<bool, CtlError> {
        match self.raw("GET", path, None) {
            Ok(_) => Ok(true),
            Err(CtlError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(self.explain(e)),
        }
    }

    /// Turns a refusal of ctl's own credentials into advice.
    fn explain(&self, e: CtlError) -> CtlError {
        match e {
            CtlError::Status {
                status: 401 | 403,
                reason,
                ..
            } => {
                let how = match &self.credentials {
                    Credentials::Basic(u, _) => format!("user '{u}' was refused ({reason})"),
                    Credentials::Cookie(_) => format!("the local cookie was refused ({reason}): is --data-dir the data directory of the broker at {}?", self.base),
                    Credentials::None => format!("no credentials ({reason}): pass --user/--password of an administrator, or run on the broker's machine with --data-dir set to its data directory (its {COOKIE_FILE} file)"),
                };
                CtlError::said(77, format!("Error:\n{how}"))
            }
            other => other,
        }
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

/// Decodes a chunked transfer-encoded body.
fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let c = Client::new("http://127.0.0.1:15692", Credentials::None).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_str()),
            ("127.0.0.1", 15692, "")
        );
        let c = Client::new("http://[::1]:8080/qgate/", Credentials::None).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_str()),
            ("::1", 8080, "/qgate")
        );
        let c = Client::new("http://localhost", Credentials::None).unwrap();
        assert_eq!(c.port, 80);
        assert!(Client::new("https://x:1", Credentials::None).is_err());
        assert!(Client::new("http://x:notaport", Credentials::None).is_err());
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
