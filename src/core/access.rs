//! Who may do what: users (salted password hashes, tags), the set of virtual hosts, and
//! per-user-per-vhost permissions as three regular expressions (configure, write, read),
//! with RabbitMQ's semantics and reply texts.
//!
//! Password hashes use RabbitMQ's format, so a RabbitMQ definitions export loads
//! unchanged: `base64(salt ++ H(salt ++ utf8 password))` with a 4-byte random salt and
//! H = SHA-256 (`rabbit_password_hashing_sha256`, RabbitMQ's default) or SHA-512.
//!
//! A permission regexp matches anywhere in the name (RabbitMQ's `re:run` is
//! unanchored); the empty string matches nothing. The default exchange is checked under
//! the name `amq.default`, server-named queues under their generated `amq.gen-*` name.
//!
//! Every change is written to the store as a definition (`user\0<name>`,
//! `vhost\0<name>`, `permission\0<vhost>\0<user>`) and waited for, so a change that
//! returned survives `kill -9`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use parking_lot::RwLock;
use regex::Regex;
use sha2::{Digest, Sha256, Sha512};

use super::error::{CoreError, CoreResult, Entity};
use super::exchange::Destination;
use super::persist;
use super::{Broker, VHost};
use crate::content::FieldTable;

/// RabbitMQ's default (and qgate's only generated) hashing algorithm.
pub const HASHING_SHA256: &str = "rabbit_password_hashing_sha256";
/// Accepted on import.
pub const HASHING_SHA512: &str = "rabbit_password_hashing_sha512";

/// Which of the three permission regexps an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Create or delete the resource.
    Configure,
    /// Inject messages into it (publish, be a binding's destination).
    Write,
    /// Take messages out of it (consume, get, purge, be a binding's source).
    Read,
}

impl Permission {
    /// As RabbitMQ writes it in reply texts.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Configure => "configure",
            Permission::Write => "write",
            Permission::Read => "read",
        }
    }
}

/// A resource a permission is checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A queue, by name.
    Queue(&'a str),
    /// An exchange, by name (`""` is the default exchange).
    Exchange(&'a str),
}

impl Resource<'_> {
    fn entity(&self) -> Entity {
        match self {
            Resource::Queue(_) => Entity::Queue,
            Resource::Exchange(_) => Entity::Exchange,
        }
    }

    /// The name permissions match on: RabbitMQ calls the default exchange `amq.default`.
    fn name(&self) -> &str {
        match self {
            Resource::Queue(n) => n,
            Resource::Exchange("") => "amq.default",
            Resource::Exchange(n) => n,
        }
    }
}

/// A user as listed and exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// base64(4-byte salt ++ hash(salt ++ password)); empty = no password login.
    pub password_hash: String,
    /// `rabbit_password_hashing_sha256` (or `_sha512`).
    pub hashing_algorithm: String,
    /// Tags (`administrator`, `monitoring`, `management`, ...).
    pub tags: Vec<String>,
}

/// One user's permissions in one vhost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostPermissions {
    /// User.
    pub user: String,
    /// Vhost.
    pub vhost: String,
    /// Configure regexp.
    pub configure: String,
    /// Write regexp.
    pub write: String,
    /// Read regexp.
    pub read: String,
}

/// A logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// Login name.
    pub name: String,
    /// Its tags at login time.
    pub tags: Vec<String>,
}

impl AuthUser {
    /// Has the tag.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// A compiled permission regexp; `None` is the empty pattern, which matches nothing.
#[derive(Debug, Clone)]
struct Pattern(String, Option<Regex>);

impl Pattern {
    fn new(src: &str) -> CoreResult<Self> {
        if src.is_empty() {
            return Ok(Self(String::new(), None));
        }
        Regex::new(src)
            .map(|r| Self(src.to_owned(), Some(r)))
            .map_err(|e| CoreError::InvalidRegexp {
                pattern: src.to_owned(),
                reason: first_line(&e.to_string()).to_owned(),
            })
    }

    fn matches(&self, name: &str) -> bool {
        self.1.as_ref().is_some_and(|r| r.is_match(name))
    }
}

fn first_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| s.lines().next().unwrap_or(""))
        .trim_start_matches("error: ")
        .to_owned()
}

