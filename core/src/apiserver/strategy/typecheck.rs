//! Type checking of built-in kinds: an object must decode as its k8s-openapi type, so a wrong
//! type anywhere (a string where a port number belongs, an object where a list belongs) is a
//! 400 naming the field, as Kubernetes' decoder reports it, instead of being stored.

use super::super::ApiError;
use super::builtin_types::{visit_builtin, BuiltinVisitor};
use crate::registry::ResourceKind;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn decode<T: DeserializeOwned + serde::Serialize>(
    kind: &ResourceKind,
    object: &Value,
) -> Result<Value, ApiError> {
    // Decoded without tracking its path first (tracking copies every key it passes); only a
    // failure is decoded again to name the field.
    if let Ok(typed) = T::deserialize(object) {
        return serde_json::to_value(&typed)
            .map_err(|e| ApiError::internal(format!("re-encoding a {}: {e}", kind.kind)));
    }
    let mut tracked = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(object, &mut tracked);
    match T::deserialize(deserializer) {
        Ok(typed) => serde_json::to_value(&typed)
            .map_err(|e| ApiError::internal(format!("re-encoding a {}: {e}", kind.kind))),
        Err(err) => {
            let path = tracked.path().to_string();
            Err(ApiError::bad_request(format!(
                "{} in version {:?} cannot be handled as a {}: {}: {err}",
                kind.kind,
                kind.version,
                kind.kind,
                if path == "." {
                    "<root>".to_string()
                } else {
                    path
                }
            )))
        }
    }
}

/// Decodes an object as a type, reporting the first failure with its field path.
struct TypeCheck<'a> {
    kind: &'a ResourceKind,
    object: &'a Value,
}

impl BuiltinVisitor for TypeCheck<'_> {
    type Output = Result<Value, ApiError>;
    fn visit<T: DeserializeOwned + serde::Serialize + schemars::JsonSchema>(self) -> Self::Output {
        decode::<T>(self.kind, self.object)
    }
}

/// Checks that `object` decodes as the kind's built-in type and returns it as the type knows it
/// (unknown fields dropped); `None` for kinds without a built-in type.
pub fn check_types(kind: &ResourceKind, object: &Value) -> Result<Option<Value>, ApiError> {
    visit_builtin(kind, TypeCheck { kind, object }).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn wrong_types_name_their_path() {
        let registry = Registry::with_builtins();
        let pods = registry.get("", "v1", "pods").unwrap();
        let good = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}});
        assert_eq!(
            check_types(pods, &good).unwrap().unwrap()["spec"]["containers"][0]["ports"][0]
                ["containerPort"],
            80
        );
        let bad = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "eighty"}]}]}});
        let err = check_types(pods, &bad).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message
                .contains("spec.containers[0].ports[0].containerPort"),
            "{}",
            err.message
        );
        let bad = json!({"metadata": {"name": "p"}, "spec": "nope"});
        assert!(check_types(pods, &bad)
            .unwrap_err()
            .message
            .contains("spec"));
    }
}
