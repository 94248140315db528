//! The memcache front end through a real socket, against a `qgate` child process (so the
//! process-wide memcache counters belong to one test): `STORED` only for stored
//! messages, memcacheq's `stats` fields and `stats reset`, and a timed `get` whose
//! client hangs up.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{spawn_broker, unique, within, ChildBroker};
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};

/// One memcache client connection with line-oriented reads.
struct Mc {
    rd: BufReader<TcpStream>,
    wr: TcpStream,
}

impl Mc {
    fn connect(addr: SocketAddr) -> Mc {
        let s = TcpStream::connect(addr).expect("connect memcache");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Mc {
            rd: BufReader::new(s.try_clone().unwrap()),
            wr: s,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).unwrap();
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.rd.read_line(&mut l).expect("an answer line in time");
        assert!(l.ends_with("\r\n"), "unterminated answer {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    fn set(&mut self, q: &str, body: &str) -> String {
        self.send(format!("set {q} 0 0 {}\r\n{body}\r\n", body.len()).as_bytes());
        self.line()
    }

    /// The bodies a `get` returned (empty for a miss).
    fn get(&mut self, keys: &str) -> Vec<String> {
        self.send(format!("get {keys}\r\n").as_bytes());
        let mut bodies = Vec::new();
        loop {
            let l = self.line();
            if l == "END" {
                return bodies;
            }
            let n: usize = l.rsplit(' ').next().unwrap().parse().unwrap();
            let mut data = vec![0; n + 2];
            self.rd.read_exact(&mut data).unwrap();
            data.truncate(n);
            bodies.push(String::from_utf8(data).unwrap());
        }
    }

    /// `stats` as (name, value) pairs, in the order served.
    fn stats(&mut self) -> Vec<(String, String)> {
        self.send(b"stats\r\n");
        let mut out = Vec::new();
        loop {
            let l = self.line();
            if l == "END" {
                return out;
            }
            let mut w = l.splitn(3, ' ');
            assert_eq!(w.next(), Some("STAT"), "{l:?}");
            out.push((w.next().unwrap().into(), w.next().unwrap_or("").into()));
        }
    }

    fn stat(&mut self, name: &str) -> u64 {
        let v = self
            .stats()
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no stat {name}"))
            .1;
        v.parse().unwrap_or_else(|_| panic!("{name} = {v:?}"))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Declares over AMQP, as the reporter did, a durable queue holding at most one
/// message that refuses publishes beyond that.
fn declare_reject_publish_queue(broker: &ChildBroker, q: &str) {
    runtime().block_on(async {
        let conn = within(
            "connect",
            lapin::Connection::connect(&broker.addrs.amqp_uri(), Default::default()),
        )
        .await
        .unwrap();
        let ch = within("channel", conn.create_channel()).await.unwrap();
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(1));
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString(LongString::from("reject-publish")),
        );
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        within("declare", ch.queue_declare(q, opts, args))
            .await
            .unwrap();
        let _ = conn.close(200, "bye").await;
    });
}

#[test]
fn set_into_a_full_reject_publish_queue_answers_server_error() {
    let broker = spawn_broker(&[]);
    let q = unique("full");
    declare_reject_publish_queue(&broker, &q);
    let mut mc = Mc::connect(broker.addrs.memcache);
    assert_eq!(mc.set(&q, "first"), "STORED");
    let refused = mc.set(&q, "second");
    assert!(
        refused.starts_with("SERVER_ERROR ") && refused.contains("not stored"),
        "{refused:?}"
    );
    // noreply does not hide it: the client must learn nothing was stored.
    mc.send(format!("set {q} 0 0 5 noreply\r\nthird\r\n").as_bytes());
    assert!(mc.line().starts_with("SERVER_ERROR "));
    // The connection is still usable and only the first message is there.
    assert_eq!(mc.get(&q), vec!["first".to_string()]);
    assert_eq!(mc.get(&q), Vec::<String>::new());
    // Room again: stored.
    assert_eq!(mc.set(&q, "fourth"), "STORED");
    assert_eq!(mc.stat("set_cmds"), 4);
    assert_eq!(mc.stat("set_hits"), 2);
    // As memcacheq: a set whose data block is bad is a set command, not a hit.
    mc.send(format!("set {q} 0 0 2\r\nabc\r\n").as_bytes());
    assert_eq!(mc.line(), "CLIENT_ERROR bad data chunk");
    // The leftover `c` is read as a command line, as memcacheq does.
    assert_eq!(mc.line(), "ERROR");
    assert_eq!(mc.stat("set_cmds"), 5);
    assert_eq!(mc.stat("set_hits"), 2);
}

/// One sample of the broker's `/metrics`.
fn metric(broker: &ChildBroker, name: &str) -> u64 {
    let mut s = TcpStream::connect(broker.addrs.http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let line = text
        .lines()
        .find(|l| l.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

/// Sets racing deletes of their queue: about 1 in 300 finds the queue gone between its
/// lookup and its publish. Every `STORED` must be a message a queue took (the broker's
/// routed count), so the lost ones must not have been answered `STORED`.
#[test]
fn a_set_racing_deletes_answers_stored_only_for_what_a_queue_took() {
    let broker = spawn_broker(&["--fsync", "never"]);
    let q = unique("race");
    let addr = broker.addrs.memcache;
    let deleter = {
        let q = q.clone();
        std::thread::spawn(move || {
            let mut mc = Mc::connect(addr);
            for _ in 0..2000 {
                mc.send(format!("delete {q}\r\n").as_bytes());
                let l = mc.line();
                assert!(l == "DELETED" || l == "NOT_FOUND", "{l:?}");
            }
        })
    };
    let mut mc = Mc::connect(addr);
    let mut stored = 0;
    for i in 0..2000 {
        let l = mc.set(&q, &format!("m{i}"));
        if l == "STORED" {
            stored += 1;
        } else {
            assert!(l.starts_with("SERVER_ERROR "), "{l:?}");
        }
    }
    deleter.join().unwrap();
    assert_eq!(
        metric(&broker, "qgate_global_messages_routed_total"),
        stored,
        "STORED answers vs. messages a queue took"
    );
    assert_eq!(mc.stat("set_cmds"), 2000);
    assert_eq!(mc.stat("set_hits"), stored);
}

/// memcacheq 0.2.1's `stats`, field for field.
const MEMCACHEQ_FIELDS: [&str; 17] = [
    "pid",
    "uptime",
    "time",
    "version",
    "pointer_size",
    "rusage_user",
    "rusage_system",
    "curr_connections",
    "total_connections",
    "connection_structures",
    "get_cmds",
    "get_hits",
    "set_cmds",
    "set_hits",
    "bytes_read",
    "bytes_written",
    "threads",
];

#[test]
fn stats_serves_memcacheqs_fields_in_its_order_then_memcacheds() {
    let broker = spawn_broker(&[]);
    let q = unique("st");
    let mut mc = Mc::connect(broker.addrs.memcache);
    assert_eq!(mc.set(&q, "a"), "STORED");
    assert_eq!(mc.set(&q, "b"), "STORED");
    // Three keys looked up, two hits.
    assert_eq!(mc.get(&format!("{q} {q} {q}")).len(), 2);
    let stats = mc.stats();
    let names: Vec<&str> = stats.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(&names[..17], &MEMCACHEQ_FIELDS[..], "{names:?}");
    for extra in ["cmd_get", "cmd_set", "get_misses", "curr_items"] {
        assert!(names[17..].contains(&extra), "{extra} after memcacheq's");
    }
    let v = |name: &str| stats.iter().find(|(n, _)| n == name).unwrap().1.clone();
    assert_eq!(v("get_cmds"), "3");
    assert_eq!(v("get_hits"), "2");
    assert_eq!(v("get_misses"), "1");
    assert_eq!(v("set_cmds"), "2");
    assert_eq!(v("set_hits"), "2");
    assert_eq!(v("curr_connections"), "1");
    assert_eq!(v("total_connections"), "1");
    // One structure per connection open at once, plus the listener's.
    assert_eq!(v("connection_structures"), "2");
    for cpu in ["rusage_user", "rusage_system"] {
        let t = v(cpu);
        let (s, us) = t.split_once('.').unwrap_or_else(|| panic!("{cpu} = {t}"));
        assert!(s.parse::<u64>().is_ok() && us.len() == 6 && us.parse::<u32>().is_ok());
    }
    assert_eq!(v("pid"), broker.child.id().to_string());
}

/// The number `name` has in a `stats` answer.
fn stat_value(stats: &[(String, String)], name: &str) -> u64 {
    let (_, v) = stats
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no stat {name}"));
    v.parse().unwrap_or_else(|_| panic!("{name} = {v:?}"))
}

/// `stats` and `/metrics` read one count of the front end's connections and bytes:
/// the same numbers, whichever asks.
#[test]
fn stats_and_metrics_agree_on_connections_and_bytes() {
    let broker = spawn_broker(&[]);
    let q = unique("agree");
    let mut gone = Mc::connect(broker.addrs.memcache);
    assert_eq!(gone.set(&q, "abc"), "STORED");
    drop(gone);
    let mut mc = Mc::connect(broker.addrs.memcache);
    assert_eq!(mc.get(&q).len(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mc.stat("curr_connections") != 1 {
        assert!(
            Instant::now() < deadline,
            "the first connection never closed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = mc.stats();
    let v = |name: &str| stat_value(&stats, name);
    // The answer to that last `stats` was sent after it counted.
    let answer: u64 = stats
        .iter()
        .map(|(n, value)| (format!("STAT {n} {value}\r\n").len()) as u64)
        .sum::<u64>()
        + b"END\r\n".len() as u64;
    let m = |series: &str| metric(&broker, &format!("qgate_{series}{{protocol=\"memcache\"}}"));
    assert_eq!(m("connections"), v("curr_connections"));
    assert_eq!(m("connections_opened_total"), v("total_connections"));
    assert_eq!(m("connections_closed_total"), 1);
    assert_eq!(m("protocol_bytes_received_total"), v("bytes_read"));
    assert_eq!(m("protocol_bytes_sent_total"), v("bytes_written") + answer);
}

#[test]
fn stats_reset_answers_reset_and_zeroes_the_counters() {
    let broker = spawn_broker(&[]);
    let q = unique("rs");
    let mut other = Mc::connect(broker.addrs.memcache);
    let mut mc = Mc::connect(broker.addrs.memcache);
    assert_eq!(mc.set(&q, "a"), "STORED");
    assert_eq!(mc.get(&q).len(), 1);
    assert_eq!(mc.get(&q).len(), 0);
    assert_eq!(mc.stat("total_connections"), 2);
    mc.send(b"stats reset\r\n");
    assert_eq!(mc.line(), "RESET");
    let stats = mc.stats();
    let v = |name: &str| stat_value(&stats, name);
    for zero in [
        "total_connections",
        "get_cmds",
        "get_hits",
        "set_cmds",
        "set_hits",
        "cmd_get",
        "cmd_set",
        "get_misses",
    ] {
        assert_eq!(v(zero), 0, "{zero}");
    }
    // Only this `stats` request and the RESET answer since the reset.
    assert_eq!(v("bytes_read"), b"stats\r\n".len() as u64);
    assert_eq!(v("bytes_written"), b"RESET\r\n".len() as u64);
    // State, not counts: still there.
    assert_eq!(v("curr_connections"), 2);
    assert_eq!(v("connection_structures"), 3);
    // Counting goes on from zero.
    assert_eq!(other.set(&q, "b"), "STORED");
    assert_eq!(mc.stat("set_cmds"), 1);
}

#[test]
fn a_client_hanging_up_during_a_timed_get_is_noticed_at_once() {
    let broker = spawn_broker(&[]);
    let q = unique("hang");
    let mut watcher = Mc::connect(broker.addrs.memcache);
    let mut waiter = Mc::connect(broker.addrs.memcache);
    waiter.send(format!("get {q}/t=30000\r\n").as_bytes());
    let deadline = Instant::now() + Duration::from_secs(5);
    while watcher.stat("curr_connections") != 2 {
        assert!(Instant::now() < deadline, "waiter never connected");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the get start waiting, then hang up.
    std::thread::sleep(Duration::from_millis(200));
    drop(waiter);
    let hung_up = Instant::now();
    while watcher.stat("curr_connections") != 1 {
        assert!(
            hung_up.elapsed() < Duration::from_secs(3),
            "the closed connection still counts: its 30 s wait was not interrupted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The abandoned wait took nothing: a message set now is there for the next reader.
    assert_eq!(watcher.set(&q, "kept"), "STORED");
    assert_eq!(watcher.get(&q), vec!["kept".to_string()]);
}

#[test]
fn requests_pipelined_behind_a_timed_get_are_answered_after_it() {
    let broker = spawn_broker(&[]);
    let q = unique("pipe");
    let mut mc = Mc::connect(broker.addrs.memcache);
    let mut producer = Mc::connect(broker.addrs.memcache);
    mc.send(format!("get {q}/t=5000\r\nversion\r\n").as_bytes());
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(producer.set(&q, "late"), "STORED");
    assert!(mc.line().starts_with("VALUE "));
    assert_eq!(mc.line(), "late");
    assert_eq!(mc.line(), "END");
    assert!(mc.line().starts_with("VERSION "));
}