#[derive(Debug, Clone)]
struct Grant {
    configure: Pattern,
    write: Pattern,
    read: Pattern,
}

/// The access state kept in the broker.
#[derive(Debug, Default)]
pub(crate) struct Access {
    users: RwLock<BTreeMap<String, UserInfo>>,
    /// vhost -> user -> grant (nested so that lookups by `&str` allocate nothing:
    /// every publish checks here).
    grants: RwLock<BTreeMap<String, BTreeMap<String, Grant>>>,
    /// Users who may only log in from a loopback address (RabbitMQ's `loopback_users`).
    loopback: RwLock<HashSet<String>>,
    /// Bumped on every permission change: front ends' caches of granted checks compare it.
    generation: AtomicU64,
}

/// A user to seed a fresh broker with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedUser {
    /// Login name.
    pub name: String,
    /// Clear-text password (hashed before it is kept).
    pub password: String,
    /// Tags.
    pub tags: Vec<String>,
}

/// Permissions to seed a fresh broker with.
pub type SeedPermissions = VhostPermissions;

// ---- hashes --------------------------------------------------------------------------

fn digest(algorithm: &str, salt: &[u8], password: &str) -> Option<Vec<u8>> {
    match algorithm {
        HASHING_SHA256 | "" => {
            let mut h = Sha256::new();
            h.update(salt);
            h.update(password.as_bytes());
            Some(h.finalize().to_vec())
        }
        HASHING_SHA512 => {
            let mut h = Sha512::new();
            h.update(salt);
            h.update(password.as_bytes());
            Some(h.finalize().to_vec())
        }
        _ => None,
    }
}

/// Hashes `password` with a fresh random salt, in RabbitMQ's SHA-256 format.
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 4];
    if getrandom::fill(&mut salt).is_err() {
        // No OS randomness (should not happen on Linux): a time-derived salt still
        // makes equal passwords hash differently across users.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        salt = t.to_le_bytes();
    }
    hash_with_salt(&salt, password)
}

