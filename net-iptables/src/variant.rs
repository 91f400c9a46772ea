//! Which iptables the host uses — the nf_tables-backed one or legacy xtables — and refusing to
//! program one while rules of ours live in the other (the two would both apply, in an order
//! nobody chose).

use capstan_core::proxy::ProxyError;
use tokio::process::Command;

/// An iptables implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// iptables over nf_tables (`iptables-nft`).
    Nft,
    /// Legacy xtables (`iptables-legacy`).
    Legacy,
}

impl Variant {
    /// The suffix of this variant's binaries (`nft`, `legacy`).
    fn suffix(self) -> &'static str {
        match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
        }
    }

    /// This variant's binary for `tool` (`iptables`, `iptables-save`, `iptables-restore`).
    pub(crate) fn binary(self, tool: &str) -> String {
        match tool.strip_prefix("iptables") {
            Some(rest) => format!("iptables-{}{rest}", self.suffix()),
            None => tool.to_string(),
        }
    }

    fn other(self) -> Variant {
        match self {
            Variant::Nft => Variant::Legacy,
            Variant::Legacy => Variant::Nft,
        }
    }

    /// The variant the host's `iptables` is.
    pub async fn detect() -> Result<Variant, ProxyError> {
        let out = Command::new("iptables")
            .arg("--version")
            .output()
            .await
            .map_err(|e| ProxyError::Command {
                command: "iptables --version".into(),
                detail: e.to_string(),
            })?;
        let version = String::from_utf8_lossy(&out.stdout);
        if version.contains("nf_tables") {
            Ok(Variant::Nft)
        } else if version.contains("legacy") || !version.trim().is_empty() {
            Ok(Variant::Legacy)
        } else {
            Err(ProxyError::Unsupported(format!(
                "cannot tell which iptables this is: {version:?}"
            )))
        }
    }

    /// Fails when the other variant holds chains of ours (a missing other variant is fine).
    pub(crate) async fn refuse_mixing(self) -> Result<(), ProxyError> {
        let other = self.other();
        let Ok(out) = Command::new(other.binary("iptables-save")).output().await else {
            return Ok(());
        };
        if String::from_utf8_lossy(&out.stdout).contains(crate::rules::CHAIN_PREFIX) {
            return Err(ProxyError::Unsupported(format!(
                "iptables-{} holds CAPSTAN- chains while this host uses iptables-{}; remove them first",
                other.suffix(),
                self.suffix()
            )));
        }
        Ok(())
    }
}
