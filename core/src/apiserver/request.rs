//! Parsing a request's path and query into what it addresses: discovery, or a resource (group,
//! version, plural, namespace, name, subresource) with its options.

use super::ApiError;

/// What a path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/apis/{group}`.
    Group(String),
    /// `/api/v1` or `/apis/{group}/{version}`.
    GroupVersion {
        /// API group (`""` for core).
        group: String,
        /// Version.
        version: String,
    },
    /// A resource collection or object.
    Resource(ResourcePath),
}

/// The resource part of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Namespace from the path (`namespaces/{ns}/…`).
    pub namespace: Option<String>,
    /// Resource (plural) name.
    pub plural: String,
    /// Object name.
    pub name: Option<String>,
    /// Subresource, e.g. `status`.
    pub subresource: Option<String>,
}

fn decode_segment(segment: &str) -> Result<String, ApiError> {
    percent_decode(segment)
        .ok_or_else(|| ApiError::bad_request(format!("invalid path segment {segment:?}")))
}

/// Decodes `%XX` escapes; `None` on a malformed escape or non-UTF-8 result.
pub(crate) fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = input.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a request path.
pub fn parse_path(path: &str) -> Result<Target, ApiError> {
    let segments: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode_segment)
        .collect::<Result<_, _>>()?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (group, version, rest) = match segments.as_slice() {
        ["api"] => return Ok(Target::CoreVersions),
        ["apis"] => return Ok(Target::Groups),
        ["apis", group] => return Ok(Target::Group(group.to_string())),
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(ApiError::no_route()),
    };
    let resource =
        |namespace: Option<&str>, plural: &str, name: Option<&str>, sub: Option<&str>| {
            Target::Resource(ResourcePath {
                group: group.to_string(),
                version: version.to_string(),
                namespace: namespace.map(str::to_string),
                plural: plural.to_string(),
                name: name.map(str::to_string),
                subresource: sub.map(str::to_string),
            })
        };
    Ok(match rest {
        [] => Target::GroupVersion {
            group: group.to_string(),
            version: version.to_string(),
        },
        // A namespace's own subresources: /api/v1/namespaces/{name}/status|finalize.
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            resource(None, "namespaces", Some(name), Some(sub))
        }
        ["namespaces", ns, plural] => resource(Some(ns), plural, None, None),
        ["namespaces", ns, plural, name] => resource(Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => resource(Some(ns), plural, Some(name), Some(sub)),
        [plural] => resource(None, plural, None, None),
        [plural, name] => resource(None, plural, Some(name), None),
        [plural, name, sub] => resource(None, plural, Some(name), Some(sub)),
        _ => return Err(ApiError::no_route()),
    })
}

/// Query parameters, with Go `strconv.ParseBool` semantics for booleans.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses a raw query string.
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let decode = |s: &str| {
                percent_decode(&s.replace('+', " ")).ok_or_else(|| {
                    ApiError::bad_request(format!("invalid query parameter {part:?}"))
                })
            };
            pairs.push((decode(key)?, decode(value)?));
        }
        Ok(Query { pairs })
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A boolean parameter: absent is `false`; `1 t T TRUE true True` and `0 f F FALSE false
    /// False` as Go reads them; anything else is a 400.
    pub fn bool(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some("1" | "t" | "T" | "TRUE" | "true" | "True") => Ok(true),
            Some("" | "0" | "f" | "F" | "FALSE" | "false" | "False") => Ok(false),
            Some(other) => Err(ApiError::bad_request(format!(
                "invalid boolean value {other:?} for query parameter {key}"
            ))),
        }
    }

    /// A non-negative integer parameter.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .map(|v| v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid value {v:?} for query parameter {key}: expected a non-negative integer"))))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("/api").unwrap(), Target::CoreVersions);
        assert_eq!(
            parse_path("/apis/apps").unwrap(),
            Target::Group("apps".into())
        );
        let Target::Resource(r) = parse_path("/api/v1/namespaces/default/pods/web/log").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (
                r.namespace.as_deref(),
                r.plural.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            (Some("default"), "pods", Some("web"), Some("log"))
        );
        let Target::Resource(r) = parse_path("/api/v1/namespaces/kube-system").unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.plural.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("kube-system"), None)
        );
        let Target::Resource(r) = parse_path("/api/v1/namespaces/x/status").unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                r.plural.as_str(),
                r.name.as_deref(),
                r.subresource.as_deref()
            ),
            ("namespaces", Some("x"), Some("status"))
        );
        let Target::Resource(r) = parse_path("/apis/apps/v1/deployments").unwrap() else {
            panic!()
        };
        assert_eq!((r.group.as_str(), r.namespace), ("apps", None));
        assert!(parse_path("/apis/a/b/c/d/e/f/g/h").is_err());
        assert!(parse_path("/nope").is_err());
        assert!(parse_path("/api/v1/pods/%zz").is_err());
    }

    #[test]
    fn go_booleans() {
        let q = Query::parse(Some(
            "watch=True&a=1&b=false&c=yes&labelSelector=app%3Dweb&x=a+b",
        ))
        .unwrap();
        assert!(q.bool("watch").unwrap());
        assert!(q.bool("a").unwrap());
        assert!(!q.bool("b").unwrap());
        assert!(!q.bool("missing").unwrap());
        assert!(q.bool("c").is_err());
        assert_eq!(q.get("labelSelector"), Some("app=web"));
        assert_eq!(q.get("x"), Some("a b"));
    }
}
