//! Smoke test of the load generator: `qgate-bench` runs for one second against a broker
//! running on loopback, in amqp and memcache modes, and messages flow. No timing
//! assertion: speed is judged by `scripts/bench-compare`, not by the test suite.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A broker running in this process on loopback port 0 (the bench's package cannot
/// name the broker's binary, so the test runs the library's `server::run`, which is
/// what that binary runs). Dropping it shuts the broker down.
struct Broker {
    amqp: String,
    memcache: String,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!(
            "qgate-bench-smoke-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_broker(tag: &str) -> Broker {
    let dir = TempDir::new(tag);
    let mut config = qgate::config::Config::default();
    for listen in [
        &mut config.amqp.listen,
        &mut config.memcache.listen,
        &mut config.http.listen,
        &mut config.management.listen,
    ] {
        *listen = ([127, 0, 0, 1], 0).into();
    }
    config.storage.fsync = qgate::config::FsyncPolicy::Never;
    config.storage.data_dir = dir.0.clone();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let (tx, rx) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let result = runtime.block_on(qgate::server::run(config, token, move |bound| {
            let _ = tx.send(bound);
        }));
        if let Err(e) = result {
            eprintln!("broker: {e}");
        }
        runtime.shutdown_timeout(Duration::from_secs(5));
    });
    let bound = rx
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("qgate did not report its listeners"));
    Broker {
        amqp: bound.amqp.to_string(),
        memcache: bound.memcache.to_string(),
        shutdown,
        thread: Some(thread),
        _dir: dir,
    }
}

/// Runs qgate-bench; returns (exit success, stdout, stderr).
fn bench(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qgate-bench"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run qgate-bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The run published and consumed messages, without errors.
fn assert_moved(out: &str) {
    assert!(result_field(out, "consumed") > 0.0, "{out}");
    assert!(result_field(out, "published") > 0.0, "{out}");
    assert_eq!(result_field(out, "errors"), 0.0, "{out}");
}

fn result_field(stdout: &str, key: &str) -> f64 {
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in:\n{stdout}"));
    assert_eq!(
        stdout.lines().last(),
        Some(line),
        "RESULT must be the last line"
    );
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap_or_else(|_| panic!("{key} not a number in {line}"))
}

#[test]
fn amqp_mode_moves_messages() {
    let b = start_broker("amqp");
    let url = format!("amqp://guest:guest@{}/%2f", b.amqp);
    let (ok, out, err) = bench(&[
        "amqp",
        "--url",
        &url,
        "--producers",
        "2",
        "--consumers",
        "2",
        "--queues",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--ack",
        "manual",
        "--prefetch",
        "50",
        "--max-backlog",
        "1000",
    ]);
    assert!(ok, "qgate-bench amqp failed:\n{out}\n{err}");
    assert_moved(&out);
    assert!(result_field(&out, "p99_us") > 0.0, "{out}");
}

#[test]
fn amqp_mode_with_confirms_and_persistence() {
    let b = start_broker("confirm");
    let url = format!("amqp://guest:guest@{}/%2f", b.amqp);
    let (ok, out, err) = bench(&[
        "amqp",
        "--url",
        &url,
        "--producers",
        "1",
        "--consumers",
        "1",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--persistent",
        "--confirm",
        "--ack",
        "auto",
    ]);
    assert!(ok, "qgate-bench amqp --confirm failed:\n{out}\n{err}");
    assert_moved(&out);
}

#[test]
fn amqp_mode_raw_engine_moves_messages() {
    let b = start_broker("raw");
    let url = format!("amqp://guest:guest@{}/%2f", b.amqp);
    for extra in [&["--ack", "manual"][..], &["--persistent", "--confirm"][..]] {
        let mut args = vec![
            "amqp",
            "--engine",
            "raw",
            "--url",
            &url,
            "--producers",
            "2",
            "--consumers",
            "2",
            "--queues",
            "2",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err) = bench(&args);
        assert!(
            ok,
            "qgate-bench amqp --engine raw {extra:?} failed:\n{out}\n{err}"
        );
        assert_moved(&out);
    }
}

#[test]
fn memcache_mode_moves_messages() {
    let b = start_broker("memcache");
    for pipeline in ["1", "16"] {
        let (ok, out, err) = bench(&[
            "memcache",
            "--addr",
            &b.memcache,
            "--setters",
            "2",
            "--getters",
            "2",
            "--queues",
            "2",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--pipeline",
            pipeline,
        ]);
        assert!(ok, "qgate-bench memcache failed:\n{out}\n{err}");
        assert!(result_field(&out, "consumed") > 0.0, "{out}");
        assert_eq!(result_field(&out, "errors"), 0.0, "{out}");
    }
}

#[test]
fn idle_mode_holds_connections() {
    let b = start_broker("idle");
    let (ok, out, err) = bench(&[
        "idle",
        "--addr",
        &b.amqp,
        "--connections",
        "20",
        "--hold",
        "100ms",
    ]);
    assert!(ok, "qgate-bench idle failed:\n{out}\n{err}");
    assert_eq!(result_field(&out, "connections"), 20.0, "{out}");
    assert_eq!(result_field(&out, "errors"), 0.0, "{out}");
}

#[test]
fn unreachable_server_is_an_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let addr = format!("127.0.0.1:{port}");
    for args in [
        vec!["amqp", "--url", &url, "--duration", "1s"],
        vec!["amqp", "--engine", "raw", "--url", &url, "--duration", "1s"],
        vec!["memcache", "--addr", &addr, "--duration", "1s"],
        vec!["idle", "--addr", &addr, "--connections", "1"],
    ] {
        let (ok, out, err) = bench(&args);
        assert!(!ok, "{args:?} should fail:\n{out}\n{err}");
        assert!(err.contains("cannot connect"), "{args:?}: {err}");
        assert!(!out.contains("RESULT "), "{args:?}: {out}");
    }
}

