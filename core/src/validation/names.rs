//! Name, label-key and label-value rules (DNS-1123 label and subdomain, DNS-1035 label,
//! qualified names, label values, path segments), each returning every problem it finds.

/// One reason a string is not a valid name, label key or label value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NameError(pub String);

type Problems = Vec<NameError>;

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// A DNS-1123 label: at most 63 characters of lowercase alphanumerics and '-', starting and
/// ending with an alphanumeric (namespaces, most container and port names).
pub fn is_dns1123_label(value: &str) -> Result<(), Problems> {
    let mut problems = Vec::new();
    if value.len() > 63 {
        problems.push(NameError("must be no more than 63 characters".into()));
    }
    let valid = !value.is_empty()
        && value.chars().all(|c| is_alnum_lower(c) || c == '-')
        && value.starts_with(is_alnum_lower)
        && value.ends_with(is_alnum_lower);
    if !valid {
        problems.push(NameError(format!(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc'), got {value:?}"
        )));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A DNS-1123 subdomain: at most 253 characters, dot-separated DNS-1123 labels (most object
/// names).
pub fn is_dns1123_subdomain(value: &str) -> Result<(), Problems> {
    let mut problems = Vec::new();
    if value.len() > 253 {
        problems.push(NameError("must be no more than 253 characters".into()));
    }
    let valid = !value.is_empty()
        && value.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| is_alnum_lower(c) || c == '-')
                && part.starts_with(is_alnum_lower)
                && part.ends_with(is_alnum_lower)
        });
    if !valid {
        problems.push(NameError(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com'), got {value:?}"
        )));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A DNS-1035 label: like a DNS-1123 label but starting with a letter (service names).
pub fn is_dns1035_label(value: &str) -> Result<(), Problems> {
    let mut problems = is_dns1123_label(value).err().unwrap_or_default();
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        problems.push(NameError(format!(
            "a DNS-1035 label must start with an alphabetic character, got {value:?}"
        )));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A path segment name: not `.` or `..`, and containing neither `/` nor `%`.
pub fn is_path_segment_name(value: &str) -> Result<(), Problems> {
    let mut problems = Vec::new();
    if value == "." || value == ".." {
        problems.push(NameError(format!("may not be '{value}'")));
    }
    for bad in ['/', '%'] {
        if value.contains(bad) {
            problems.push(NameError(format!("may not contain '{bad}'")));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn is_name_part(value: &str) -> bool {
    let edge = |c: char| c.is_ascii_alphanumeric();
    !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && value.starts_with(edge)
        && value.ends_with(edge)
}

/// A qualified name (label and annotation keys): an optional DNS-1123 subdomain prefix and
/// `/`, then a name of at most 63 alphanumerics, '-', '_' or '.', starting and ending with an
/// alphanumeric.
pub fn is_qualified_name(value: &str) -> Result<(), Problems> {
    let mut problems = Vec::new();
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            problems.push(NameError("prefix part must be non-empty".into()));
        } else if let Err(mut more) = is_dns1123_subdomain(prefix) {
            problems.append(&mut more);
        }
    }
    if name.is_empty() {
        problems.push(NameError("name part must be non-empty".into()));
    } else if name.len() > 63 {
        problems.push(NameError(
            "name part must be no more than 63 characters".into(),
        ));
    } else if !is_name_part(name) || name.contains('/') {
        problems.push(NameError(format!(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc'), got {value:?}"
        )));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// A label value: empty, or at most 63 alphanumerics, '-', '_' or '.', starting and ending with
/// an alphanumeric.
pub fn is_label_value(value: &str) -> Result<(), Problems> {
    let mut problems = Vec::new();
    if value.len() > 63 {
        problems.push(NameError("must be no more than 63 characters".into()));
    }
    if !value.is_empty() && !is_name_part(value) {
        problems.push(NameError(format!(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue', or 'my_value', or '12345'), got {value:?}"
        )));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(is_dns1123_label("my-name").is_ok());
        assert!(is_dns1123_label("123-abc").is_ok());
        for bad in ["", "-a", "a-", "A", "a.b", &"a".repeat(64)] {
            assert!(is_dns1123_label(bad).is_err(), "{bad:?}");
        }
        assert!(is_label_value(&format!("A={}", "\u{fffc}".repeat(30))).is_err());
        assert!(is_label_value(&"\u{fffc}".repeat(30)).is_err());
        assert!(is_dns1123_subdomain("example.com").is_ok());
        assert!(is_dns1123_subdomain("a..b").is_err());
        assert!(is_dns1123_subdomain(&"a".repeat(254)).is_err());
        assert!(is_dns1035_label("web").is_ok());
        assert!(is_dns1035_label("1web").is_err());
        assert!(is_path_segment_name("..").is_err());
        assert!(is_path_segment_name("a%b").is_err());
    }

    #[test]
    fn qualified_names_and_values() {
        for ok in ["app", "app.kubernetes.io/name", "MyName", "my.name", "a_b"] {
            assert!(is_qualified_name(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "Example.com/a",
            "a/b/c",
            "-a",
            &"a".repeat(64),
        ] {
            assert!(is_qualified_name(bad).is_err(), "{bad:?}");
        }
        for ok in ["", "v1", "my_value", "12345", "A.b-c"] {
            assert!(is_label_value(ok).is_ok(), "{ok:?}");
        }
        for bad in ["-a", "a b", "é", &"a".repeat(64)] {
            assert!(is_label_value(bad).is_err(), "{bad:?}");
        }
    }
}
