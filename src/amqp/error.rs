//! AMQP errors: a reply code, RabbitMQ-style text, and the method that caused it.

use super::methods::{reply, reply_name, Method};
use crate::core::{CoreError, ErrorKind};

/// An error to report with channel.close or connection.close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// Reply code.
    pub code: u16,
    /// Full reply text, starting with the constant's name (`NOT_FOUND - ...`).
    pub text: String,
    /// Class of the offending method (0 if none).
    pub class_id: u16,
    /// Offending method (0 if none).
    pub method_id: u16,
}

impl AmqpError {
    /// Builds an error; `detail` follows `<NAME> - `.
    pub fn new(code: u16, detail: impl AsRef<str>) -> Self {
        Self {
            code,
            text: format!("{} - {}", reply_name(code), detail.as_ref()),
            class_id: 0,
            method_id: 0,
        }
    }

    /// Attaches the method that failed.
    pub fn on(mut self, method: &Method) -> Self {
        self.class_id = method.class_id();
        self.method_id = method.method_id();
        self
    }

    /// Attaches class/method ids.
    pub fn on_ids(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// Hard errors close the whole connection; soft ones (the grammar's `soft-error`
    /// class) only the channel. A code the grammar does not call soft closes the
    /// connection.
    pub fn is_connection_level(&self) -> bool {
        !reply::reply_is_soft_error(self.code)
    }
}

impl From<CoreError> for AmqpError {
    fn from(e: CoreError) -> Self {
        let code = match e.kind() {
            ErrorKind::NotFound => reply::NOT_FOUND,
            ErrorKind::AccessRefused => reply::ACCESS_REFUSED,
            ErrorKind::ResourceLocked => reply::RESOURCE_LOCKED,
            ErrorKind::PreconditionFailed | ErrorKind::AlreadyExists => reply::PRECONDITION_FAILED,
            ErrorKind::CommandInvalid => reply::COMMAND_INVALID,
            ErrorKind::NotAllowed => reply::NOT_ALLOWED,
            ErrorKind::NotImplemented => reply::NOT_IMPLEMENTED,
            ErrorKind::ResourceError => reply::RESOURCE_ERROR,
            ErrorKind::Internal => reply::INTERNAL_ERROR,
        };
        AmqpError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grammar's soft errors close the channel; its hard errors, success and codes
    /// it does not define close the connection.
    #[test]
    fn soft_errors_close_only_the_channel() {
        let level = |code| AmqpError::new(code, "x").is_connection_level();
        for code in [311, 312, 313, 403, 404, 405, 406] {
            assert!(!level(code), "{code}");
        }
        for code in [
            320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541, 200, 999,
        ] {
            assert!(level(code), "{code}");
        }
        assert_eq!(
            AmqpError::new(404, "no queue 'q'").text,
            "NOT_FOUND - no queue 'q'"
        );
    }
}
