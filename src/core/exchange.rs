//! Exchanges and routing: direct, fanout, topic (`*` one word, `#` zero or more words,
//! exactly as RabbitMQ) and headers (`x-match` all / any, typed comparison).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use super::error::{CoreError, CoreResult};
use super::queue::Queue;
use crate::content::{FieldTable, FieldValue};

/// The routing algorithm of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Dotted-word patterns with `*` and `#`.
    Topic,
    /// Header table matching.
    Headers,
}

impl ExchangeKind {
    /// Parses an AMQP exchange type name.
    pub fn parse(name: &str) -> CoreResult<Self> {
        match name {
            "direct" => Ok(Self::Direct),
            "fanout" => Ok(Self::Fanout),
            "topic" => Ok(Self::Topic),
            "headers" => Ok(Self::Headers),
            other => Err(CoreError::UnknownExchangeType {
                kind: other.to_owned(),
            }),
        }
    }

    /// The AMQP type name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Fanout => "fanout",
            Self::Topic => "topic",
            Self::Headers => "headers",
        }
    }
}

/// How an exchange was declared.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExchangeOptions {
    /// Survives a restart.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Cannot be published to directly.
    pub internal: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// Where a binding leads.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A queue.
    Queue(Arc<Queue>),
    /// Another exchange (exchange-to-exchange binding), by name.
    Exchange(Arc<str>),
}

impl Destination {
    fn same(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => a == b,
            _ => false,
        }
    }

    /// The destination's name.
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(q) => &q.name,
            Destination::Exchange(e) => e,
        }
    }
}

/// One binding.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding key.
    pub routing_key: String,
    /// Binding arguments (headers exchanges match on them).
    pub arguments: FieldTable,
    topic: Vec<TopicWord>,
}

#[derive(Debug, Clone, PartialEq)]
enum TopicWord {
    Word(String),
    Star,
    Hash,
}

/// An exchange.
#[derive(Debug)]
pub struct Exchange {
    /// Name.
    pub name: Arc<str>,
    /// Routing algorithm.
    pub kind: ExchangeKind,
    /// Declared properties.
    pub options: ExchangeOptions,
    bindings: RwLock<Bindings>,
}

#[derive(Debug, Default)]
struct Bindings {
    all: Vec<Binding>,
    /// Direct exchanges: routing key -> indexes into `all`.
    by_key: HashMap<String, Vec<usize>>,
}

impl Bindings {
    fn reindex(&mut self) {
        self.by_key.clear();
        for (i, b) in self.all.iter().enumerate() {
            self.by_key
                .entry(b.routing_key.clone())
                .or_default()
                .push(i);
        }
    }
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(name: &str, kind: ExchangeKind, options: ExchangeOptions) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            kind,
            options,
            bindings: RwLock::new(Bindings::default()),
        })
    }

    /// Checks binding arguments the exchange type gives meaning to (headers: `x-match`).
    pub fn validate_binding(&self, arguments: &FieldTable) -> CoreResult<()> {
        if self.kind != ExchangeKind::Headers {
            return Ok(());
        }
        match arguments.get("x-match") {
            None => Ok(()),
            Some(FieldValue::LongString(v))
                if matches!(&v[..], b"all" | b"any" | b"all-with-x" | b"any-with-x") =>
            {
                Ok(())
            }
            Some(other) => Err(CoreError::InvalidXMatch {
                value: match other {
                    FieldValue::LongString(v) => format!("<<\"{}\">>", String::from_utf8_lossy(v)),
                    v => format!("{v:?}"),
                },
            }),
        }
    }

    /// Adds a binding; binding twice is a no-op as in RabbitMQ.
    pub fn bind(&self, destination: Destination, routing_key: &str, arguments: FieldTable) {
        let mut b = self.bindings.write();
        if b.all.iter().any(|x| {
            x.destination.same(&destination)
                && x.routing_key == routing_key
                && x.arguments.equivalent(&arguments)
        }) {
            return;
        }
        b.all.push(Binding {
            destination,
            routing_key: routing_key.to_owned(),
            arguments,
            topic: parse_topic(routing_key),
        });
        b.reindex();
    }

    /// Removes a binding; returns true when the exchange now has none.
    pub fn unbind(
        &self,
        destination: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> bool {
        let mut b = self.bindings.write();
        b.all.retain(|x| {
            !(x.destination.same(destination)
                && x.routing_key == routing_key
                && (self.kind != ExchangeKind::Headers || x.arguments.equivalent(arguments)))
        });
        b.reindex();
        b.all.is_empty()
    }

    /// Removes every binding to `destination`; returns true when some were removed and
    /// none are left.
    pub fn unbind_all(&self, destination: &Destination) -> bool {
        let mut b = self.bindings.write();
        let before = b.all.len();
        b.all.retain(|x| !x.destination.same(destination));
        let removed = b.all.len() != before;
        if removed {
            b.reindex();
        }
        removed && b.all.is_empty()
    }

    /// Number of bindings with this exchange as source.
    pub fn binding_count(&self) -> usize {
        self.bindings.read().all.len()
    }

    /// A snapshot of the bindings.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings.read().all.clone()
    }

    /// Pushes the destinations matching a message into `out`.
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        let b = self.bindings.read();
        match self.kind {
            ExchangeKind::Direct => {
                if let Some(idx) = b.by_key.get(routing_key) {
                    out.extend(idx.iter().map(|&i| b.all[i].destination.clone()));
                }
            }
            ExchangeKind::Fanout => out.extend(b.all.iter().map(|x| x.destination.clone())),
            ExchangeKind::Topic => {
                let words: Vec<&str> = routing_key.split('.').collect();
                out.extend(
                    b.all
                        .iter()
                        .filter(|x| topic_matches(&x.topic, &words))
                        .map(|x| x.destination.clone()),
                );
            }
            ExchangeKind::Headers => {
                let empty = FieldTable::new();
                let headers = headers.unwrap_or(&empty);
                out.extend(
                    b.all
                        .iter()
                        .filter(|x| headers_match(&x.arguments, headers))
                        .map(|x| x.destination.clone()),
                );
            }
        }
    }
}

