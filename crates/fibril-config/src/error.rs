//! Errors and warnings of configuration parsing and validation. Every message names the
//! key (Helm name, or flat name when reading the flat form) and the offending value.

use std::fmt;

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key no Fibril component knows.
    #[error("unknown config key {key:?}{hint}")]
    UnknownKey {
        /// The key as given.
        key: String,
        /// `; did you mean "..."?` or empty.
        hint: String,
    },
    /// A value the key does not accept.
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidValue {
        /// The key (Helm or flat name, as the input used).
        key: String,
        /// The offending value (the whole value or the bad entry).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `--set` argument that is not `key=value[,key=value...]`.
    #[error("invalid --set argument {arg:?}: {reason}")]
    Syntax {
        /// The argument (or the part of it at fault).
        arg: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Values that are fine alone but not together.
    #[error("{key}={value}: {reason}")]
    Inconsistent {
        /// The key whose value must change.
        key: String,
        /// Its value.
        value: String,
        /// Why, naming the other keys involved.
        reason: String,
    },
    /// A line of the flat (`config view`) form that is not `key  value`.
    #[error("line {line} of the flat config: {reason}: {text:?}")]
    FlatSyntax {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    /// An [`ConfigError::InvalidValue`].
    pub fn invalid(key: &str, value: &str, reason: impl fmt::Display) -> Self {
        Self::InvalidValue {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }

    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { key, .. }
            | Self::InvalidValue { key, .. }
            | Self::Inconsistent { key, .. } => Some(key),
            Self::Syntax { .. } | Self::FlatSyntax { .. } => None,
        }
    }
}

impl From<fibril_ipam::ConfigError> for ConfigError {
    fn from(e: fibril_ipam::ConfigError) -> Self {
        Self::InvalidValue {
            key: e.key,
            value: e.value,
            reason: e.reason,
        }
    }
}

/// A configuration that works but is probably not what was meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The key the warning is about (Helm name).
    pub key: String,
    /// What is odd about it.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}
