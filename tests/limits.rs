//! The `Limits` struct (config) agrees with the constants the front ends enforce, and
//! the flags feed it.

use std::ffi::OsStr;

use qgate::config::{Config, FLAGS, MEMCACHE_MAX_LINE};

#[test]
fn limits_match_what_the_parsers_enforce() {
    let l = Config::default().limits();
    assert_eq!(
        l.memcache_max_line,
        qgate::memcache::parser::DEFAULT_MAX_LINE as u64
    );
    assert_eq!(
        MEMCACHE_MAX_LINE as usize,
        qgate::memcache::parser::DEFAULT_MAX_LINE
    );
    assert_eq!(l.table_max_depth, qgate::content::value::MAX_DEPTH as u64);
    assert_eq!(l.channel_max, 2047);
    assert_eq!(l.frame_max, 131_072);
    assert_eq!(l.amqp_connection_max, 0);
    assert_eq!(l.memcache_connection_max, 1024);
    assert_eq!(l.handshake_timeout_ms, 10_000);
    assert_eq!(l.memcache_idle_timeout_s, 0);
}

#[test]
fn overrides_reach_the_limits() {
    let given: Vec<_> = [
        ("amqp-connection-max", "5"),
        ("memcache-connection-max", "6"),
        ("channel-max", "7"),
        ("frame-max", "8192"),
        ("max-message-size", "1000"),
        ("handshake-timeout", "500"),
        ("memcache-idle-timeout", "9"),
    ]
    .into_iter()
    .map(|(flag, value)| {
        let flag = FLAGS.iter().find(|f| f.flag == flag).expect(flag);
        (flag, OsStr::new(value))
    })
    .collect();
    let mut c = Config::load(None, &given).unwrap();
    let l = c.limits();
    assert_eq!(
        (
            l.amqp_connection_max,
            l.memcache_connection_max,
            l.channel_max,
            l.frame_max
        ),
        (5, 6, 7, 8192)
    );
    assert_eq!(
        (
            l.max_message_size,
            l.handshake_timeout_ms,
            l.memcache_idle_timeout_s
        ),
        (1000, 500, 9)
    );
    c.amqp.max_message = 600 * 1024 * 1024;
    assert!(
        c.validate().is_err(),
        "max_message_size above RabbitMQ's 512 MiB cap"
    );
}

#[test]
fn toml_keys_for_the_new_limits() {
    let c: Config = toml::from_str(
        "[amqp]\nconnection_max = 3\nhandshake_timeout = 2000\n[memcache]\nconnection_max = 4\nidle_timeout = 30\n",
    )
    .unwrap();
    let l = c.limits();
    assert_eq!(
        (
            l.amqp_connection_max,
            l.handshake_timeout_ms,
            l.memcache_connection_max,
            l.memcache_idle_timeout_s
        ),
        (3, 2000, 4, 30)
    );
}
