//! Shared helpers for the black-box tests: start a broker on 127.0.0.1 port 0, either
//! in-process (a dedicated thread with its own tokio runtime) or as a child process of the
//! `qgate` binary, learn its bound addresses, and stop it when the handle is dropped.
//!
//! Every wait here has a deadline, so a broker that hangs fails the test instead of
//! hanging it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Bound addresses of a running broker.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// AMQP listener.
    pub amqp: SocketAddr,
    /// memcache listener.
    pub memcache: SocketAddr,
    /// HTTP listener.
    pub http: SocketAddr,
    /// Management listener.
    pub management: SocketAddr,
}

impl Addrs {
    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn amqp_uri(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.amqp)
    }
}

/// A fresh, unique, existing temporary directory; removed by [`TempDir`]'s Drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/qgate-test-<pid>-<nanos>-<n>`.
    pub fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "qgate-test-{}-{}-{}",
            std::process::id(),
            nanos,
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Total size of the segment files of the store in `dir` (what the data directory's
/// `segments/` holds on disk).
pub fn segments_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// A test configuration: every listener on 127.0.0.1 port 0, a unique data dir.
pub fn test_config(data_dir: &Path) -> qgate::config::Config {
    let mut config = qgate::config::Config::default();
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.amqp.listen = loopback;
    config.memcache.listen = loopback;
    config.http.listen = loopback;
    config.management.listen = loopback;
    config.storage.data_dir = data_dir.to_path_buf();
    config.log = "warn".into();
    config
}

/// A broker running in this process. Dropping it shuts the broker down and waits for
/// `server::run` to return.
pub struct Broker {
    /// Bound addresses.
    pub addrs: Addrs,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<Result<(), String>>>,
    _dir: TempDir,
}

impl Broker {
    /// AMQP address.
    pub fn amqp(&self) -> SocketAddr {
        self.addrs.amqp
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f`
    pub fn uri(&self) -> String {
        self.addrs.amqp_uri()
    }

    /// Triggers shutdown without waiting (the same thing SIGTERM does in the binary).
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts down and waits for `server::run` to return; its result.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), String> {
        self.shutdown.cancel();
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !thread.is_finished() {
            if Instant::now() > deadline {
                return Err("broker did not stop within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        thread
            .join()
            .map_err(|_| "broker thread panicked".to_string())?
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// Starts a broker in-process with the default test configuration.
pub fn start_broker() -> Broker {
    start_broker_with(|_| {})
}

/// Starts a broker in-process after letting `tweak` adjust the test configuration.
pub fn start_broker_with(tweak: impl FnOnce(&mut qgate::config::Config)) -> Broker {
    let dir = TempDir::new();
    let mut config = test_config(dir.path());
    tweak(&mut config);
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("qgate-test-broker".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let result = runtime.block_on(qgate::server::run(config, token, move |bound| {
                let _ = tx.send(bound);
            }));
            runtime.shutdown_timeout(Duration::from_secs(5));
            result.map_err(|e| e.to_string())
        })
        .expect("spawn broker thread");
    let bound = match rx.recv_timeout(WAIT) {
        Ok(b) => b,
        Err(_) => {
            shutdown.cancel();
            let why = if thread.is_finished() {
                match thread.join() {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => "server returned before binding".into(),
                    Err(_) => "broker thread panicked".into(),
                }
            } else {
                "no bound addresses within the deadline".into()
            };
            panic!("broker did not start: {why}");
        }
    };
    Broker {
        addrs: Addrs {
            amqp: bound.amqp,
            memcache: bound.memcache,
            http: bound.http,
            management: bound.management,
        },
        shutdown,
        thread: Some(thread),
        _dir: dir,
    }
}

// ---- child process ------------------------------------------------------------------

/// Path of the `qgate` binary built for these tests.
pub fn qgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_qgate")
}

/// A `qgate` child process. Its stderr is read by a thread into [`ChildBroker::stderr`].
/// Dropping it kills the process if it still runs.
pub struct ChildBroker {
    /// The process.
    pub child: Child,
    /// Bound addresses (from the `listening protocol=... addr=...` lines).
    pub addrs: Addrs,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: Option<TempDir>,
}

/// Extracts `(protocol, addr)` from a `listening protocol=<p> addr=<ip:port>` log line.
pub fn parse_listening(line: &str) -> Option<(String, SocketAddr)> {
    if !line.contains("listening") {
        return None;
    }
    let mut protocol = None;
    let mut addr = None;
    for word in line.split_whitespace() {
        if let Some(p) = word.strip_prefix("protocol=") {
            protocol = Some(p.trim_matches('"').to_string());
        } else if let Some(a) = word.strip_prefix("addr=") {
            addr = a.trim_matches('"').parse().ok();
        }
    }
    Some((protocol?, addr?))
}

/// Reads `child`'s stderr on a thread; returns the shared list of lines and a receiver
/// that gets each line as it comes.
fn drain_stderr(child: &mut Child) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>) {
    let stderr = child.stderr.take().expect("stderr piped");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let store = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            store.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    });
    (lines, rx)
}

/// Starts `qgate` with the given extra arguments after `--amqp-listen 127.0.0.1:0
/// --memcache-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir <tmp>` and waits
/// for its three `listening` lines.
pub fn spawn_broker(extra: &[&str]) -> ChildBroker {
    let dir = TempDir::new();
    let mut cmd = Command::new(qgate_bin());
    cmd.args([
        "--amqp-listen",
        "127.0.0.1:0",
        "--memcache-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--management-listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir.path())
    .args(extra);
    spawn_command(cmd, Some(dir))
}

/// Starts `cmd` (stderr is piped and env `QGATE_*` from the test environment is left
/// as is, except that the management listener gets port 0 unless `cmd` sets it) and
/// waits for the four `listening` lines.
pub fn spawn_command(mut cmd: Command, dir: Option<TempDir>) -> ChildBroker {
    if !cmd.get_envs().any(|(k, _)| k == "QGATE_MANAGEMENT_LISTEN") {
        cmd.env("QGATE_MANAGEMENT_LISTEN", "127.0.0.1:0");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn qgate");
    let (lines, rx) = drain_stderr(&mut child);
    let deadline = Instant::now() + WAIT;
    let (mut amqp, mut memcache, mut http, mut management) = (None, None, None, None);
    while amqp.is_none() || memcache.is_none() || http.is_none() || management.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some((p, a)) = parse_listening(&line) {
                    match p.as_str() {
                        "amqp" => amqp = Some(a),
                        "memcache" => memcache = Some(a),
                        "http" => http = Some(a),
                        "management" => management = Some(a),
                        _ => {}
                    }
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "qgate did not log its four listening lines; stderr:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        }
    }
    ChildBroker {
        child,
        addrs: Addrs {
            amqp: amqp.unwrap(),
            memcache: memcache.unwrap(),
            http: http.unwrap(),
            management: management.unwrap(),
        },
        lines,
        _dir: dir,
    }
}

impl ChildBroker {
    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }

    /// SIGTERM, and the exit code within 15 s (`None` if it did not exit).
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal(libc::SIGTERM);
        self.wait_timeout(Duration::from_secs(15))
            .and_then(|s| s.code())
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to completion (with a deadline) and returns its status and stderr.
pub fn run_to_end(mut cmd: Command, timeout: Duration) -> (ExitStatus, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let status = match wait_child(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command did not finish within {timeout:?}");
        }
    };
    (status, out_t.join().unwrap(), err_t.join().unwrap())
}

// ---- async helpers --------------------------------------------------------------------

/// Awaits `fut` for at most `WAIT`, failing the test with `what` otherwise.
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

/// A name unique to this process and call, prefixed with `prefix`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connects with lapin and round-trips one message through a fresh queue.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub async fn round_trip(uri: &str) -> lapin::Connection {
    let conn = within(
        "lapin connect",
        lapin::Connection::connect(uri, lapin::ConnectionProperties::default()),
    )
    .await
    .expect("connect");
    let ch = within("channel", conn.create_channel()).await.unwrap();
    let q = unique("cli");
    within(
        "declare",
        ch.queue_declare(
            &q,
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    within(
        "publish",
        ch.basic_publish(
            "",
            &q,
            lapin::options::BasicPublishOptions::default(),
            b"cli",
            lapin::BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    let m = within(
        "get",
        ch.basic_get(&q, lapin::options::BasicGetOptions { no_ack: true }),
    )
    .await
    .unwrap()
    .expect("message");
    assert_eq!(m.delivery.data, b"cli");
    conn
}