fn hash_with_salt(salt: &[u8; 4], password: &str) -> String {
    let mut out = salt.to_vec();
    out.extend(digest(HASHING_SHA256, salt, password).expect("sha256 is known"));
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// Checks `password` against a stored hash; an empty hash accepts no password.
pub fn verify_password(hash: &str, algorithm: &str, password: &str) -> bool {
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(hash) else {
        return false;
    };
    if raw.len() <= 4 {
        return false;
    }
    let (salt, want) = raw.split_at(4);
    match digest(algorithm, salt, password) {
        Some(got) => constant_time_eq(&got, want),
        None => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_hash(hash: &str, algorithm: &str) -> CoreResult<()> {
    if digest(algorithm, b"", "").is_none() {
        return Err(CoreError::UnsupportedHashing {
            algorithm: algorithm.to_owned(),
        });
    }
    if !hash.is_empty()
        && base64::engine::general_purpose::STANDARD
            .decode(hash)
            .is_err()
    {
        return Err(CoreError::HashNotBase64);
    }
    Ok(())
}

// ---- errors --------------------------------------------------------------------------

fn no_user(name: &str) -> CoreError {
    CoreError::NoUser {
        user: name.to_owned(),
    }
}

fn no_vhost(name: &str) -> CoreError {
    CoreError::NoVhost {
        vhost: name.to_owned(),
    }
}

fn user_exists(name: &str) -> CoreError {
    CoreError::UserExists {
        user: name.to_owned(),
    }
}

fn vhost_exists(name: &str) -> CoreError {
    CoreError::VhostExists {
        vhost: name.to_owned(),
    }
}

fn normalize_tags(tags: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    tags.into_iter()
        .flat_map(|t| {
            t.split(',')
                .map(|s| s.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|t| !t.is_empty() && seen.insert(t.clone()))
        .collect()
}

fn check_name(what: &'static str, name: &str) -> CoreResult<()> {
    if name.is_empty() {
        return Err(CoreError::EmptyName { what });
    }
    Ok(())
}

// ---- persistence -----------------------------------------------------------------------

const USER_KEY: &str = "user";
const VHOST_KEY: &str = "vhost";
const PERMISSION_KEY: &str = "permission";
/// Written once the defaults / config seeds are stored: a data directory whose users
/// and vhosts were all deleted later is not fresh, and is not seeded again.
const SEEDED_KEY: &str = "access\0seeded";

fn user_key(name: &str) -> String {
    format!("{USER_KEY}\0{name}")
}

fn vhost_key(name: &str) -> String {
    format!("{VHOST_KEY}\0{name}")
}

fn permission_key(vhost: &str, user: &str) -> String {
    format!("{PERMISSION_KEY}\0{vhost}\0{user}")
}

fn user_table(u: &UserInfo) -> FieldTable {
    persist::table(vec![
        ("name", persist::s(&u.name)),
        ("password_hash", persist::s(&u.password_hash)),
        ("hashing_algorithm", persist::s(&u.hashing_algorithm)),
        ("tags", persist::s(&u.tags.join(","))),
    ])
}

fn permission_table(p: &VhostPermissions) -> FieldTable {
    persist::table(vec![
        ("user", persist::s(&p.user)),
        ("vhost", persist::s(&p.vhost)),
        ("configure", persist::s(&p.configure)),
        ("write", persist::s(&p.write)),
        ("read", persist::s(&p.read)),
    ])
}

/// Access records found in the store at start-up.
#[derive(Debug, Default)]
pub(crate) struct StoredAccess {
    pub(crate) users: Vec<UserInfo>,
    pub(crate) vhosts: Vec<String>,
    pub(crate) permissions: Vec<VhostPermissions>,
    pub(crate) seeded: bool,
}

impl StoredAccess {
    /// Takes an access record; false when `key` is not one.
    pub(crate) fn take(&mut self, key: &str, t: &FieldTable) -> bool {
        let text = |k: &str| t.get_str(k).unwrap_or_default();
        if key == SEEDED_KEY {
            self.seeded = true;
            return true;
        }
        match key.split('\0').next() {
            Some(USER_KEY) => self.users.push(UserInfo {
                name: text("name"),
                password_hash: text("password_hash"),
                hashing_algorithm: text("hashing_algorithm"),
                tags: normalize_tags(vec![text("tags")]),
            }),
            Some(VHOST_KEY) => self.vhosts.push(text("name")),
            Some(PERMISSION_KEY) => self.permissions.push(VhostPermissions {
                user: text("user"),
                vhost: text("vhost"),
                configure: text("configure"),
                write: text("write"),
                read: text("read"),
            }),
            _ => return false,
        }
        true
    }

    /// A data directory that never held access records (fresh, or written before
    /// qgate had them).
    pub(crate) fn is_empty(&self) -> bool {
        !self.seeded
            && self.users.is_empty()
            && self.vhosts.is_empty()
            && self.permissions.is_empty()
    }
}

fn is_loopback(peer: IpAddr) -> bool {
    match peer {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|a| a.is_loopback()),
    }
}

impl Access {
    pub(crate) fn set_loopback_users(&self, names: impl IntoIterator<Item = String>) {
        *self.loopback.write() = names.into_iter().collect();
    }

    fn insert_grant(&self, p: &VhostPermissions) -> CoreResult<()> {
        let g = Grant {
            configure: Pattern::new(&p.configure)?,
            write: Pattern::new(&p.write)?,
            read: Pattern::new(&p.read)?,
        };
        self.grants
            .write()
            .entry(p.vhost.clone())
            .or_default()
            .insert(p.user.clone(), g);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Removes grants matching `pred(vhost, user)`; returns the (vhost, user) removed.
    fn remove_grants(&self, pred: impl Fn(&str, &str) -> bool) -> Vec<(String, String)> {
        let mut grants = self.grants.write();
        let mut removed = Vec::new();
        for (vhost, users) in grants.iter_mut() {
            users.retain(|user, _| {
                let hit = pred(vhost, user);
                if hit {
                    removed.push((vhost.clone(), user.clone()));
                }
                !hit
            });
        }
        grants.retain(|_, users| !users.is_empty());
        self.generation.fetch_add(1, Ordering::Release);
        removed
    }
}

impl Broker {
    pub(crate) fn access(&self) -> &Access {
        &self.shared.access
    }

    /// Writes (or with `None` deletes) an access definition and waits until it is as
    /// durable as the fsync policy promises.
    fn persist_access(&self, key: String, table: Option<FieldTable>) {
        let Some(store) = &self.shared.store else {
            return;
        };
        let ticket = match table {
            Some(t) => store.put_definition(&key, persist::encode_table(&t)),
            None => store.delete_definition(&key),
        };
        if let Err(e) = ticket.wait_blocking() {
            tracing::error!(error = %e, "access definition not persisted");
        }
    }

    /// Seeds the access state with the defaults or the config file's users, vhosts and
    /// permissions, in memory only: [`Broker::restore`] then either replaces them by
    /// what the data directory holds or, for a fresh one, persists them.
    pub(crate) fn seed_access(
        &self,
        vhosts: &[String],
        users: &[SeedUser],
        permissions: &[SeedPermissions],
    ) {
        for v in vhosts {
            self.shared
                .vhosts
                .write()
                .entry(v.clone())
                .or_insert_with(|| VHost::new(v, self.shared.clone()));
        }
        for u in users {
            let info = UserInfo {
                name: u.name.clone(),
                password_hash: hash_password(&u.password),
                hashing_algorithm: HASHING_SHA256.into(),
                tags: normalize_tags(u.tags.clone()),
            };
            self.access().users.write().insert(u.name.clone(), info);
        }
        for p in permissions {
            let known = self.access().users.read().contains_key(&p.user)
                && self.shared.vhosts.read().contains_key(&p.vhost);
            let r = if known {
                self.access().insert_grant(p)
            } else {
                Err(CoreError::NoUserOrVhost)
            };
            if let Err(e) = r {
                tracing::warn!(user = %p.user, vhost = %p.vhost, error = %e, "configured permissions not applied");
            }
        }
    }

    /// Writes the whole access state to the store (a fresh data directory).
    pub(crate) fn persist_all_access(&self) {
        let vhosts: Vec<String> = self.shared.vhosts.read().keys().cloned().collect();
        for v in vhosts {
            self.persist_access(
                vhost_key(&v),
                Some(persist::table(vec![("name", persist::s(&v))])),
            );
        }
        for u in self.users() {
            self.persist_access(user_key(&u.name), Some(user_table(&u)));
        }
        for p in self.permissions() {
            self.persist_access(
                permission_key(&p.vhost, &p.user),
                Some(permission_table(&p)),
            );
        }
        self.persist_access(SEEDED_KEY.to_owned(), Some(FieldTable::new()));
    }

    /// Replaces the access state with what the store held (start-up).
    pub(crate) fn load_access(&self, stored: StoredAccess) {
        {
            let mut map = self.shared.vhosts.write();
            let keep: HashSet<&String> = stored.vhosts.iter().collect();
            map.retain(|name, _| keep.contains(name));
            for v in &stored.vhosts {
                if !map.contains_key(v) {
                    map.insert(v.clone(), VHost::new(v, self.shared.clone()));
                }
            }
        }
        {
            let mut users = self.access().users.write();
            users.clear();
            for u in stored.users {
                users.insert(u.name.clone(), u);
            }
        }
        self.access().remove_grants(|_, _| true);
        for p in &stored.permissions {
            if let Err(e) = self.access().insert_grant(p) {
                tracing::warn!(user = %p.user, vhost = %p.vhost, error = %e, "stored permissions unreadable");
            }
        }
    }

    /// Checks a user name and password, whichever front end and mechanism carried
    /// them. `peer` is the client's address: users in `loopback_users` are refused from
    /// anywhere else. The error says why (for the log); each front end words the
    /// refusal its clients expect.
    pub fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> CoreResult<AuthUser> {
        let invalid = || CoreError::InvalidCredentials {
            user: user.to_owned(),
        };
        let found = self.access().users.read().get(user).cloned();
        let Some(u) = found else {
            return Err(invalid());
        };
        if u.password_hash.is_empty()
            || !verify_password(&u.password_hash, &u.hashing_algorithm, password)
        {
            return Err(invalid());
        }
        if !is_loopback(peer) && self.access().loopback.read().contains(user) {
            return Err(CoreError::LoopbackOnly {
                user: user.to_owned(),
            });
        }
        Ok(AuthUser {
            name: u.name,
            tags: u.tags,
        })
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<UserInfo> {
        self.access().users.read().values().cloned().collect()
    }

    /// One user.
    pub fn user(&self, name: &str) -> Option<UserInfo> {
        self.access().users.read().get(name).cloned()
    }

    /// rabbitmqctl add_user: fails when the user exists.
    pub fn add_user(&self, name: &str, password: &str, tags: Vec<String>) -> CoreResult<()> {
        check_name("user", name)?;
        let info = UserInfo {
            name: name.to_owned(),
            password_hash: hash_password(password),
            hashing_algorithm: HASHING_SHA256.into(),
            tags: normalize_tags(tags),
        };
        {
            let mut users = self.access().users.write();
            if users.contains_key(name) {
                return Err(user_exists(name));
            }
            users.insert(name.to_owned(), info.clone());
        }
        self.persist_access(user_key(name), Some(user_table(&info)));
        Ok(())
    }

    /// Creates or replaces a user (management `PUT /api/users/{u}`, definitions
    /// import), from a clear password or a ready hash. With neither, an existing user
    /// keeps its password and a new one gets none (it cannot log in with a password).
    pub fn put_user(
        &self,
        name: &str,
        password: Option<&str>,
        password_hash: Option<&str>,
        hashing_algorithm: Option<&str>,
        tags: Vec<String>,
    ) -> CoreResult<()> {
        check_name("user", name)?;
        if password.is_some() && password_hash.is_some() {
            return Err(CoreError::PasswordAndHash);
        }
        let tags = normalize_tags(tags);
        let info = {
            let mut users = self.access().users.write();
            let (hash, algorithm) = match (password, password_hash) {
                (Some(p), _) => (hash_password(p), HASHING_SHA256.to_owned()),
                (None, Some(h)) => {
                    let algorithm = hashing_algorithm.unwrap_or(HASHING_SHA256);
                    check_hash(h, algorithm)?;
                    (h.to_owned(), algorithm.to_owned())
                }
                (None, None) => match users.get(name) {
                    Some(u) => (u.password_hash.clone(), u.hashing_algorithm.clone()),
                    None => (String::new(), HASHING_SHA256.to_owned()),
                },
            };
            let info = UserInfo {
                name: name.to_owned(),
                password_hash: hash,
                hashing_algorithm: algorithm,
                tags,
            };
            users.insert(name.to_owned(), info.clone());
            info
        };
        self.persist_access(user_key(name), Some(user_table(&info)));
        Ok(())
    }

    /// rabbitmqctl delete_user: also drops its permissions and closes its connections.
    pub fn delete_user(&self, name: &str) -> CoreResult<()> {
        if self.access().users.write().remove(name).is_none() {
            return Err(no_user(name));
        }
        self.persist_access(user_key(name), None);
        let dropped = self.access().remove_grants(|_, u| u == name);
        for (vhost, user) in dropped {
            self.persist_access(permission_key(&vhost, &user), None);
        }
        self.close_connections_where(
            |c| *c.user.lock() == name,
            &format!("user '{name}' is deleted"),
        );
        Ok(())
    }

    /// rabbitmqctl change_password.
    pub fn change_password(&self, name: &str, password: &str) -> CoreResult<()> {
        let info = {
            let mut users = self.access().users.write();
            let u = users.get_mut(name).ok_or_else(|| no_user(name))?;
            u.password_hash = hash_password(password);
            u.hashing_algorithm = HASHING_SHA256.into();
            u.clone()
        };
        self.persist_access(user_key(name), Some(user_table(&info)));
        Ok(())
    }

    /// rabbitmqctl clear_password: the user can no longer log in with a password.
    pub fn clear_password(&self, name: &str) -> CoreResult<()> {
        let info = {
            let mut users = self.access().users.write();
            let u = users.get_mut(name).ok_or_else(|| no_user(name))?;
            u.password_hash.clear();
            u.clone()
        };
        self.persist_access(user_key(name), Some(user_table(&info)));
        Ok(())
    }

    /// rabbitmqctl set_user_tags (replaces the tags; none clears them).
    pub fn set_user_tags(&self, name: &str, tags: Vec<String>) -> CoreResult<()> {
        let info = {
            let mut users = self.access().users.write();
            let u = users.get_mut(name).ok_or_else(|| no_user(name))?;
            u.tags = normalize_tags(tags);
            u.clone()
        };
        self.persist_access(user_key(name), Some(user_table(&info)));
        Ok(())
    }

    /// rabbitmqctl add_vhost: fails when it exists.
    pub fn add_vhost(&self, name: &str) -> CoreResult<()> {
        check_name("vhost", name)?;
        {
            let mut map = self.shared.vhosts.write();
            if map.contains_key(name) {
                return Err(vhost_exists(name));
            }
            map.insert(name.to_owned(), VHost::new(name, self.shared.clone()));
        }
        self.persist_access(
            vhost_key(name),
            Some(persist::table(vec![("name", persist::s(name))])),
        );
        Ok(())
    }

    /// Creates a vhost unless it exists (management `PUT /api/vhosts/{v}`).
    pub fn put_vhost(&self, name: &str) -> CoreResult<()> {
        match self.add_vhost(name) {
            Err(CoreError::VhostExists { .. }) => Ok(()),
            r => r,
        }
    }

    /// rabbitmqctl delete_vhost: deletes its queues (and their messages), exchanges,
    /// bindings and permissions, and closes the connections using it.
    pub fn delete_vhost(&self, name: &str) -> CoreResult<()> {
        let vhost = self
            .shared
            .vhosts
            .write()
            .remove(name)
            .ok_or_else(|| no_vhost(name))?;
        self.persist_access(vhost_key(name), None);
        self.close_connections_where(
            |c| *c.vhost.lock() == name,
            &format!("vhost '{name}' is deleted"),
        );
        vhost.delete_everything();
        let dropped = self.access().remove_grants(|v, _| v == name);
        for (vhost, user) in dropped {
            self.persist_access(permission_key(&vhost, &user), None);
        }
        if let Some(store) = &self.shared.store {
            let _ = store.sync().wait_blocking();
        }
        Ok(())
    }

    /// rabbitmqctl set_permissions: replaces the user's three regexps in the vhost.
    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> CoreResult<()> {
        if !self.access().users.read().contains_key(user) {
            return Err(no_user(user));
        }
        if self.vhost(vhost).is_none() {
            return Err(no_vhost(vhost));
        }
        let p = VhostPermissions {
            user: user.to_owned(),
            vhost: vhost.to_owned(),
            configure: configure.to_owned(),
            write: write.to_owned(),
            read: read.to_owned(),
        };
        self.access().insert_grant(&p)?;
        self.persist_access(permission_key(vhost, user), Some(permission_table(&p)));
        Ok(())
    }

    /// rabbitmqctl clear_permissions: the user can no longer open the vhost; its
    /// connections to it are closed.
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> CoreResult<()> {
        if !self.access().users.read().contains_key(user) {
            return Err(no_user(user));
        }
        if self.vhost(vhost).is_none() {
            return Err(no_vhost(vhost));
        }
        let removed = !self
            .access()
            .remove_grants(|v, u| v == vhost && u == user)
            .is_empty();
        if removed {
            self.persist_access(permission_key(vhost, user), None);
            self.close_connections_where(
                |c| *c.user.lock() == user && *c.vhost.lock() == vhost,
                &format!("permissions of user '{user}' in vhost '{vhost}' were cleared"),
            );
        }
        Ok(())
    }

    /// Every user's permissions in every vhost, ordered by vhost then user.
    pub fn permissions(&self) -> Vec<VhostPermissions> {
        self.access()
            .grants
            .read()
            .iter()
            .flat_map(|(vhost, users)| users.iter().map(move |(user, g)| (vhost, user, g)))
            .map(|(vhost, user, g)| VhostPermissions {
                user: user.clone(),
                vhost: vhost.clone(),
                configure: g.configure.0.clone(),
                write: g.write.0.clone(),
                read: g.read.0.clone(),
            })
            .collect()
    }

    /// Changes whenever any permission changes (for caches of granted checks).
    pub fn permissions_generation(&self) -> u64 {
        self.access().generation.load(Ordering::Acquire)
    }

    /// May `user` open `vhost`? (AMQP connection.open: 530 NOT_ALLOWED otherwise.)
    pub fn check_vhost_access(&self, user: &str, vhost: &str) -> CoreResult<()> {
        if self.vhost(vhost).is_none() {
            return Err(CoreError::VhostNotFound {
                vhost: vhost.to_owned(),
            });
        }
        if !self
            .access()
            .grants
            .read()
            .get(vhost)
            .is_some_and(|users| users.contains_key(user))
        {
            return Err(CoreError::VhostRefused {
                vhost: vhost.to_owned(),
                user: user.to_owned(),
            });
        }
        Ok(())
    }

    /// Does `user` hold `perm` on `resource` in `vhost`? The refusal is worded as
    /// RabbitMQ 3.10's (`access to exchange 'x' in vhost 'v' refused for user 'u'`,
    /// which does not say which permission was missing).
    pub fn check_permission(
        &self,
        user: &str,
        vhost: &str,
        perm: Permission,
        resource: Resource<'_>,
    ) -> CoreResult<()> {
        let name = resource.name();
        let allowed = self
            .access()
            .grants
            .read()
            .get(vhost)
            .and_then(|users| users.get(user))
            .is_some_and(|g| match perm {
                Permission::Configure => g.configure.matches(name),
                Permission::Write => g.write.matches(name),
                Permission::Read => g.read.matches(name),
            });
        if allowed {
            Ok(())
        } else {
            Err(CoreError::PermissionRefused {
                entity: resource.entity(),
                name: name.to_owned(),
                vhost: vhost.to_owned(),
                user: user.to_owned(),
            })
        }
    }

    /// Forcibly closes a connection: its front end ends it (AMQP: connection.close
    /// 320 CONNECTION_FORCED with `reason`; memcache: the socket is closed). False
    /// when there is no such connection.
    pub fn close_connection(&self, id: u64, reason: &str) -> bool {
        let Some(info) = self.shared.connections.get(&id).map(|c| c.value().clone()) else {
            return false;
        };
        info.force_close(reason);
        true
    }

    fn close_connections_where(&self, pred: impl Fn(&super::ConnectionInfo) -> bool, reason: &str) {
        for c in self.connections() {
            if pred(&c) {
                c.force_close(reason);
            }
        }
    }
}

impl VHost {
    /// Deletes every queue (with its messages), exchange and binding (vhost deletion).
    pub(crate) fn delete_everything(&self) {
        for q in self.queues() {
            self.remove_queue(&q);
        }
        for x in self.exchanges() {
            for b in x.bindings() {
                if let Destination::Exchange(dest) = &b.destination {
                    self.shared.unpersist_binding(&super::BindingDef {
                        vhost: &self.name,
                        source: &x.name,
                        destination: dest,
                        to_exchange: true,
                        routing_key: &b.routing_key,
                        arguments: &b.arguments,
                    });
                }
            }
            if x.options.durable && !x.name.is_empty() && !x.name.starts_with("amq.") {
                self.shared.unpersist_exchange(&self.name, &x.name);
            }
        }
        self.clear_exchanges();
    }
}

/// Permissions that give `user` everything in `vhost`.
pub fn full_permissions(user: &str, vhost: &str) -> VhostPermissions {
    VhostPermissions {
        user: user.to_owned(),
        vhost: vhost.to_owned(),
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::CoreConfig;
    use crate::core::ErrorKind;

    #[test]
    fn rabbitmq_hash_format() {
        // A hash made by RabbitMQ 3.10 (rabbitmqctl hash_password guest is random-salted,
        // so the salt is fixed here): base64(salt ++ sha256(salt ++ password)).
        let h = hash_with_salt(&[0x90, 0x8d, 0xc6, 0x0a], "test12");
        assert!(verify_password(&h, HASHING_SHA256, "test12"));
        assert!(!verify_password(&h, HASHING_SHA256, "test13"));
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&h)
            .unwrap();
        assert_eq!(raw.len(), 36);
        assert_eq!(&raw[..4], &[0x90, 0x8d, 0xc6, 0x0a]);
        assert!(!verify_password("", HASHING_SHA256, ""));
        assert!(!verify_password(
            &h,
            "rabbit_password_hashing_md4",
            "test12"
        ));
    }

    fn broker() -> Broker {
        let b = Broker::new(CoreConfig::default());
        b.add_user("u", "p", vec![]).unwrap();
        b
    }

    #[test]
    fn users_lifecycle() {
        let b = broker();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(b.authenticate("u", "p", lo).unwrap().name, "u");
        assert!(b.authenticate("u", "x", lo).is_err());
        assert_eq!(
            b.add_user("u", "p", vec![]).unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        b.change_password("u", "q").unwrap();
        assert!(b.authenticate("u", "p", lo).is_err());
        assert!(b.authenticate("u", "q", lo).is_ok());
        b.set_user_tags("u", vec!["administrator".into(), "monitoring".into()])
            .unwrap();
        assert_eq!(b.user("u").unwrap().tags, ["administrator", "monitoring"]);
        b.delete_user("u").unwrap();
        assert_eq!(b.delete_user("u").unwrap_err().kind(), ErrorKind::NotFound);
        assert!(b.authenticate("u", "q", lo).is_err());
    }

    #[test]
    fn guest_is_loopback_only() {
        let b = Broker::new(CoreConfig::default());
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(b.authenticate("guest", "guest", lo).is_ok());
        let e = b.authenticate("guest", "guest", remote).unwrap_err();
        assert_eq!(e.to_string(), "user 'guest' can only connect via localhost");
        b.access().set_loopback_users(vec![]);
        assert!(b.authenticate("guest", "guest", remote).is_ok());
    }

    #[test]
    fn permission_semantics() {
        let b = broker();
        assert!(b.check_vhost_access("u", "/").is_err());
        b.set_permissions("u", "/", "^u-.*", "^amq\\.default$", "")
            .unwrap();
        b.check_vhost_access("u", "/").unwrap();
        let q = |n| Resource::Queue(n);
        b.check_permission("u", "/", Permission::Configure, q("u-1"))
            .unwrap();
        let e = b
            .check_permission("u", "/", Permission::Configure, q("v"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "access to queue 'v' in vhost '/' refused for user 'u'"
        );
        // Unanchored: matches anywhere unless the pattern anchors itself.
        b.set_permissions("u", "/", "gen", "", "").unwrap();
        b.check_permission("u", "/", Permission::Configure, q("amq.gen-x"))
            .unwrap();
        // The empty pattern matches nothing, not even the empty name.
        assert!(b
            .check_permission("u", "/", Permission::Read, Resource::Exchange(""))
            .is_err());
        b.set_permissions("u", "/", "", "^amq\\.default$", "")
            .unwrap();
        b.check_permission("u", "/", Permission::Write, Resource::Exchange(""))
            .unwrap();
        let e = b.set_permissions("u", "/", "(", "", "").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PreconditionFailed);
        b.clear_permissions("u", "/").unwrap();
        assert!(b.check_vhost_access("u", "/").is_err());
        assert_eq!(
            b.set_permissions("nobody", "/", "", "", "")
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn vhosts() {
        let b = broker();
        b.add_vhost("v").unwrap();
        assert_eq!(
            b.add_vhost("v").unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        b.put_vhost("v").unwrap();
        b.set_permissions("u", "v", ".*", ".*", ".*").unwrap();
        let v = b.vhost("v").unwrap();
        v.declare_queue("q", Default::default(), false, 1).unwrap();
        b.delete_vhost("v").unwrap();
        assert!(b.vhost("v").is_none());
        assert!(b.permissions().iter().all(|p| p.vhost != "v"));
        b.add_vhost("v").unwrap();
        assert!(b.vhost("v").unwrap().find_queue("q").is_none());
    }
}
