//! The `qgate` binary as users and scripts drive it: flags, env, config file, the
//! `listening protocol=... addr=...` lines, bind errors, signals and exit codes.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::{
    parse_listening, qgate_bin, run_to_end, spawn_broker, spawn_command, within, Addrs, TempDir,
};
use lapin::options::*;
use lapin::types::FieldTable;

/// `qgate` with no `QGATE_*` variables inherited from the test environment.
fn qgate() -> Command {
    let mut cmd = Command::new(qgate_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("QGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn assert_loopback_ephemeral(addrs: &Addrs) {
    for a in [addrs.amqp, addrs.memcache, addrs.http, addrs.management] {
        assert!(a.ip().is_loopback(), "{a}");
        assert_ne!(a.port(), 0, "{a}");
    }
    assert_ne!(addrs.amqp.port(), addrs.memcache.port());
    assert_ne!(addrs.amqp.port(), addrs.http.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_three_listening_lines_and_serves() {
    let broker = spawn_broker(&[]);
    assert_loopback_ephemeral(&broker.addrs);
    let stderr = broker.stderr();
    let mut protocols: Vec<String> = stderr
        .lines()
        .filter_map(parse_listening)
        .map(|(p, _)| p)
        .collect();
    protocols.sort();
    assert_eq!(
        protocols,
        vec!["amqp", "http", "management", "memcache"],
        "{stderr}"
    );
    for (p, a) in [
        ("amqp", broker.addrs.amqp),
        ("memcache", broker.addrs.memcache),
        ("http", broker.addrs.http),
        ("management", broker.addrs.management),
    ] {
        let needle = format!("listening protocol={p} addr={a}");
        assert!(stderr.contains(&needle), "no '{needle}' in:\n{stderr}");
    }
    // Each listener accepts TCP; AMQP serves a client.
    for a in [
        broker.addrs.memcache,
        broker.addrs.http,
        broker.addrs.management,
    ] {
        std::net::TcpStream::connect_timeout(&a, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect {a}: {e}"));
    }
    common::round_trip(&broker.addrs.amqp_uri()).await;
}

#[test]
fn port_in_use_fails_with_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new();
    let flags = [
        "--amqp-listen",
        "--memcache-listen",
        "--http-listen",
        "--management-listen",
    ];
    for flag in flags {
        let mut cmd = qgate();
        for f in flags {
            cmd.arg(f).arg(if f == flag {
                addr.as_str()
            } else {
                "127.0.0.1:0"
            });
        }
        cmd.arg("--data-dir").arg(dir.path());
        let (status, _out, err) = run_to_end(cmd, Duration::from_secs(15));
        assert!(!status.success(), "{flag} {addr} in use: exited {status}");
        assert!(
            err.contains(&addr),
            "{flag}: the error names the address {addr}:\n{err}"
        );
    }
    drop(taken);
}

#[test]
fn invalid_listen_address_is_rejected() {
    let dir = TempDir::new();
    let mut cmd = qgate();
    cmd.args(["--amqp-listen", "not-an-address", "--data-dir"])
        .arg(dir.path());
    let (status, _out, err) = run_to_end(cmd, Duration::from_secs(15));
    assert!(!status.success());
    assert!(err.contains("not-an-address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_connections_with_320_and_exits_0() {
    let mut broker = spawn_broker(&[]);
    let conn = common::round_trip(&broker.addrs.amqp_uri()).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    conn.on_error(move |e| {
        let _ = tx.send(e);
    });
    broker.signal(libc::SIGTERM);
    // round_trip's channel is closed (dropped) just before: lapin may first report that
    // close as cut short by the connection's close; the 320 is what must follow.
    let e = within("connection error after SIGTERM", async {
        loop {
            match rx.recv().await {
                Some(lapin::Error::InvalidChannelState(_)) => continue,
                other => break other,
            }
        }
    })
    .await
    .expect("an error");
    match &e {
        lapin::Error::ProtocolError(p) => {
            assert_eq!(p.get_id(), 320, "{p}");
            assert!(
                p.get_message().as_str().starts_with("CONNECTION_FORCED - "),
                "{p}"
            );
        }
        other => panic!("expected connection.close 320, got {other:?}"),
    }
    let status = tokio::task::spawn_blocking(move || {
        let s = broker.wait_timeout(Duration::from_secs(15));
        (s, broker.stderr())
    })
    .await
    .unwrap();
    match status {
        (Some(s), _) => assert_eq!(s.code(), Some(0), "exit status {s}"),
        (None, err) => panic!("qgate did not exit within 15 s of SIGTERM:\n{err}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_exits_0_and_stops_listening() {
    let mut broker = spawn_broker(&[]);
    let amqp = broker.addrs.amqp;
    // Give the process a moment after its listening lines (see
    // `signal_right_after_the_listening_lines_exits_0`).
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.signal(libc::SIGINT);
    let status = tokio::task::spawn_blocking(move || broker.wait_timeout(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("qgate exits after SIGINT");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        std::net::TcpStream::connect_timeout(&amqp, Duration::from_secs(2)).is_err(),
        "still accepting after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_sets_the_listen_addresses() {
    let dir = TempDir::new();
    let mut cmd = qgate();
    cmd.env("QGATE_AMQP_LISTEN", "127.0.0.1:0")
        .env("QGATE_MEMCACHE_LISTEN", "127.0.0.1:0")
        .env("QGATE_HTTP_LISTEN", "127.0.0.1:0")
        .env("QGATE_DATA_DIR", dir.path());
    let broker = spawn_command(cmd, Some(dir));
    assert_loopback_ephemeral(&broker.addrs);
    common::round_trip(&broker.addrs.amqp_uri()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_then_env_then_flags() {
    // Ports that are taken: any layer that still points at one would fail the start.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new();
    let file = dir.path().join("qgate.toml");
    std::fs::write(
        &file,
        format!(
            "vhosts = [\"/\", \"from-file\"]\n\
             [amqp]\nlisten = \"127.0.0.1:0\"\n\
             [memcache]\nlisten = \"{busy}\"\n\
             [http]\nlisten = \"{busy}\"\n\
             [management]\nlisten = \"127.0.0.1:0\"\n\
             [storage]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = qgate();
    cmd.arg("--config")
        .arg(&file)
        // env overrides the file ...
        .env("QGATE_MEMCACHE_LISTEN", "127.0.0.1:0")
        // ... and a flag overrides both.
        .env("QGATE_HTTP_LISTEN", &busy)
        .args(["--http-listen", "127.0.0.1:0"]);
    let broker = spawn_command(cmd, Some(dir));
    assert_loopback_ephemeral(&broker.addrs);
    // The file's vhost list is in force.
    let uri = format!("amqp://guest:guest@{}/from-file", broker.addrs.amqp);
    common::round_trip(&uri).await;
    drop(taken);
}

#[test]
fn bad_config_file_is_reported() {
    let dir = TempDir::new();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "no_such_setting = 1\n").unwrap();
    let mut cmd = qgate();
    cmd.arg("--config").arg(&file);
    let (status, _out, err) = run_to_end(cmd, Duration::from_secs(15));
    assert!(!status.success());
    assert!(err.contains("bad.toml"), "{err}");

    let mut cmd = qgate();
    cmd.arg("--config").arg(dir.path().join("missing.toml"));
    let (status, _out, err) = run_to_end(cmd, Duration::from_secs(15));
    assert!(!status.success());
    assert!(err.contains("missing.toml"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_subcommand_is_the_default() {
    let dir = TempDir::new();
    let mut cmd = qgate();
    cmd.args([
        "serve",
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
    .arg(dir.path());
    let broker = spawn_command(cmd, Some(dir));
    common::round_trip(&broker.addrs.amqp_uri()).await;
}

const FLAGS: &[&str] = &[
    "--config",
    "--amqp-listen",
    "--memcache-listen",
    "--http-listen",
    "--management-listen",
    "--data-dir",
    "--fsync",
    "--log",
    "--memcache-max-message",
    "--memcache-vhost",
    "--metrics-prefix",
    "--heartbeat",
];

#[test]
fn help_mentions_every_flag() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let mut cmd = qgate();
        cmd.args(args);
        let (status, out, err) = run_to_end(cmd, Duration::from_secs(15));
        assert!(status.success(), "{args:?}: {status}\n{err}");
        for flag in FLAGS {
            assert!(out.contains(flag), "{args:?}: help lacks {flag}:\n{out}");
        }
    }
    let mut cmd = qgate();
    cmd.arg("--version");
    let (status, out, _) = run_to_end(cmd, Duration::from_secs(15));
    assert!(status.success());
    assert!(out.contains(env!("CARGO_PKG_VERSION")), "{out}");
}

#[test]
fn unknown_flag_is_an_error() {
    let mut cmd = qgate();
    cmd.arg("--no-such-flag");
    let (status, _out, err) = run_to_end(cmd, Duration::from_secs(15));
    assert!(!status.success());
    assert!(err.contains("--no-such-flag"), "{err}");
}

#[test]

fn signal_right_after_the_listening_lines_exits_0() {
    // The race is narrow: try it many times, with both signals.
    for i in 0..100 {
        let sig = if i % 2 == 0 {
            libc::SIGTERM
        } else {
            libc::SIGINT
        };
        let mut broker = spawn_broker(&[]);
        broker.signal(sig);
        let status = broker
            .wait_timeout(Duration::from_secs(15))
            .expect("qgate exits after the signal");
        assert_eq!(
            status.code(),
            Some(0),
            "attempt {i}: signal {sig} sent right after the listening lines: {status}"
        );
    }
}

/// A cycle of exchange-to-exchange bindings must not make routing loop (run against a
/// child process, so a stack overflow cannot take the test binary down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_binding_cycle_does_not_loop() {
    use lapin::publisher_confirm::Confirmation;
    let broker = spawn_broker(&[]);
    let conn = common::round_trip(&broker.addrs.amqp_uri()).await;
    let ch = within("channel", conn.create_channel()).await.unwrap();
    let a = common::unique("cycle-a");
    let b = common::unique("cycle-b");
    for x in [&a, &b] {
        within(
            "exchange.declare",
            ch.exchange_declare(
                x,
                lapin::ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
    }
    for (dst, src) in [(&a, &b), (&b, &a)] {
        within(
            "exchange.bind",
            ch.exchange_bind(
                dst,
                src,
                "",
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
    }
    let q = common::unique("cycle-q");
    within(
        "declare",
        ch.queue_declare(&q, QueueDeclareOptions::default(), FieldTable::default()),
    )
    .await
    .unwrap();
    within(
        "bind",
        ch.queue_bind(
            &q,
            &b,
            "",
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    let c = within(
        "publish",
        ch.basic_publish(
            &a,
            "",
            BasicPublishOptions::default(),
            b"round",
            lapin::BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(within("confirm", c).await.unwrap(), Confirmation::Ack(None));
    let m = within("get", ch.basic_get(&q, BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("one copy");
    assert_eq!(m.delivery.data, b"round");
    let again = within("get", ch.basic_get(&q, BasicGetOptions { no_ack: true }))
        .await
        .unwrap();
    assert!(again.is_none(), "exactly one copy");
}
