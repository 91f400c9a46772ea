//! Key and value admission rules shared by every backend: what a key may look like and how
//! large a value may be.

use super::StoreError;

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 2048;
/// Largest value accepted, in bytes: etcd's default request limit of 1.5 MiB.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024 * 3 / 2;

/// Checks a key: it must start with `/`, be at most [`MAX_KEY_BYTES`] long, and consist of
/// visible ASCII characters only (no whitespace, control characters or non-ASCII).
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    let invalid = |reason: &str| StoreError::InvalidKey {
        key: key.chars().take(128).collect(),
        reason: reason.to_string(),
    };
    if !key.starts_with('/') {
        return Err(invalid("must start with '/'"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(&format!("longer than {MAX_KEY_BYTES} bytes")));
    }
    if let Some(bad) = key.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(&format!("contains the illegal character {bad:?}")));
    }
    Ok(())
}

/// Checks a key prefix used for list and watch: like a key, but may be just `/`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    validate_key(prefix)
}

/// Checks a value's size against [`MAX_VALUE_BYTES`].
pub fn validate_value(key: &str, value: &[u8]) -> Result<(), StoreError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::ValueTooLarge {
            key: key.to_string(),
            size: value.len(),
            limit: MAX_VALUE_BYTES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(validate_key("/registry/pods/default/a").is_ok());
        assert!(validate_key("registry").is_err());
        assert!(validate_key("/a b").is_err());
        assert!(validate_key("/a\0b").is_err());
        assert!(validate_key("/ä").is_err());
        assert!(validate_key(&format!("/{}", "a".repeat(MAX_KEY_BYTES))).is_err());
    }

    #[test]
    fn values() {
        assert!(validate_value("/k", &vec![0; MAX_VALUE_BYTES]).is_ok());
        assert!(matches!(
            validate_value("/k", &vec![0; MAX_VALUE_BYTES + 1]),
            Err(StoreError::ValueTooLarge { .. })
        ));
    }
}
