//! What a new user reads when starting `qgate` goes wrong, or right the first time:
//! each error said once, a bad setting refused by its name (flag, env or file) with its
//! accepted values before anything starts, and a fresh data directory reported as a new
//! store.

mod common;

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::{qgate_bin, run_to_end, spawn_command, TempDir};

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

/// `qgate` with `args`, every listener on 127.0.0.1 port 0 unless `args` sets it.
fn qgate_with(args: &[&str]) -> Command {
    let mut cmd = qgate();
    for flag in [
        "--amqp-listen",
        "--memcache-listen",
        "--http-listen",
        "--management-listen",
    ] {
        if !args.contains(&flag) {
            cmd.args([flag, "127.0.0.1:0"]);
        }
    }
    cmd.args(args);
    cmd
}

#[test]
fn port_in_use_prints_the_os_error_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = TempDir::new();
    let mut cmd = qgate_with(&["--amqp-listen", &addr, "--data-dir"]);
    cmd.arg(dir.path());
    let (status, _out, err) = run_to_end(cmd, Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("qgate: error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{err}"));
    assert!(line.contains(&addr), "{line}");
    assert_eq!(line.matches("in use").count(), 1, "{line}");
    drop(taken);
}

/// The error line of a run that must refuse its configuration before starting.
fn refused(mut cmd: Command, data_dir: &std::path::Path) -> String {
    cmd.arg("--data-dir").arg(data_dir);
    let (status, _out, err) = run_to_end(cmd, Duration::from_secs(15));
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        !data_dir.exists(),
        "the data directory was created before the settings were checked"
    );
    assert!(!err.contains("listening"), "started listening:\n{err}");
    err.lines()
        .find(|l| l.starts_with("qgate: error:"))
        .unwrap_or_else(|| panic!("no error line in:\n{err}"))
        .to_owned()
}

#[test]
fn a_bad_fsync_value_names_the_setting_and_its_accepted_values() {
    let tmp = TempDir::new();
    let data = tmp.path().join("data");
    let accepted = "expected always, never or interval:<ms>";

    let line = refused(qgate_with(&["--fsync", "sometimes"]), &data);
    assert!(
        line.contains("--fsync") && line.contains("'sometimes'"),
        "{line}"
    );
    assert!(line.contains(accepted), "{line}");
    assert!(!line.contains("data directory"), "{line}");

    let mut cmd = qgate_with(&[]);
    cmd.env("QGATE_FSYNC", "interval:soon");
    let line = refused(cmd, &data);
    assert!(
        line.contains("QGATE_FSYNC") && line.contains(accepted),
        "{line}"
    );

    let file = tmp.path().join("qgate.toml");
    std::fs::write(&file, "[storage]\nfsync = \"rarely\"\n").unwrap();
    let mut cmd = qgate_with(&[]);
    cmd.arg("--config").arg(&file);
    let line = refused(cmd, &data);
    assert!(
        line.contains("storage.fsync") && line.contains(accepted),
        "{line}"
    );
}

#[test]
fn other_bad_settings_are_refused_by_name_before_anything_starts() {
    let tmp = TempDir::new();
    let data = tmp.path().join("data");
    for (args, name) in [
        (&["--log", "qgate=loud"][..], "--log"),
        (&["--metrics-prefix", "9bad"][..], "--metrics-prefix"),
        (
            &["--memory-high-watermark", "lots"][..],
            "--memory-high-watermark",
        ),
        (&["--memcache-vhost", "/nowhere"][..], "--memcache-vhost"),
        (&["--http-listen", "localhost"][..], "--http-listen"),
    ] {
        let line = refused(qgate_with(args), &data);
        assert!(line.contains(name), "{args:?}: {line}");
        assert!(line.contains("invalid setting"), "{args:?}: {line}");
    }
}

#[test]
fn a_memcache_vhost_missing_from_an_existing_data_directory_is_said_to_clients() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new();
    let data = dir.path().join("data");
    let mut cmd = qgate_with(&["--data-dir"]);
    cmd.arg(&data);
    let mut broker = spawn_command(cmd, None);
    assert_eq!(broker.terminate(), Some(0));
    // Vhosts change at runtime: the broker starts, warns, and tells memcache clients.
    let mut cmd = qgate_with(&["--memcache-vhost", "/later", "--data-dir"]);
    cmd.arg(&data);
    let broker = spawn_command(cmd, None);
    let log = broker.stderr();
    assert!(log.contains("the memcache vhost does not exist"), "{log}");
    let sock = std::net::TcpStream::connect(broker.addrs.memcache).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    BufReader::new(sock).read_line(&mut line).unwrap();
    assert_eq!(line, "SERVER_ERROR vhost '/later' does not exist\r\n");
}

#[test]
fn a_fresh_data_directory_is_reported_as_a_new_store() {
    let dir = TempDir::new();
    let data = dir.path().join("data");
    let start = || {
        let mut cmd = qgate_with(&["--data-dir"]);
        cmd.arg(&data);
        spawn_command(cmd, None)
    };
    let mut broker = start();
    let log = broker.stderr();
    assert!(log.contains("created a new store"), "{log}");
    assert!(!log.contains("clean=false"), "{log}");
    assert_eq!(broker.terminate(), Some(0));
    // The second start finds what the first left.
    let broker = start();
    let log = broker.stderr();
    assert!(log.contains("recovering after a clean shutdown"), "{log}");
    assert!(!log.contains("created a new store"), "{log}");
}

#[test]
fn file_values_that_a_flag_or_variable_overrides_are_not_read() {
    // Precedence is file < env < flag: a bad value in the file loses to the flag or
    // variable, and the broker starts with the winners (as before values were typed).
    let dir = TempDir::new();
    let file = dir.path().join("qgate.toml");
    std::fs::write(
        &file,
        "disk_free_limit = \"lots\"\n[amqp]\nlisten = \"nowhere\"\nhandshake_timeout = 0\n\
         [storage]\nfsync = \"rarely\"\n",
    )
    .unwrap();
    // The AMQP address comes from the variable (no --amqp-listen), the rest from flags.
    let mut cmd = qgate();
    for flag in ["--memcache-listen", "--http-listen", "--management-listen"] {
        cmd.args([flag, "127.0.0.1:0"]);
    }
    cmd.args(["--fsync", "never", "--handshake-timeout", "500", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("QGATE_DISK_FREE_LIMIT", "0")
        .env("QGATE_AMQP_LISTEN", "127.0.0.1:0");
    let broker = spawn_command(cmd, Some(dir));
    assert!(
        broker.addrs.amqp.ip().is_loopback(),
        "{}",
        broker.addrs.amqp
    );
    assert_ne!(broker.addrs.amqp.port(), 0);
}
