//! The Prometheus text exposition (format 0.0.4), as one small model: a metric family
//! is described once ([`Family`]: name, type, help), and every sample is written
//! through one [`Writer`] that puts the configured prefix in front of each name.
//!
//! A leaf every layer may use: a front end that has counters of its own implements
//! [`Collector`] next to them (the memcache front end in `memcache::stats`), the server
//! registers it with the metrics listener, and the listener never names it.
//!
//! Values are read when scraped, so the hot path pays one relaxed atomic add per
//! counter and a scrape always shows the current state (a deleted queue's series are
//! gone from the next scrape).

use std::fmt::Write;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's type, as its `# TYPE` line says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// `_bucket{le}`, `_sum` and `_count` series.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: its name without the prefix, its type and its help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// Name without the prefix and its `_`.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// The `# HELP` text.
    pub help: &'static str,
}

impl Family {
    /// A counter family.
    pub const fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Counter,
            help,
        }
    }

    /// A gauge family.
    pub const fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Gauge,
            help,
        }
    }

    /// A histogram family.
    pub const fn histogram(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind: Kind::Histogram,
            help,
        }
    }
}

/// Something that writes metric families when scraped.
pub trait Collector: Send + Sync {
    /// Writes this collector's families.
    fn collect(&self, w: &mut Writer<'_>);
}

/// A numeric sample value, written as the text format spells it.
pub trait Value {
    /// Appends the value.
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for i64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for usize {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// Writes families and samples under one prefix into a `String`.
pub struct Writer<'a> {
    out: &'a mut String,
    prefix: &'a str,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`; `prefix` is put before every name, with a `_`.
    pub fn new(out: &'a mut String, prefix: &'a str) -> Self {
        Writer { out, prefix }
    }

    /// The prefix (without the `_`), for labels that carry it (`<prefix>_node`).
    pub fn prefix(&self) -> &str {
        self.prefix
    }

    /// The `# HELP` and `# TYPE` lines of `family`; its samples follow.
    pub fn family(&mut self, family: &Family) {
        self.header(family.name, family.kind, family.help);
    }

    /// One sample of `family` with `labels`.
    pub fn sample(&mut self, family: &Family, labels: &[(&str, &str)], value: impl Value) {
        self.series(family.name, "", labels, value);
    }

    /// One sample of `family` named with `suffix` (`_bucket`, `_sum`, `_count` of a
    /// histogram).
    pub fn sample_of(
        &mut self,
        family: &Family,
        suffix: &str,
        labels: &[(&str, &str)],
        value: impl Value,
    ) {
        self.series(family.name, suffix, labels, value);
    }

    /// [`Writer::family`] for a family named at run time; no `# HELP` line when `help`
    /// is empty.
    pub fn header(&mut self, name: &str, kind: Kind, help: &str) {
        let p = self.prefix;
        if !help.is_empty() {
            let _ = writeln!(self.out, "# HELP {p}_{name} {help}");
        }
        let _ = writeln!(self.out, "# TYPE {p}_{name} {}", kind.as_str());
    }

    /// [`Writer::sample_of`] for a family named at run time.
    pub fn series(&mut self, name: &str, suffix: &str, labels: &[(&str, &str)], value: impl Value) {
        self.out.push_str(self.prefix);
        self.out.push('_');
        self.out.push_str(name);
        self.out.push_str(suffix);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write(self.out);
        self.out.push('\n');
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, family: &Family, value: impl Value) {
        self.family(family);
        self.sample(family, &[], value);
    }
}

/// Writes `s` as a label value: `\`, `"` and newline escaped.
pub fn escape_label(out: &mut String, s: &str) {
    if !s.contains(['\\', '"', '\n']) {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_label_values() {
        let mut s = String::new();
        escape_label(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn writes_families_under_the_prefix() {
        const F: Family = Family::counter("x_total", "Xs seen.");
        const H: Family = Family::histogram("h", "Hs.");
        let mut s = String::new();
        let mut w = Writer::new(&mut s, "rabbitmq");
        w.family(&F);
        w.sample(&F, &[("a", "1"), ("b", "q\"")], 3u64);
        w.family(&H);
        w.sample_of(&H, "_bucket", &[("le", "+Inf")], 2u64);
        w.sample_of(&H, "_sum", &[], 0.5f64);
        assert_eq!(
            s,
            "# HELP rabbitmq_x_total Xs seen.\n# TYPE rabbitmq_x_total counter\n\
             rabbitmq_x_total{a=\"1\",b=\"q\\\"\"} 3\n\
             # HELP rabbitmq_h Hs.\n# TYPE rabbitmq_h histogram\n\
             rabbitmq_h_bucket{le=\"+Inf\"} 2\nrabbitmq_h_sum 0.5\n"
        );
    }

    #[test]
    fn spells_special_floats() {
        let mut s = String::new();
        for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1.0, 0.25] {
            v.write(&mut s);
            s.push(' ');
        }
        assert_eq!(s, "NaN +Inf -Inf 1 0.25 ");
    }
}
