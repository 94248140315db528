//! Build script: generates qgate's AMQP 0-9-1 code from `grammar/amqp-0-9-1.json` (the
//! facts of the spec) and `grammar/amqp-server.json` (qgate's overlay: direction and
//! handler of each method). The JSON files are the single source; edit them, not the
//! output.
//!
//! Output, committed so that it can be read without building:
//! - `src/amqp/generated.rs` (a child module of `src/amqp/methods.rs`): the protocol
//!   version, the frame constants, the class ids, the `reply` codes with their names and
//!   hard/soft classification, and one `methods!` entry per method: its ids, name,
//!   `MethodInfo` facts and arguments with their wire types, `borrowed_args` marking the
//!   content methods the server sends (encoded once per message from borrowed values).
//!   The macro in `src/amqp/method_macro.rs` expands the entries into the structs, their
//!   codecs and the `Method` enum; this script writes data, not code shapes.
//! - `src/content/generated.rs` (a child module of `src/content/mod.rs`): the content
//!   properties of class `basic` (the `Properties` struct, its flag bits, decode, encode).
//!
//! Every build generates both into `$OUT_DIR`, where the test
//! `amqp::methods::tests::generated_files_match_the_grammar` compares them with the
//! committed files; `QGATE_REGENERATE=1 cargo build` rewrites the committed files (and a
//! build whose committed files are stale says so in a warning). The generated code calls
//! the primitive readers and writers in `crate::content::value::wire` (the methods through
//! the argument codec in `src/amqp/method_macro.rs`).
//!
//! Every struct below denies unknown fields: a key the generator does not read is an
//! error, so grammar data cannot be silently dropped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grammar {
    /// Where the file comes from; repeated in the generated file's header.
    comment: String,
    name: String,
    major: u8,
    minor: u8,
    revision: u8,
    port: u16,
    constants: Vec<Constant>,
    domains: BTreeMap<String, String>,
    classes: Vec<Class>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Constant {
    name: String,
    value: u32,
    kind: String,
    #[serde(default)]
    class: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Class {
    name: String,
    id: u16,
    #[serde(default)]
    doc: String,
    /// Content properties (only `basic` has them).
    #[serde(default)]
    properties: Vec<Field>,
    methods: Vec<MethodDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MethodDef {
    name: String,
    id: u16,
    #[serde(default)]
    synchronous: bool,
    #[serde(default)]
    response: Vec<String>,
    #[serde(default)]
    content: bool,
    #[serde(default)]
    doc: String,
    fields: Vec<Field>,
}

/// A method argument or a content property.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Field {
    name: String,
    domain: String,
    /// A note on the field's use (reserved fields, RabbitMQ's reading).
    #[serde(default)]
    comment: Option<String>,
    /// What the field means, for its doc comment.
    #[serde(default)]
    doc: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Overlay {
    /// What the file is; for readers of the JSON only.
    #[allow(dead_code)]
    comment: String,
    receives: Vec<String>,
    sends: Vec<String>,
    handlers: BTreeMap<String, String>,
}

const GRAMMAR: &str = "grammar/amqp-0-9-1.json";
const OVERLAY: &str = "grammar/amqp-server.json";
/// Committed output and the name of its fresh copy in `$OUT_DIR`.
const AMQP_OUT: (&str, &str) = ("src/amqp/generated.rs", "amqp_generated.rs");
const CONTENT_OUT: (&str, &str) = ("src/content/generated.rs", "content_generated.rs");
const REGENERATE: &str = "QGATE_REGENERATE";

fn main() {
    println!("cargo:rerun-if-changed={GRAMMAR}");
    println!("cargo:rerun-if-changed={OVERLAY}");
    println!("cargo:rerun-if-changed=src/build.rs");
    println!("cargo:rerun-if-changed={}", AMQP_OUT.0);
    println!("cargo:rerun-if-changed={}", CONTENT_OUT.0);
    println!("cargo:rerun-if-env-changed={REGENERATE}");
    let grammar: Grammar = read_json(GRAMMAR);
    let overlay: Overlay = read_json(OVERLAY);
    let regenerate = std::env::var_os(REGENERATE).is_some_and(|v| v == "1");
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo");
    for ((committed, fresh), code) in [
        (AMQP_OUT, generate_amqp(&grammar, &overlay)),
        (CONTENT_OUT, generate_content(&grammar)),
    ] {
        std::fs::write(Path::new(&out_dir).join(fresh), &code)
            .unwrap_or_else(|e| panic!("write {fresh}: {e}"));
        if std::fs::read_to_string(committed).ok().as_deref() == Some(code.as_str()) {
            continue;
        }
        if regenerate {
            std::fs::write(committed, &code).unwrap_or_else(|e| panic!("write {committed}: {e}"));
        } else {
            println!(
                "cargo:warning={committed} is out of date with grammar/: run `{REGENERATE}=1 cargo build`"
            );
        }
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &str) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

fn header(o: &mut String, g: &Grammar, sources: &str) {
    let _ = writeln!(
        o,
        "// @generated by src/build.rs from {sources}.\n\
         // Do not edit: change the grammar, then run `{REGENERATE}=1 cargo build` to rewrite this\n\
         // file. The test `generated_files_match_the_grammar` (in src/amqp/methods.rs) fails\n\
         // while it differs from what the grammar generates.\n//"
    );
    for line in wrap(&g.comment, 88) {
        let _ = writeln!(o, "// {line}");
    }
    o.push_str("\nuse super::*;\n\n");
}

/// Splits prose into lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("never empty");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}

/// `no-wait` -> `no_wait`; `type` (a Rust keyword) -> `kind`.
fn field_ident(name: &str) -> String {
    if name == "type" {
        return "kind".into();
    }
    name.replace('-', "_")
}

/// `get-ok` -> `GetOk`.
fn camel(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_ascii_uppercase().to_string() + chars.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn screaming(name: &str) -> String {
    name.replace('-', "_").to_ascii_uppercase()
}

/// How one primitive wire type maps to Rust. In `write` and `size`, `{}` stands for the
/// value: the value itself for a `Copy` type, a reference to it otherwise (`by_ref`).
struct Primitive {
    /// Owned type, as in a method struct.
    owned: &'static str,
    /// Reader: a function `(&mut &[u8]) -> Result<T, DecodeError>`.
    read: &'static str,
    /// Statement appending the value to `out`.
    write: &'static str,
    /// Encoded size in bytes.
    size: &'static str,
    by_ref: bool,
}

fn primitive(ty: &str) -> Primitive {
    let fixed = |owned, read, write, size| Primitive {
        owned,
        read,
        write,
        size,
        by_ref: false,
    };
    match ty {
        "octet" => fixed("u8", "wire::get_u8", "out.put_u8({});", "1"),
        "short" => fixed("u16", "wire::get_u16", "out.put_u16({});", "2"),
        "long" => fixed("u32", "wire::get_u32", "out.put_u32({});", "4"),
        "longlong" | "timestamp" => fixed("u64", "wire::get_u64", "out.put_u64({});", "8"),
        "shortstr" => Primitive {
            owned: "String",
            read: "wire::get_shortstr",
            write: "wire::put_shortstr(out, {});",
            size: "1 + wire::shortstr_len({})",
            by_ref: true,
        },
        "longstr" => Primitive {
            owned: "Bytes",
            read: "wire::get_longstr",
            write: "wire::put_longstr(out, {});",
            size: "4 + {}.len()",
            by_ref: true,
        },
        "table" => Primitive {
            owned: "FieldTable",
            read: "FieldTable::decode",
            write: "FieldTable::encode({}, out);",
            size: "{}.encoded_len()",
            by_ref: true,
        },
        other => panic!("{GRAMMAR}: unknown primitive type {other}"),
    }
}

fn resolve_domain<'a>(g: &'a Grammar, domain: &'a str) -> &'a str {
    let mut d = domain;
    for _ in 0..8 {
        match g.domains.get(d) {
            Some(next) if next == d => return d,
            Some(next) => d = next,
            None => panic!("{GRAMMAR}: unknown domain {domain}"),
        }
    }
    panic!("{GRAMMAR}: domain loop at {domain}")
}

/// The field's doc comment: name, domain, wire type, then its doc and comment.
fn field_doc(f: &Field, ty: &str) -> String {
    let mut doc = format!("`{}`: domain `{}`, wire type `{ty}`", f.name, f.domain);
    for extra in [&f.doc, &f.comment].into_iter().flatten() {
        let _ = write!(doc, "; {extra}");
    }
    doc + "."
}

struct Resolved<'a> {
    class: &'a Class,
    method: &'a MethodDef,
    full_name: String,
    ident: String,
    /// Sent by the server with content: gets a borrowed encoder.
    borrowed: bool,
}

fn generate_amqp(g: &Grammar, overlay: &Overlay) -> String {
    let mut o = String::new();
    header(&mut o, g, &format!("{GRAMMAR} and {OVERLAY}"));

    gen_constants(&mut o, g);

    let mut all = Vec::new();
    for class in &g.classes {
        for method in &class.methods {
            let full_name = format!("{}.{}", class.name, method.name);
            all.push(Resolved {
                class,
                method,
                borrowed: method.content && overlay.sends.contains(&full_name),
                full_name,
                ident: format!("{}{}", camel(&class.name), camel(&method.name)),
            });
        }
    }
    let mut ids = HashSet::new();
    for r in &all {
        assert!(
            ids.insert((r.class.id, r.method.id)),
            "{GRAMMAR}: duplicate ids for {}",
            r.full_name
        );
        let mut names = HashSet::new();
        for f in &r.method.fields {
            assert!(
                names.insert(field_ident(&f.name)),
                "{GRAMMAR}: duplicate field {} in {}",
                f.name,
                r.full_name
            );
        }
    }
    let known: HashMap<&str, &Resolved> = all.iter().map(|r| (r.full_name.as_str(), r)).collect();
    assert_eq!(known.len(), all.len(), "{GRAMMAR}: duplicate method names");
    for name in overlay.receives.iter().chain(&overlay.sends) {
        assert!(
            known.contains_key(name.as_str()),
            "{OVERLAY}: unknown method {name}"
        );
    }
    for class in &g.classes {
        assert!(
            overlay.handlers.contains_key(&class.name),
            "{OVERLAY}: no handler for class {}",
            class.name
        );
    }
    for name in overlay.handlers.keys() {
        assert!(
            g.classes.iter().any(|c| &c.name == name),
            "{OVERLAY}: handler for unknown class {name}"
        );
    }

    o.push_str("methods! {\n");
    for r in &all {
        gen_entry(&mut o, g, overlay, r, &known);
    }
    o.truncate(o.trim_end().len());
    o.push_str("\n}\n\n");
    gen_classes(&mut o, g);
    o
}

fn gen_constants(o: &mut String, g: &Grammar) {
    let _ = writeln!(
        o,
        "/// Protocol `{0}` {1}-{2}-{3}: major version, as in `connection.start`.\n\
         pub const VERSION_MAJOR: u8 = {1};\n\
         /// Minor version, as in `connection.start`.\npub const VERSION_MINOR: u8 = {2};\n\
         /// Revision (the protocol header's last octet).\npub const VERSION_REVISION: u8 = {3};\n\
         /// The spec's default port.\npub const DEFAULT_PORT: u16 = {4};\n",
        g.name, g.major, g.minor, g.revision, g.port
    );
    let mut replies = Vec::new();
    for c in &g.constants {
        let ty = match c.kind.as_str() {
            "frame" => "u8",
            "frame-size" => "u32",
            "reply" => {
                replies.push(c);
                continue;
            }
            other => panic!("{GRAMMAR}: constant {} has unknown kind {other}", c.name),
        };
        let doc = format!("`{}` = {} (frame constant from the spec).", c.name, c.value);
        constant(o, "", &doc, &c.name, ty, c.value);
    }

    o.push_str("\n/// Class ids, named as in the spec.\npub mod class {\n");
    for class in &g.classes {
        let doc = format!("`{}`: {}", class.name, class.doc);
        constant(o, "    ", &doc, &class.name, "u16", class.id.into());
    }
    o.push_str("}\n");

    // Expanded into the `reply` module, `reply_name` and the classification by the
    // macro in src/amqp/method_macro.rs.
    o.push_str("\nreplies! {\n");
    for class in ["hard-error", "soft-error"] {
        assert!(
            replies.iter().any(|c| c.class.as_deref() == Some(class)),
            "{GRAMMAR}: no {class} reply codes"
        );
    }
    for c in &replies {
        let class = c.class.as_deref().unwrap_or("success");
        assert!(
            ["success", "hard-error", "soft-error"].contains(&class),
            "{GRAMMAR}: reply {} has unknown class {class}",
            c.name
        );
        let _ = writeln!(
            o,
            "    /// `{}` ({class}).\n    {} = {}, {};",
            c.name,
            screaming(&c.name),
            c.value,
            camel(class)
        );
    }
    o.push_str("}\n");
    o.push('\n');
}

/// Appends `pub const NAME: ty = value;` (the spec's name in SCREAMING_CASE) with `doc`.
fn constant(o: &mut String, indent: &str, doc: &str, name: &str, ty: &str, value: u32) {
    let _ = writeln!(
        o,
        "{indent}/// {doc}\n{indent}pub const {}: {ty} = {value};",
        screaming(name)
    );
}

/// One `methods!` entry (see src/amqp/method_macro.rs): doc, head, `MethodInfo` facts,
/// then one line per argument naming its wire type.
fn gen_entry(
    o: &mut String,
    g: &Grammar,
    overlay: &Overlay,
    r: &Resolved,
    known: &HashMap<&str, &Resolved>,
) {
    let m = r.method;
    let _ = writeln!(
        o,
        "    /// `{}` (class {}, method {}): {}{}{}",
        r.full_name,
        r.class.id,
        m.id,
        m.doc,
        if m.synchronous { " Synchronous." } else { "" },
        if m.content { " Carries content." } else { "" }
    );
    if !m.response.is_empty() {
        let resp: Vec<String> = m
            .response
            .iter()
            .map(|x| format!("`{}.{x}`", r.class.name))
            .collect();
        let _ = writeln!(o, "    ///\n    /// Answered by {}.", resp.join(" or "));
    }
    let responses: Vec<String> = m
        .response
        .iter()
        .map(|name| {
            let full = format!("{}.{name}", r.class.name);
            let target = known
                .get(full.as_str())
                .unwrap_or_else(|| panic!("{GRAMMAR}: unknown response {full}"));
            format!("({}, {})", target.class.id, target.method.id)
        })
        .collect();
    let _ = writeln!(
        o,
        "    {}({}, {}, \"{}\") {{ content: {}, synchronous: {}, response_ids: &[{}], server_receives: {}, server_sends: {}, handler: \"{}\" }}",
        r.ident,
        screaming(&r.class.name),
        m.id,
        r.full_name,
        m.content,
        m.synchronous,
        responses.join(", "),
        overlay.receives.contains(&r.full_name),
        overlay.sends.contains(&r.full_name),
        overlay.handlers[&r.class.name]
    );
    let args: Vec<String> = m
        .fields
        .iter()
        .map(|f| {
            let ty = resolve_domain(g, &f.domain);
            if ty != "bit" {
                // Only for the check: the macro knows the same wire types.
                primitive(ty);
            }
            let ident = field_ident(&f.name);
            let notes = arg_notes(f, &ident, ty);
            if notes.is_empty() {
                format!("{ident}: {ty}")
            } else {
                format!("{ident}: {ty} \"{}\"", notes.join("; "))
            }
        })
        .collect();
    let _ = writeln!(
        o,
        "    {} {{ {} }}\n",
        if r.borrowed { "borrowed_args" } else { "args" },
        args.join(", ")
    );
}

/// What an argument's doc says beyond its name and wire type: its spec name where the
/// Rust one differs, its domain where that is not the wire type or the name, its doc and
/// comment.
fn arg_notes(f: &Field, ident: &str, ty: &str) -> Vec<String> {
    let mut notes = Vec::new();
    if ident != f.name.replace('-', "_") {
        notes.push(format!("`{}` in the spec", f.name));
    }
    if f.domain != ty && f.domain != f.name {
        notes.push(format!("domain `{}`", f.domain));
    }
    for extra in [&f.doc, &f.comment].into_iter().flatten() {
        assert!(
            !extra.contains(['"', '\\']),
            "{GRAMMAR}: quote or backslash in the note on {}",
            f.name
        );
        notes.push(extra.clone());
    }
    notes
}

fn gen_classes(o: &mut String, g: &Grammar) {
    o.push_str("/// Name and id of every class, in grammar order.\npub const CLASSES: &[(&str, u16)] = &[\n");
    for class in g.classes.iter().filter(|c| !c.methods.is_empty()) {
        let _ = writeln!(
            o,
            "    (\"{}\", class::{}),",
            class.name,
            screaming(&class.name)
        );
    }
    o.push_str("];\n");
}

/// One content property, resolved.
struct Prop<'a> {
    field: &'a Field,
    ty: &'a str,
    bit: usize,
    p: Primitive,
}

impl Prop<'_> {
    /// `template` with `{name}`, `{ident}`, `{flag}` (its constant in `flag`), `{bit}`,
    /// `{doc}`, `{owned}` (the Rust type), `{read}` (the reader), `{write}` (the
    /// statement appending `v`, bound by `if let Some(v) = &self.<ident>`) and `{len}`
    /// (the statement adding its encoded size to `n`) filled in.
    fn fill(&self, template: &str) -> String {
        let ident = field_ident(&self.field.name);
        let v = if self.p.by_ref { "v" } else { "*v" };
        let len = if self.p.by_ref {
            let size = self.p.size.replace("{}", v);
            format!("if let Some(v) = &self.{ident} {{ n += {size}; }}")
        } else {
            format!("if self.{ident}.is_some() {{ n += {}; }}", self.p.size)
        };
        template
            .replace("{name}", &self.field.name)
            .replace("{ident}", &ident)
            .replace("{flag}", &screaming(&self.field.name))
            .replace("{bit}", &self.bit.to_string())
            .replace("{doc}", &field_doc(self.field, self.ty))
            .replace("{owned}", self.p.owned)
            .replace("{read}", self.p.read)
            .replace("{write}", &self.p.write.replace("{}", v))
            .replace("{len}", &len)
    }
}

/// The `Properties` struct of class `basic`: one `Option` per property, in flag order.
/// Each item is a head, one line per property (see [`Prop::fill`]) and a tail.
fn generate_content(g: &Grammar) -> String {
    let mut o = String::new();
    header(&mut o, g, GRAMMAR);
    let basic = g
        .classes
        .iter()
        .find(|c| c.name == "basic")
        .unwrap_or_else(|| panic!("{GRAMMAR}: no class basic"));
    // Bit 0 of a flag word says another word follows: one word holds 15 properties.
    let n = basic.properties.len();
    assert!(
        (1..=15).contains(&n),
        "{GRAMMAR}: basic has {n} properties; the generator writes one flag word (1 to 15)"
    );
    let props: Vec<Prop> = basic
        .properties
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let ty = resolve_domain(g, &field.domain);
            assert!(
                ty != "bit",
                "{GRAMMAR}: bit property {} is not supported",
                field.name
            );
            Prop {
                field,
                ty,
                bit: 15 - i,
                p: primitive(ty),
            }
        })
        .collect();
    let struct_head = format!("/// The {n} content properties of class `basic`; `None` = flag clear, property absent.\n#[derive(Debug, Clone, PartialEq, Default)]\npub struct Properties {{\n");
    let items: [(&str, &str, &str); 6] = [
        (
            "/// The property-flag bits of class `basic`, in the first flag word.\npub mod flag {\n",
            "    /// `{name}`.\n    pub const {flag}: u16 = 1 << {bit};",
            "    /// Another flag word follows.\n    pub const CONTINUATION: u16 = 1;\n}\n\n",
        ),
        (&struct_head, "    /// {doc} Flag bit {bit}.\n    pub {ident}: Option<{owned}>,", "}\n\n"),
        (
            "impl Properties {\n    /// Decodes property flags (with their continuation chain) and the property list.\n    /// Bytes after the last present property are ignored.\n    pub fn decode(raw: &[u8]) -> Result<Properties, DecodeError> {\n        let input = &mut &raw[..];\n        let flags = wire::get_u16(input)?;\n        let mut more = flags & flag::CONTINUATION != 0;\n        while more {\n            more = wire::get_u16(input)? & flag::CONTINUATION != 0;\n        }\n        Ok(Properties {\n",
            "            {ident}: read_if(flags & flag::{flag} != 0, input, {read})?,",
            "        })\n    }\n\n",
        ),
        (
            "    /// The property-flags word for the present properties.\n    pub fn flags(&self) -> u16 {\n        let mut flags = 0;\n",
            "        if self.{ident}.is_some() { flags |= flag::{flag}; }",
            "        flags\n    }\n\n",
        ),
        (
            "    /// Appends one flag word and the present properties. Strings longer than 255 bytes\n    /// are truncated on a character boundary (see [`wire::put_shortstr`]).\n    pub fn encode(&self, out: &mut BytesMut) {\n        out.put_u16(self.flags());\n",
            "        if let Some(v) = &self.{ident} { {write} }",
            "    }\n\n",
        ),
        (
            "    /// Bytes [`Properties::encode`] writes.\n    pub fn encoded_len(&self) -> usize {\n        let mut n = 2;\n",
            "        {len}",
            "        n\n    }\n}\n",
        ),
    ];
    for (head, line, tail) in items {
        o.push_str(head);
        for prop in &props {
            o.push_str(&prop.fill(line));
            o.push('\n');
        }
        o.push_str(tail);
    }
    o
}
