//! Peer labels: `key=value` pairs set with `--label` and used by placement constraints.
//!
//! Keys are 1-63 characters of letters, digits, `.`, `-`, `_` and `/`; values are 0-63 of the
//! same without `/`. The limits keep a peer's gossiped record small and labels safe to print.

use std::collections::BTreeMap;

/// A peer's labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 63;
/// Most labels one peer may carry.
pub const MAX_LABELS: usize = 64;

/// Why a label was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// A label is written `key=value`
    #[error("label `{input}` has no `=`: write it as key=value, for example zone=eu-1")]
    MissingEquals { input: String },
    /// The key is empty, too long or has a character outside `[A-Za-z0-9._/-]`
    #[error("label key `{key}` is invalid: use 1-63 letters, digits, `.`, `-`, `_` or `/`")]
    BadKey { key: String },
    /// The value is too long or has a character outside `[A-Za-z0-9._-]`
    #[error("label value `{value}` is invalid: use at most 63 letters, digits, `.`, `-` or `_`")]
    BadValue { value: String },
    /// Too many labels
    #[error("too many labels: at most {MAX_LABELS} are allowed")]
    TooMany,
}

fn valid_chars(s: &str, allow_slash: bool) -> bool {
    s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || (allow_slash && c == '/'))
}

/// Checks one key and value.
pub fn validate_label(key: &str, value: &str) -> Result<(), LabelError> {
    if key.is_empty() || key.len() > MAX_LABEL_LEN || !valid_chars(key, true) {
        return Err(LabelError::BadKey { key: key.to_string() });
    }
    if value.len() > MAX_LABEL_LEN || !valid_chars(value, false) {
        return Err(LabelError::BadValue { value: value.to_string() });
    }
    Ok(())
}

/// Parses `key=value`.
pub fn parse_label(input: &str) -> Result<(String, String), LabelError> {
    let (key, value) = input.split_once('=').ok_or_else(|| LabelError::MissingEquals { input: input.to_string() })?;
    validate_label(key, value)?;
    Ok((key.to_string(), value.to_string()))
}

/// Checks a whole label set.
pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    if labels.len() > MAX_LABELS {
        return Err(LabelError::TooMany);
    }
    labels.iter().try_for_each(|(k, v)| validate_label(k, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        assert_eq!(parse_label("zone=eu-1").unwrap(), ("zone".into(), "eu-1".into()));
        assert_eq!(parse_label("shoal.io/gpu=").unwrap(), ("shoal.io/gpu".into(), "".into()));
        assert!(matches!(parse_label("zone"), Err(LabelError::MissingEquals { .. })));
        assert!(matches!(parse_label("=x"), Err(LabelError::BadKey { .. })));
        assert!(matches!(parse_label("a b=x"), Err(LabelError::BadKey { .. })));
        assert!(matches!(parse_label("k=a/b"), Err(LabelError::BadValue { .. })));
        assert!(matches!(parse_label(&format!("k={}", "x".repeat(64))), Err(LabelError::BadValue { .. })));
    }
}
