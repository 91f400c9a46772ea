//! Translation between Capstan's runtime types and the Docker Engine API: container create
//! bodies (command, env, mounts, resources, security), names, and container states.

use crate::{ROLE_LABEL, SANDBOX_LABEL};
use bollard::models::{ContainerCreateBody, HostConfig};
use capstan_core::runtime::{parse_rfc3339, ContainerConfig, ContainerState, RuntimeError};
use std::collections::HashMap;
use std::time::SystemTime;

/// A Docker object name from parts: `capstan_<part>_<part>_…_<random>`, restricted to the
/// characters Docker accepts.
pub(crate) fn object_name(parts: &[&str]) -> String {
    let mut name = String::from("capstan");
    for part in parts {
        name.push('_');
        name.extend(part.chars().map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        }));
    }
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    name.push('_');
    name.push_str(&suffix[..8]);
    name
}

/// A hostname Docker accepts (at most 63 characters).
pub(crate) fn hostname(name: &str) -> String {
    name.chars().take(63).collect()
}

/// The create body of an app container joining `sandbox_id`.
pub(crate) fn container_body(
    config: &ContainerConfig,
    sandbox_id: &str,
) -> Result<ContainerCreateBody, RuntimeError> {
    let mut labels: HashMap<String, String> = config.labels.clone().into_iter().collect();
    labels.insert(ROLE_LABEL.into(), "container".into());
    labels.insert(SANDBOX_LABEL.into(), sandbox_id.into());
    let mut binds = Vec::new();
    for mount in &config.mounts {
        let host = mount.host_path.to_str().ok_or_else(|| {
            RuntimeError::InvalidConfig(format!("mount source {:?} is not UTF-8", mount.host_path))
        })?;
        if host.contains(':') || mount.container_path.contains(':') {
            return Err(RuntimeError::InvalidConfig(format!(
                "mount paths must not contain ':': {host} -> {}",
                mount.container_path
            )));
        }
        let mut bind = format!("{host}:{}", mount.container_path);
        if mount.read_only {
            bind.push_str(":ro");
        }
        binds.push(bind);
    }
    let resources = config.resources;
    let cpu_shares = resources
        .cpu_request_millis
        .map(|m| ((m * 1024) / 1000).max(2) as i64);
    let cpu_quota = resources
        .cpu_limit_millis
        .map(|m| (m * 100).max(1000) as i64);
    let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    Ok(ContainerCreateBody {
        image: Some(config.image.clone()),
        entrypoint: non_empty(&config.command),
        cmd: non_empty(&config.args),
        env: Some(config.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: config.working_dir.clone().filter(|d| !d.is_empty()),
        user: config.run_as_user.map(|u| u.to_string()),
        tty: Some(config.tty),
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some(format!("container:{sandbox_id}")),
            ipc_mode: Some(format!("container:{sandbox_id}")),
            binds: Some(binds),
            cpu_shares,
            cpu_period: cpu_quota.map(|_| 100_000),
            cpu_quota,
            memory: resources.memory_limit_bytes.map(|b| b as i64),
            readonly_rootfs: Some(config.read_only_root_filesystem),
            privileged: Some(config.privileged),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// A container's state from the engine's.
pub(crate) fn state(state: Option<&bollard::models::ContainerState>) -> ContainerState {
    let Some(state) = state else {
        return ContainerState::Created;
    };
    let started = state.started_at.as_deref().and_then(parse_rfc3339);
    let finished = state.finished_at.as_deref().and_then(parse_rfc3339);
    if state.running == Some(true) {
        return ContainerState::Running {
            started_at: started.unwrap_or_else(SystemTime::now),
        };
    }
    match (started, finished) {
        (None, None) if state.exit_code.unwrap_or(0) == 0 => ContainerState::Created,
        _ => {
            let exit_code = state.exit_code.unwrap_or(0) as i32;
            let reason = if state.oom_killed == Some(true) {
                "OOMKilled"
            } else if exit_code == 0 {
                "Completed"
            } else {
                "Error"
            };
            ContainerState::Exited {
                exit_code,
                reason: reason.into(),
                started_at: started,
                finished_at: finished.unwrap_or_else(SystemTime::now),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_core::runtime::{Mount, ResourceSettings};

    #[test]
    fn names_are_docker_safe_and_unique() {
        let a = object_name(&["web", "my_pod", "ns"]);
        let b = object_name(&["web", "my_pod", "ns"]);
        assert!(a.starts_with("capstan_web_my-pod_ns_"));
        assert_ne!(a, b);
    }

    #[test]
    fn bodies_carry_resources_mounts_and_the_sandbox() {
        let config = ContainerConfig {
            name: "main".into(),
            image: "busybox:1".into(),
            command: vec!["sh".into()],
            mounts: vec![Mount {
                host_path: "/tmp/v".into(),
                container_path: "/data".into(),
                read_only: true,
            }],
            resources: ResourceSettings {
                cpu_request_millis: Some(500),
                cpu_limit_millis: Some(250),
                memory_limit_bytes: Some(64 << 20),
            },
            ..ContainerConfig::default()
        };
        let body = container_body(&config, "abc").unwrap();
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("container:abc"));
        assert_eq!(host.binds.unwrap(), ["/tmp/v:/data:ro"]);
        assert_eq!(host.cpu_shares, Some(512));
        assert_eq!(host.cpu_quota, Some(25_000));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(body.entrypoint.unwrap(), ["sh"]);
        assert_eq!(body.cmd, None);
        assert_eq!(body.labels.unwrap()[SANDBOX_LABEL], "abc");
    }
}
