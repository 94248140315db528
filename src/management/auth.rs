//! Who is calling, and what their tags let them do, with RabbitMQ's rules:
//!
//! - `administrator`: everything;
//! - `monitoring`: reads every vhost, connection and channel, and node-wide data;
//! - `management` (and `policymaker`): objects of the vhosts the user has permissions
//!   on;
//! - no such tag: refused (401 "Not management user"), even with a valid password.
//!
//! Credentials are HTTP Basic, checked by the core (`loopback_users` applies with the
//! client's address), or the local cookie of `qgate ctl`: the token in
//! `<data_dir>/.qgate-cookie` sent as `X-Qgate-Cookie`, which acts as the
//! administrator `qgate-ctl` and passes every vhost check (it still works after
//! `delete_user guest`).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;

use super::error::ApiError;
use super::Mgmt;
use crate::core::{Permission, Resource};
use crate::http::Peer;

/// The name the cookie acts as.
pub const COOKIE_USER: &str = "qgate-ctl";
/// The header carrying the cookie.
pub const COOKIE_HEADER: &str = "x-qgate-cookie";

/// An authenticated caller with a management tag.
#[derive(Debug, Clone)]
pub struct Caller {
    /// User name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Came with the local cookie: no vhost checks.
    cookie: bool,
}

impl Caller {
    fn has(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Tagged `administrator`.
    pub fn is_admin(&self) -> bool {
        self.has("administrator")
    }

    /// Tagged `administrator` or `monitoring`.
    pub fn is_monitor(&self) -> bool {
        self.is_admin() || self.has("monitoring")
    }

    fn is_management(&self) -> bool {
        self.is_monitor() || self.has("management") || self.has("policymaker")
    }

    /// Refuses a non-administrator.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::refused("Not administrator user"))
        }
    }

    /// Refuses a caller that is neither administrator nor monitoring.
    pub fn require_monitor(&self) -> Result<(), ApiError> {
        if self.is_monitor() {
            Ok(())
        } else {
            Err(ApiError::refused("Not monitor user"))
        }
    }

    /// Whether the caller may use `vhost` (has permissions on it). RabbitMQ checks
    /// this for vhost-scoped paths whatever the tags.
    pub fn may_use(&self, mgmt: &Mgmt, vhost: &str) -> bool {
        self.cookie || mgmt.broker.check_vhost_access(&self.name, vhost).is_ok()
    }

    /// Refuses a vhost-scoped request on a vhost the caller has no permissions on.
    pub fn require_vhost(&self, mgmt: &Mgmt, vhost: &str) -> Result<(), ApiError> {
        if self.may_use(mgmt, vhost) {
            Ok(())
        } else {
            Err(ApiError::refused(
                "User not authorised to access virtual host",
            ))
        }
    }

    /// Checks a configure / write / read permission on a resource, as AMQP does.
    pub fn permit(
        &self,
        mgmt: &Mgmt,
        vhost: &str,
        perm: Permission,
        resource: Resource<'_>,
    ) -> Result<(), ApiError> {
        if self.cookie {
            return Ok(());
        }
        mgmt.broker
            .check_permission(&self.name, vhost, perm, resource)
            .map_err(ApiError::from)
    }

    /// Whether a listing shows objects of `vhost` to the caller: monitoring and
    /// administrators see every vhost, management users those they may use.
    pub fn sees(&self, mgmt: &Mgmt, vhost: &str) -> bool {
        self.is_monitor() || self.may_use(mgmt, vhost)
    }

    /// Whether a listing shows a connection or channel owned by `user`: monitoring and
    /// administrators see all, management users their own.
    pub fn sees_user(&self, user: &str) -> bool {
        self.is_monitor() || self.name == user
    }
}

impl FromRequestParts<Arc<Mgmt>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, mgmt: &Arc<Mgmt>) -> Result<Self, ApiError> {
        if let Some(sent) = parts.headers.get(COOKIE_HEADER) {
            return match &mgmt.cookie {
                Some(token) if constant_time_eq(sent.as_bytes(), token.as_bytes()) => Ok(Caller {
                    name: COOKIE_USER.into(),
                    tags: vec!["administrator".into()],
                    cookie: true,
                }),
                _ => Err(ApiError::login_failed()),
            };
        }
        let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(ApiError::no_credentials());
        };
        let (user, password) =
            basic_credentials(value.as_bytes()).ok_or_else(ApiError::login_failed)?;
        let peer = parts
            .extensions
            .get::<Peer>()
            .map(|p| p.0.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        let user = mgmt
            .broker
            .authenticate(&user, &password, peer)
            .map_err(|_| ApiError::login_failed())?;
        let caller = Caller {
            name: user.name,
            tags: user.tags,
            cookie: false,
        };
        if !caller.is_management() {
            return Err(ApiError::refused("Not management user"));
        }
        Ok(caller)
    }
}

/// `Basic base64(user:password)` -> (user, password).
fn basic_credentials(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Compares without an early exit, so the time taken does not reveal the prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes a fresh random token to `<data_dir>/.qgate-cookie`, readable by the owner
/// only, and returns it.
pub fn write_cookie(data_dir: &std::path::Path) -> std::io::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(".qgate-cookie");
    // Replaced, not rewritten in place: a file left with wider permissions (or a
    // symlink) is never written through.
    let tmp = data_dir.join(".qgate-cookie.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(token.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_basic_credentials() {
        assert_eq!(
            basic_credentials(b"Basic Z3Vlc3Q6Z3Vlc3Q="),
            Some(("guest".into(), "guest".into()))
        );
        assert_eq!(
            basic_credentials(b"basic dTpwOmM="),
            Some(("u".into(), "p:c".into()))
        );
        assert_eq!(basic_credentials(b"Bearer x"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
        assert_eq!(basic_credentials(b"Basic"), None);
    }

    #[test]
    fn cookie_file_is_private_and_fresh() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("qgate-cookie-{}", std::process::id()));
        let a = write_cookie(&dir).unwrap();
        let b = write_cookie(&dir).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let path = dir.join(".qgate-cookie");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), b);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
