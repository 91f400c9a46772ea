//! The conformance kit every [`ContainerRuntime`] runs from its own tests.
//!
//! Each check drives the runtime through the contract in the trait's docs and fails with a
//! message naming the broken promise. Containers are configured so that both simulated and
//! real runtimes behave alike: commands are busybox shell (`sh -c …`) and the same intent is
//! also written as `sim.capstan.dev/*` annotations.

use super::sim::{EXIT_AFTER, EXIT_CODE};
use super::{
    labels, ContainerConfig, ContainerRuntime, ContainerState, LogOptions, RuntimeError,
    RuntimeEvent, SandboxConfig,
};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// What the kit needs to know about the runtime under test.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// An image with busybox (`sh`, `echo`, `sleep`) that is present locally.
    pub image: String,
    /// An image reference that is certainly not present.
    pub missing_image: String,
    /// A prefix for names, so concurrent runs do not collide.
    pub prefix: String,
}

fn owner(fixture: &Fixture, case: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NODE.to_string(), fixture.prefix.clone()),
        (
            labels::POD_UID.to_string(),
            format!("{}-{case}", fixture.prefix),
        ),
    ])
}

fn container(fixture: &Fixture, case: &str, name: &str, script: &str) -> ContainerConfig {
    let mut labels = owner(fixture, case);
    labels.insert(super::labels::CONTAINER.into(), name.into());
    ContainerConfig {
        name: name.into(),
        image: fixture.image.clone(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        labels,
        ..ContainerConfig::default()
    }
}

async fn wait_for_exit(
    runtime: &dyn ContainerRuntime,
    id: &str,
    within: Duration,
) -> Result<ContainerState, String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let info = runtime
            .container_status(id)
            .await
            .map_err(|e| format!("container_status({id}): {e}"))?;
        if matches!(info.state, ContainerState::Exited { .. }) {
            return Ok(info.state);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("container {id} did not exit within {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs every check; returns the first failure.
pub async fn run_conformance(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> Result<(), String> {
    images(runtime, fixture).await?;
    lifecycle(runtime, fixture).await?;
    exits_and_events(runtime, fixture).await?;
    exec_logs_and_stats(runtime, fixture).await?;
    Ok(())
}

async fn images(runtime: &dyn ContainerRuntime, fixture: &Fixture) -> Result<(), String> {
    match runtime.image_status(&fixture.image).await {
        Ok(Some(id)) if !id.is_empty() => {}
        other => {
            return Err(format!(
                "a present image must have an id in image_status, got {other:?}"
            ))
        }
    }
    match runtime.image_status(&fixture.missing_image).await {
        Ok(None) => Ok(()),
        other => Err(format!(
            "a missing image must be absent from image_status, got {other:?}"
        )),
    }
}

async fn lifecycle(runtime: &dyn ContainerRuntime, fixture: &Fixture) -> Result<(), String> {
    let labels = owner(fixture, "lifecycle");
    let sandbox = runtime
        .run_sandbox(&SandboxConfig {
            dns: None,
            namespace: "default".into(),
            name: format!("{}-lifecycle", fixture.prefix),
            uid: format!("{}-lifecycle", fixture.prefix),
            hostname: "lifecycle".into(),
            host_network: false,
            labels: labels.clone(),
        })
        .await
        .map_err(|e| format!("run_sandbox: {e}"))?;
    if !sandbox.ready || sandbox.ip.is_none() {
        return Err(format!(
            "a new sandbox must be ready with an IP: {sandbox:?}"
        ));
    }
    let listed = runtime
        .list_sandboxes(&labels)
        .await
        .map_err(|e| e.to_string())?;
    if listed.iter().map(|s| &s.id).collect::<Vec<_>>() != vec![&sandbox.id] {
        return Err(format!("list_sandboxes by owner labels: {listed:?}"));
    }
    let config = container(fixture, "lifecycle", "main", "sleep 3600");
    let id = runtime
        .create_container(&sandbox.id, &config)
        .await
        .map_err(|e| format!("create_container: {e}"))?;
    let created = runtime
        .container_status(&id)
        .await
        .map_err(|e| e.to_string())?;
    if created.state != ContainerState::Created || created.container_name() != "main" {
        return Err(format!(
            "a created container is Created and keeps its labels: {created:?}"
        ));
    }
    runtime
        .start_container(&id)
        .await
        .map_err(|e| format!("start_container: {e}"))?;
    let running = runtime
        .container_status(&id)
        .await
        .map_err(|e| e.to_string())?;
    if !matches!(running.state, ContainerState::Running { .. }) {
        return Err(format!("a started container is Running: {running:?}"));
    }
    let listed = runtime
        .list_containers(&labels)
        .await
        .map_err(|e| e.to_string())?;
    if listed.len() != 1 || listed[0].id != id {
        return Err(format!("list_containers by owner labels: {listed:?}"));
    }
    runtime
        .stop_container(&id, Duration::from_secs(1))
        .await
        .map_err(|e| format!("stop_container: {e}"))?;
    wait_for_exit(runtime, &id, Duration::from_secs(10)).await?;
    runtime
        .stop_container(&id, Duration::from_secs(1))
        .await
        .map_err(|e| format!("stopping twice must succeed: {e}"))?;
    runtime
        .remove_container(&id)
        .await
        .map_err(|e| format!("remove_container: {e}"))?;
    runtime
        .remove_container(&id)
        .await
        .map_err(|e| format!("removing twice must succeed: {e}"))?;
    match runtime.container_status(&id).await {
        Err(RuntimeError::NotFound(_)) => {}
        other => return Err(format!("a removed container is NotFound, got {other:?}")),
    }
    // Removing a sandbox removes what is in it.
    let second = runtime
        .create_container(
            &sandbox.id,
            &container(fixture, "lifecycle", "second", "sleep 3600"),
        )
        .await
        .map_err(|e| e.to_string())?;
    runtime
        .start_container(&second)
        .await
        .map_err(|e| e.to_string())?;
    runtime
        .stop_sandbox(&sandbox.id)
        .await
        .map_err(|e| format!("stop_sandbox: {e}"))?;
    runtime
        .remove_sandbox(&sandbox.id)
        .await
        .map_err(|e| format!("remove_sandbox: {e}"))?;
    runtime
        .remove_sandbox(&sandbox.id)
        .await
        .map_err(|e| format!("removing a sandbox twice must succeed: {e}"))?;
    let left = runtime
        .list_containers(&labels)
        .await
        .map_err(|e| e.to_string())?;
    let sandboxes = runtime
        .list_sandboxes(&labels)
        .await
        .map_err(|e| e.to_string())?;
    if !left.is_empty() || !sandboxes.is_empty() {
        return Err(format!(
            "remove_sandbox must leave nothing: containers {left:?}, sandboxes {sandboxes:?}"
        ));
    }
    Ok(())
}

async fn exits_and_events(runtime: &dyn ContainerRuntime, fixture: &Fixture) -> Result<(), String> {
    let labels = owner(fixture, "exits");
    let sandbox = runtime
        .run_sandbox(&SandboxConfig {
            dns: None,
            namespace: "default".into(),
            name: format!("{}-exits", fixture.prefix),
            uid: format!("{}-exits", fixture.prefix),
            hostname: "exits".into(),
            host_network: false,
            labels: labels.clone(),
        })
        .await
        .map_err(|e| format!("run_sandbox: {e}"))?;
    let mut events = runtime.events();
    let mut config = container(fixture, "exits", "quitter", "sleep 0.3; exit 3");
    config.annotations = BTreeMap::from([
        (EXIT_AFTER.to_string(), "300ms".to_string()),
        (EXIT_CODE.to_string(), "3".to_string()),
    ]);
    let id = runtime
        .create_container(&sandbox.id, &config)
        .await
        .map_err(|e| e.to_string())?;
    runtime
        .start_container(&id)
        .await
        .map_err(|e| e.to_string())?;
    let state = wait_for_exit(runtime, &id, Duration::from_secs(20)).await?;
    let ContainerState::Exited { exit_code: 3, .. } = state else {
        return Err(format!("the container must exit with code 3: {state:?}"));
    };
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if matches!(&event, RuntimeEvent::Exited { container_id, exit_code: 3, .. } if *container_id == id)
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    runtime
        .remove_sandbox(&sandbox.id)
        .await
        .map_err(|e| e.to_string())?;
    if !seen {
        return Err("the events stream must report the exit with its code".into());
    }
    Ok(())
}

async fn exec_logs_and_stats(
    runtime: &dyn ContainerRuntime,
    fixture: &Fixture,
) -> Result<(), String> {
    let labels = owner(fixture, "exec");
    let sandbox = runtime
        .run_sandbox(&SandboxConfig {
            dns: None,
            namespace: "default".into(),
            name: format!("{}-exec", fixture.prefix),
            uid: format!("{}-exec", fixture.prefix),
            hostname: "exec".into(),
            host_network: false,
            labels: labels.clone(),
        })
        .await
        .map_err(|e| format!("run_sandbox: {e}"))?;
    let config = container(
        fixture,
        "exec",
        "talker",
        "echo first-line; echo capstan-marker; sleep 3600",
    );
    let id = runtime
        .create_container(&sandbox.id, &config)
        .await
        .map_err(|e| e.to_string())?;
    runtime
        .start_container(&id)
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        if runtime.capabilities().exec {
            let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let out = runtime
                .exec(
                    &id,
                    &words(&["echo", "hello", "exec"]),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| format!("exec: {e}"))?;
            if out.exit_code != 0 || !String::from_utf8_lossy(&out.stdout).contains("hello exec") {
                return Err(format!("exec echo must print and exit 0: {out:?}"));
            }
            let out = runtime
                .exec(
                    &id,
                    &words(&["sh", "-c", "exit 3"]),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| format!("exec: {e}"))?;
            if out.exit_code != 3 {
                return Err(format!("exec must report the exit code: {out:?}"));
            }
        }
        // Logs: poll until the output is there (real processes write asynchronously).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut stream = runtime
                .logs(&id, LogOptions::default())
                .await
                .map_err(|e| format!("logs: {e}"))?;
            let mut text = Vec::new();
            while let Some(chunk) = stream.next().await {
                text.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
            }
            if String::from_utf8_lossy(&text).contains("capstan-marker") {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "logs must contain what the container wrote: {:?}",
                    String::from_utf8_lossy(&text)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut stream = runtime
            .logs(
                &id,
                LogOptions {
                    tail_lines: Some(1),
                    timestamps: true,
                    ..LogOptions::default()
                },
            )
            .await
            .map_err(|e| format!("logs: {e}"))?;
        let mut text = Vec::new();
        while let Some(chunk) = stream.next().await {
            text.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        }
        let text = String::from_utf8_lossy(&text).to_string();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() != 1 || !lines[0].starts_with("20") {
            return Err(format!(
                "logs with tail 1 and timestamps must be one timestamped line: {text:?}"
            ));
        }
        let first = runtime
            .stats(&id)
            .await
            .map_err(|e| format!("stats: {e}"))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = runtime
            .stats(&id)
            .await
            .map_err(|e| format!("stats: {e}"))?;
        if second.cpu_usage_nanos < first.cpu_usage_nanos || second.memory_bytes == 0 {
            return Err(format!(
                "stats must report memory and monotonic CPU: {first:?} then {second:?}"
            ));
        }
        Ok(())
    }
    .await;
    runtime
        .remove_sandbox(&sandbox.id)
        .await
        .map_err(|e| e.to_string())?;
    result
}
