//! Fuzzes label and field selector parsing: any text parses or is refused with an error, never a
//! panic, and a parsed selector prints as text that parses back to the same selector.
#![no_main]

use capstan_core::selector::{FieldSelector, LabelSelector};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(selector) = LabelSelector::parse(&text) {
        let printed = selector.to_string();
        let reparsed = LabelSelector::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(selector, reparsed, "{text:?} printed as {printed:?}");
        let labels = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            ("tier".to_string(), "1".to_string()),
        ]);
        assert_eq!(selector.matches(&labels), reparsed.matches(&labels));
    }
    if let Ok(selector) = FieldSelector::parse(&text) {
        let printed = selector.to_string();
        let reparsed = FieldSelector::parse(&printed)
            .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which fails: {e}"));
        assert_eq!(selector, reparsed, "{text:?} printed as {printed:?}");
        let field = |path: &str| match path {
            "metadata.name" => Some("web-0".to_string()),
            "spec.nodeName" => Some(String::new()),
            _ => None,
        };
        assert_eq!(selector.matches(field), reparsed.matches(field));
    }
});
