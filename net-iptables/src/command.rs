//! Running iptables tools (and nft): waiting for the xtables lock, retrying while another program holds
//! it, and reporting failures with the tool's own words.

use capstan_core::proxy::ProxyError;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Seconds an iptables tool waits for the xtables lock.
const LOCK_WAIT_SECONDS: &str = "5";
/// Attempts while the lock stays busy.
const ATTEMPTS: usize = 3;
/// iptables' exit status for "resource problem" (the lock, among others).
const RESOURCE_PROBLEM: i32 = 4;

/// Runs `program args…` with `stdin` fed in; returns its standard output.
pub(crate) async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, ProxyError> {
    let command_line = || format!("{program} {}", args.join(" "));
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        // iptables-save takes no lock; nft has none to wait for.
        let wait: &[&str] = if program.ends_with("-save") || !program.contains("iptables") {
            &[]
        } else {
            &["-w", LOCK_WAIT_SECONDS]
        };
        let mut child = Command::new(program)
            .args(wait)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ProxyError::Command {
                command: command_line(),
                detail: e.to_string(),
            })?;
        if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
            input
                .write_all(text.as_bytes())
                .await
                .map_err(|e| ProxyError::Command {
                    command: command_line(),
                    detail: format!("writing its input: {e}"),
                })?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| ProxyError::Command {
                command: command_line(),
                detail: e.to_string(),
            })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        last = format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        if out.status.code() != Some(RESOURCE_PROBLEM) {
            break;
        }
        tracing::debug!(attempt, "{program}: xtables lock busy; retrying");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(ProxyError::Command {
        command: command_line(),
        detail: last,
    })
}