fn parse_topic(key: &str) -> Vec<TopicWord> {
    key.split('.')
        .map(|w| match w {
            "*" => TopicWord::Star,
            "#" => TopicWord::Hash,
            w => TopicWord::Word(w.to_owned()),
        })
        .collect()
}

/// RabbitMQ's topic semantics: words are split on `.` (so the empty key is one empty
/// word); `*` matches exactly one word, `#` zero or more.
fn topic_matches(pattern: &[TopicWord], words: &[&str]) -> bool {
    // Iterative matcher with backtracking over the last `#`.
    let (mut p, mut w) = (0usize, 0usize);
    let mut backtrack: Option<(usize, usize)> = None;
    // The empty routing key has no words as far as `#` is concerned: "#" matches "",
    // "*" does not.
    let words: &[&str] = if words.len() == 1 && words[0].is_empty() {
        &[]
    } else {
        words
    };
    loop {
        if p < pattern.len() {
            match &pattern[p] {
                TopicWord::Hash => {
                    backtrack = Some((p, w));
                    p += 1;
                    continue;
                }
                TopicWord::Star if w < words.len() => {
                    p += 1;
                    w += 1;
                    continue;
                }
                TopicWord::Word(x) if w < words.len() && x == words[w] => {
                    p += 1;
                    w += 1;
                    continue;
                }
                _ => {}
            }
        } else if w == words.len() {
            return true;
        }
        match backtrack {
            Some((bp, bw)) if bw < words.len() => {
                backtrack = Some((bp, bw + 1));
                p = bp + 1;
                w = bw + 1;
            }
            _ => return false,
        }
    }
}

/// Headers exchange matching. `x-match` defaults to `all`; `any-with-x` / `all-with-x`
/// also compare `x-` headers; values compare with their types (`1` is not `"1"`).
fn headers_match(args: &FieldTable, headers: &FieldTable) -> bool {
    let mode = args.get_str("x-match").unwrap_or_else(|| "all".into());
    let with_x = mode.ends_with("-with-x");
    let any = mode.starts_with("any");
    let mut relevant = args
        .0
        .iter()
        .filter(|(k, _)| with_x || !k.starts_with("x-"));
    let matches = |(k, v): &(String, FieldValue)| match headers.get(k) {
        None => false,
        Some(h) => matches!(v, FieldValue::Void) || same_value(h, v),
    };
    if any {
        relevant.any(matches)
    } else {
        relevant.all(matches)
    }
}

/// Erlang `==` as RabbitMQ compares header values: integers of any width compare by
/// value, everything else by type and value.
fn same_value(a: &FieldValue, b: &FieldValue) -> bool {
    match (a.as_i64(), b.as_i64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &str) -> bool {
        let words: Vec<&str> = key.split('.').collect();
        topic_matches(&parse_topic(pattern), &words)
    }

    #[test]
    fn topic_semantics_match_rabbitmq() {
        assert!(m("#", ""));
        assert!(!m("*", ""));
        assert!(m("#", "a.b.c"));
        assert!(m("log.#", "log"));
        assert!(m("log.#", "log.a.b"));
        assert!(!m("log.*", "log"));
        assert!(m("log.*", "log.a"));
        assert!(!m("log.*", "log.a.b"));
        assert!(m("*.orange.*", "quick.orange.rabbit"));
        assert!(!m("*.orange.*", "quick.orange.male.rabbit"));
        assert!(m("lazy.#", "lazy.orange.male.rabbit"));
        assert!(m("*.*.rabbit", "quick.orange.rabbit"));
        assert!(m("#.log.#", "log"));
        assert!(m("#.log.#", "a.b.log.c"));
        assert!(!m("#.log.#", "a.b.logs.c"));
        assert!(m("a.#.b", "a.b"));
        assert!(m("a.#.b", "a.x.y.b"));
        assert!(!m("a.#.b", "a.x.y.c"));
        assert!(m("a..b", "a..b"));
        assert!(m("*", "a"));
        assert!(m("#.#", ""));
        assert!(m("a.*.#", "a.b"));
        assert!(!m("a.*.#", "a"));
    }

    #[test]
    fn headers_typed_comparison() {
        let mut args = FieldTable::new();
        args.insert("a", FieldValue::I32(1));
        let mut h = FieldTable::new();
        h.insert("a", FieldValue::LongString("1".into()));
        assert!(!headers_match(&args, &h));
        h.insert("a", FieldValue::I32(1));
        assert!(headers_match(&args, &h));
        args.insert("b", FieldValue::Bool(true));
        assert!(!headers_match(&args, &h));
        args.insert("x-match", FieldValue::LongString("any".into()));
        assert!(headers_match(&args, &h));
    }
}
