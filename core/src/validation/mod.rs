//! Validation of names and labels with Kubernetes' rules. It only judges strings; building
//! `Status` errors with field paths is the API server's job.

mod names;
pub mod structural;

pub use names::{
    is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_label_value, is_path_segment_name,
    is_qualified_name, NameError,
};
