//! RBAC rule semantics: whether a `PolicyRule` allows a request, and whether a set of rules
//! covers another rule (the escalation check: nobody grants what they do not hold).

use crate::apiserver::RequestAttributes;
use k8s_openapi::api::rbac::v1::PolicyRule;

fn has(list: &[String], wanted: &str) -> bool {
    list.iter().any(|item| item == "*" || item == wanted)
}

/// Whether a rule's resource entry matches `resource` (`plural` or `plural/subresource`).
fn resource_matches(entry: &str, resource: &str) -> bool {
    if entry == "*" || entry == resource {
        return true;
    }
    // "*/scale" matches every resource's scale subresource.
    match (entry.strip_prefix("*/"), resource.split_once('/')) {
        (Some(sub), Some((_, wanted))) => sub == wanted,
        _ => false,
    }
}

fn url_matches(entry: &str, path: &str) -> bool {
    entry == "*"
        || entry == path
        || entry
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

/// `plural` or `plural/subresource` of a request.
pub(crate) fn combined_resource(attributes: &RequestAttributes) -> String {
    match &attributes.subresource {
        Some(sub) => format!("{}/{sub}", attributes.resource),
        None => attributes.resource.clone(),
    }
}

/// Whether `rule` allows the request.
pub fn rule_allows(rule: &PolicyRule, attributes: &RequestAttributes) -> bool {
    if !has(&rule.verbs, &attributes.verb) {
        return false;
    }
    if let Some(path) = &attributes.path {
        return rule
            .non_resource_urls
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|entry| url_matches(entry, path));
    }
    if !has(
        rule.api_groups.as_deref().unwrap_or_default(),
        &attributes.group,
    ) {
        return false;
    }
    let resource = combined_resource(attributes);
    if !rule
        .resources
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|entry| resource_matches(entry, &resource))
    {
        return false;
    }
    match rule.resource_names.as_deref() {
        None | Some([]) => true,
        Some(names) => attributes
            .name
            .as_deref()
            .is_some_and(|name| names.iter().any(|n| n == name)),
    }
}

/// Whether `owned` rules allow everything `rule` grants: each (verb, group, resource, name) or
/// (verb, URL) of `rule`, wildcards taken literally (only a wildcard covers a wildcard).
pub fn rules_cover(owned: &[PolicyRule], rule: &PolicyRule) -> bool {
    let allowed = |attributes: &RequestAttributes| owned.iter().any(|o| covers_atom(o, attributes));
    for verb in &rule.verbs {
        for url in rule.non_resource_urls.as_deref().unwrap_or_default() {
            if !allowed(&RequestAttributes::non_resource(verb, url)) {
                return false;
            }
        }
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                let (plural, subresource) = match resource.split_once('/') {
                    Some((plural, sub)) => (plural.to_string(), Some(sub.to_string())),
                    None => (resource.clone(), None),
                };
                let names: Vec<Option<String>> = match rule.resource_names.as_deref() {
                    None | Some([]) => vec![None],
                    Some(names) => names.iter().cloned().map(Some).collect(),
                };
                for name in names {
                    let attributes = RequestAttributes {
                        verb: verb.clone(),
                        group: group.clone(),
                        resource: plural.clone(),
                        subresource: subresource.clone(),
                        namespace: None,
                        name,
                        path: None,
                        field_selector: None,
                    };
                    if !allowed(&attributes) {
                        return false;
                    }
                }
            }
        }
    }
    true
}

/// Like [`rule_allows`], except that a rule limited to names does not cover an atom for all
/// names.
fn covers_atom(owned: &PolicyRule, atom: &RequestAttributes) -> bool {
    let limited = owned
        .resource_names
        .as_deref()
        .is_some_and(|n| !n.is_empty());
    if atom.path.is_none() && atom.name.is_none() && limited {
        return false;
    }
    rule_allows(owned, atom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let strings = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        PolicyRule {
            verbs: strings(verbs),
            api_groups: Some(strings(groups)),
            resources: Some(strings(resources)),
            resource_names: (!names.is_empty()).then(|| strings(names)),
            non_resource_urls: None,
        }
    }

    fn request(verb: &str, group: &str, resource: &str, name: Option<&str>) -> RequestAttributes {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_string(), Some(s.to_string())),
            None => (resource.to_string(), None),
        };
        RequestAttributes {
            verb: verb.into(),
            group: group.into(),
            resource,
            subresource,
            namespace: Some("default".into()),
            name: name.map(str::to_string),
            path: None,
            field_selector: None,
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_subresources_and_names() {
        let pods = rule(&["get", "list"], &[""], &["pods"], &[]);
        assert!(rule_allows(&pods, &request("get", "", "pods", Some("a"))));
        assert!(!rule_allows(
            &pods,
            &request("delete", "", "pods", Some("a"))
        ));
        assert!(!rule_allows(
            &pods,
            &request("get", "apps", "pods", Some("a"))
        ));
        assert!(!rule_allows(
            &pods,
            &request("get", "", "pods/log", Some("a"))
        ));
        let logs = rule(&["get"], &[""], &["pods/log"], &[]);
        assert!(rule_allows(
            &logs,
            &request("get", "", "pods/log", Some("a"))
        ));
        let scales = rule(&["*"], &["*"], &["*/scale"], &[]);
        assert!(rule_allows(
            &scales,
            &request("update", "apps", "deployments/scale", Some("d"))
        ));
        assert!(!rule_allows(
            &scales,
            &request("update", "apps", "deployments", Some("d"))
        ));
        let named = rule(&["get"], &[""], &["configmaps"], &["one"]);
        assert!(rule_allows(
            &named,
            &request("get", "", "configmaps", Some("one"))
        ));
        assert!(!rule_allows(
            &named,
            &request("get", "", "configmaps", Some("two"))
        ));
        assert!(!rule_allows(
            &named,
            &request("list", "", "configmaps", None)
        ));
        let urls = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: Some(vec!["/apis/*".into(), "/version".into()]),
            ..PolicyRule::default()
        };
        assert!(rule_allows(
            &urls,
            &RequestAttributes::non_resource("get", "/apis/apps/v1")
        ));
        assert!(rule_allows(
            &urls,
            &RequestAttributes::non_resource("get", "/version")
        ));
        assert!(!rule_allows(
            &urls,
            &RequestAttributes::non_resource("get", "/metrics")
        ));
        assert!(!rule_allows(
            &pods,
            &RequestAttributes::non_resource("get", "/api")
        ));
    }

    #[test]
    fn only_held_rules_cover_granted_ones() {
        let held = vec![
            rule(
                &["get", "list", "watch"],
                &[""],
                &["pods", "configmaps"],
                &[],
            ),
            rule(&["update"], &[""], &["configmaps"], &["one"]),
        ];
        assert!(rules_cover(&held, &rule(&["get"], &[""], &["pods"], &[])));
        assert!(rules_cover(
            &held,
            &rule(&["update"], &[""], &["configmaps"], &["one"])
        ));
        assert!(!rules_cover(
            &held,
            &rule(&["update"], &[""], &["configmaps"], &[])
        ));
        assert!(!rules_cover(
            &held,
            &rule(&["delete"], &[""], &["pods"], &[])
        ));
        assert!(!rules_cover(&held, &rule(&["*"], &[""], &["pods"], &[])));
        assert!(!rules_cover(&held, &rule(&["get"], &["*"], &["pods"], &[])));
        assert!(rules_cover(
            &[rule(&["*"], &["*"], &["*"], &[])],
            &rule(&["*"], &["apps"], &["deployments/scale"], &[])
        ));
    }
}
