//! A pod's resolver configuration from its `dnsPolicy` and `dnsConfig`, as the kubelet
//! derives it: ClusterFirst (the default) uses the cluster DNS with the namespace's search
//! path and `ndots:5`; Default (and ClusterFirst when the node knows no cluster DNS, or with
//! host networking) keeps the host's; None uses `dnsConfig` alone. `dnsConfig` adds name
//! servers and searches and overrides options by name.

use crate::runtime::DnsSettings;
use k8s_openapi::api::core::v1::Pod;
use std::net::IpAddr;

/// The resolver settings for `pod`; `None` keeps the runtime's (host's) default.
pub(crate) fn pod_dns(pod: &Pod, cluster_dns: Option<IpAddr>, domain: &str) -> Option<DnsSettings> {
    let spec = pod.spec.as_ref()?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.host_network.unwrap_or(false);
    let mut settings = match (spec.dns_policy.as_deref(), cluster_dns) {
        (Some("None"), _) => DnsSettings::default(),
        (Some("Default"), _) | (_, None) => return None,
        (Some("ClusterFirst") | None, Some(_)) if host_network => return None,
        (_, Some(server)) => DnsSettings {
            nameservers: vec![server.to_string()],
            searches: vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.to_string(),
            ],
            options: vec!["ndots:5".into()],
        },
    };
    if let Some(config) = &spec.dns_config {
        settings
            .nameservers
            .extend(config.nameservers.iter().flatten().cloned());
        settings
            .searches
            .extend(config.searches.iter().flatten().cloned());
        for option in config.options.iter().flatten() {
            let Some(name) = &option.name else { continue };
            settings
                .options
                .retain(|o| o.split(':').next() != Some(name.as_str()));
            settings.options.push(match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name.clone(),
            });
        }
    }
    Some(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    const DNS: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 244, 0, 1)));

    #[test]
    fn cluster_first_uses_the_cluster_dns_with_the_namespace_search_path() {
        let settings = pod_dns(&pod(json!({"containers": []})), DNS, "cluster.local").unwrap();
        assert_eq!(settings.nameservers, vec!["10.244.0.1"]);
        assert_eq!(
            settings.searches,
            vec![
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(settings.options, vec!["ndots:5"]);
    }

    #[test]
    fn default_host_network_and_no_cluster_dns_keep_the_host_resolver() {
        assert_eq!(
            pod_dns(
                &pod(json!({"containers": [], "dnsPolicy": "Default"})),
                DNS,
                "cluster.local"
            ),
            None
        );
        assert_eq!(
            pod_dns(
                &pod(json!({"containers": [], "hostNetwork": true})),
                DNS,
                "cluster.local"
            ),
            None
        );
        assert_eq!(
            pod_dns(&pod(json!({"containers": []})), None, "cluster.local"),
            None
        );
        let with_host_net = pod(
            json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        );
        assert!(pod_dns(&with_host_net, DNS, "cluster.local").is_some());
    }

    #[test]
    fn dns_config_adds_and_overrides() {
        let p = pod(json!({"containers": [], "dnsConfig": {
            "nameservers": ["10.0.0.53"], "searches": ["corp.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        let settings = pod_dns(&p, DNS, "cluster.local").unwrap();
        assert_eq!(settings.nameservers, vec!["10.244.0.1", "10.0.0.53"]);
        assert_eq!(settings.searches.last().unwrap(), "corp.example");
        assert_eq!(settings.options, vec!["ndots:2", "edns0"]);
        let none = pod(
            json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"]}}),
        );
        let settings = pod_dns(&none, DNS, "cluster.local").unwrap();
        assert_eq!(settings.nameservers, vec!["1.2.3.4"]);
        assert!(settings.searches.is_empty());
    }
}
