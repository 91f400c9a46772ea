//! Fuzzes strategic merge patches on built-in kinds: the first byte picks the kind, the rest is
//! an original object and a patch as JSON separated by a NUL byte. Any pair merges or is refused
//! with an error, never a panic, and a merge of an object is an object.
#![no_main]

use capstan_core::patch::strategic_merge;
use capstan_core::registry::Registry;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;

const KINDS: &[(&str, &str)] = &[
    ("v1", "Pod"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("apps/v1", "StatefulSet"),
    ("batch/v1", "CronJob"),
    ("v1", "Node"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
];

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::with_builtins)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (api_version, kind) = KINDS[usize::from(pick) % KINDS.len()];
    let kind = registry()
        .by_api_version(api_version, kind)
        .expect("a built-in kind");
    let mut parts = rest.splitn(2, |&b| b == 0);
    let (Some(original), Some(patch)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Ok(original), Ok(patch)) = (
        serde_json::from_slice::<Value>(original),
        serde_json::from_slice::<Value>(patch),
    ) else {
        return;
    };
    if let Ok(merged) = strategic_merge(kind, &original, &patch) {
        assert!(merged.is_object(), "{original} + {patch} gave {merged}");
    }
});