/// Runs one `qgate-bench deep` phase against `url`; returns (exit success, stdout).
fn deep(url: &str, args: &[&str]) -> (bool, String) {
    let mut all = vec!["deep", args[0], "--url", url, "--size", "256"];
    all.extend_from_slice(&args[1..]);
    let (ok, out, err) = bench(&all);
    assert!(
        out.contains("RESULT mode=deep"),
        "deep {args:?}: no RESULT:\n{out}\n{err}"
    );
    (ok, out)
}

#[test]
fn deep_mode_counts_and_checks_order() {
    let b = start_broker("deep");
    let url = format!("amqp://guest:guest@{}/%2f", b.amqp);

    // A clean fill and drain: every message once, in order, the queue empty after.
    let (ok, out) = deep(&url, &["fill", "--queue", "in-order", "--messages", "3000"]);
    assert!(ok, "{out}");
    assert_eq!(result_field(&out, "confirmed"), 3000.0, "{out}");
    let (ok, out) = deep(
        &url,
        &["drain", "--queue", "in-order", "--messages", "3000"],
    );
    assert!(ok, "{out}");
    assert!(out.contains(" in_order=true "), "{out}");
    for (k, v) in [("distinct", 3000.0), ("consumed", 3000.0), ("lost", 0.0)] {
        assert_eq!(result_field(&out, k), v, "{k}: {out}");
    }
    assert_eq!(result_field(&out, "duplicates"), 0.0, "{out}");
    assert_eq!(result_field(&out, "left"), 0.0, "{out}");

    // Sequences 500..1000 and then 0..600: two steps out of order and 100 copies, which
    // the drain counts after the last expected message; the run fails.
    for (first, n) in [("500", "500"), ("0", "600")] {
        let (ok, out) = deep(
            &url,
            &[
                "fill",
                "--queue",
                "shuffled",
                "--first-seq",
                first,
                "--messages",
                n,
            ],
        );
        assert!(ok, "{out}");
    }
    let (ok, out) = deep(
        &url,
        &["drain", "--queue", "shuffled", "--messages", "1000"],
    );
    assert!(!ok, "violations must fail the run:\n{out}");
    assert!(out.contains(" in_order=false "), "{out}");
    for (k, v) in [
        ("distinct", 1000.0),
        ("consumed", 1100.0),
        ("duplicates", 100.0),
        ("out_of_order", 2.0),
        ("lost", 0.0),
        ("left", 0.0),
    ] {
        assert_eq!(result_field(&out, k), v, "{k}: {out}");
    }

    // Fewer messages than expected: the drain gives up after the idle timeout and
    // counts the missing ones as lost.
    let (ok, out) = deep(&url, &["fill", "--queue", "short", "--messages", "900"]);
    assert!(ok, "{out}");
    let (ok, out) = deep(
        &url,
        &[
            "drain",
            "--queue",
            "short",
            "--messages",
            "1000",
            "--idle-timeout",
            "1s",
        ],
    );
    assert!(!ok, "lost messages must fail the run:\n{out}");
    assert_eq!(result_field(&out, "lost"), 100.0, "{out}");
    assert_eq!(result_field(&out, "distinct"), 900.0, "{out}");

    // Publisher and consumer at once, and many queues filled then deleted.
    let (ok, out) = deep(&url, &["live", "--queue", "live", "--messages", "2000"]);
    assert!(ok, "{out}");
    assert!(out.contains(" in_order=true "), "{out}");
    assert_eq!(result_field(&out, "confirmed"), 2000.0, "{out}");
    let many = ["--queue", "many", "--queues", "20", "--messages", "210"];
    let (ok, out) = deep(&url, &[&["fill"][..], &many[..]].concat());
    assert!(ok, "{out}");
    let (ok, out) = deep(&url, &[&["delete"][..], &many[..]].concat());
    assert!(ok, "{out}");
    assert_eq!(result_field(&out, "deleted"), 210.0, "{out}");
}
