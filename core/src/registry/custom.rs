//! What a CustomResourceDefinition adds to a served kind beyond its names: the version's
//! structural schema (validation and pruning), its printer columns and its scale subresource's
//! paths.

use serde_json::Value;

/// A kind defined by a CustomResourceDefinition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomKind {
    /// The CRD's name (`<plural>.<group>`).
    pub definition: String,
    /// The version's `openAPIV3Schema`, if it has one.
    pub schema: Option<Value>,
    /// `additionalPrinterColumns`.
    pub printer_columns: Vec<PrinterColumn>,
    /// The scale subresource's paths, when it is enabled.
    pub scale: Option<ScalePaths>,
}

/// One `additionalPrinterColumns` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrinterColumn {
    /// Column header.
    pub name: String,
    /// OpenAPI type: `string`, `integer`, `number`, `boolean`, `date`.
    pub type_: String,
    /// Simple JSONPath into the object, e.g. `.spec.replicas`.
    pub json_path: String,
    /// Description shown by `kubectl explain`-like tools.
    pub description: String,
    /// 0 shows always, higher only with `-o wide`.
    pub priority: i64,
}

/// Where a custom kind keeps what the scale subresource reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalePaths {
    /// e.g. `.spec.replicas`.
    pub spec_replicas: String,
    /// e.g. `.status.replicas`.
    pub status_replicas: String,
    /// e.g. `.status.selector`.
    pub label_selector: Option<String>,
}

/// Converts a simple JSONPath (`.a.b`, as CRDs use) to a JSON pointer (`/a/b`).
pub fn json_path_pointer(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .filter(|s| !s.is_empty())
        .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
        .collect()
}
