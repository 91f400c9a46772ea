//! Taints and tolerations: whether a toleration matches a taint, as the scheduler (NoSchedule,
//! PreferNoSchedule) and the node lifecycle controller (NoExecute) both decide it.

use k8s_openapi::api::core::v1::{Taint, Toleration};

/// Whether `toleration` tolerates `taint`: the effect matches (or the toleration names none),
/// and either the toleration's key is empty with `Exists` (tolerates everything) or the keys
/// are equal and the operator is `Exists` or the values are equal (`Equal`, the default).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    if toleration
        .effect
        .as_deref()
        .is_some_and(|e| !e.is_empty() && e != taint.effect)
    {
        return false;
    }
    let exists = toleration.operator.as_deref() == Some("Exists");
    match toleration.key.as_deref() {
        None | Some("") => exists,
        Some(key) => {
            key == taint.key
                && (exists
                    || toleration.value.as_deref().unwrap_or("")
                        == taint.value.as_deref().unwrap_or(""))
        }
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}
