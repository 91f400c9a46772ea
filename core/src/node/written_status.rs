//! What a pod worker remembers of the status it last wrote. Not the text: a node keeps one per
//! pod (~1.3 KB of JSON each, 200 MB across 150,000 pods), while a sync needs only a digest to
//! skip a write that changes nothing, the members it set (to null those a later status drops)
//! and each condition's status and transition time (kept while the status holds).

use serde_json::{json, Map, Value};
use std::hash::Hasher;

/// The status members a node agent writes, one bit each in [`WrittenStatus::members`]. Members
/// others write (the scheduler's `nominatedNodeName`) are never nulled by the agent.
const MEMBERS: [&str; 12] = [
    "phase",
    "conditions",
    "hostIP",
    "hostIPs",
    "startTime",
    "containerStatuses",
    "qosClass",
    "podIP",
    "podIPs",
    "initContainerStatuses",
    "reason",
    "message",
];

/// One condition as written, in 16 bytes: its type, status (`None` for `Unknown`) and
/// transition time. A type outside [`KNOWN_TYPES`] and a time not in the agent's own form are
/// the rare cases: their text is kept beside the conditions ([`WrittenStatus::texts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WrittenCondition {
    /// Seconds since the epoch, when `since` is [`Since::Seconds`].
    seconds: i64,
    kind: ConditionType,
    status: Option<bool>,
    since: Since,
}

/// The condition types a node agent writes, named without a string of their own.
const KNOWN_TYPES: [&str; 6] = [
    "PodScheduled",
    "PodReadyToStartContainers",
    "Initialized",
    "ContainersReady",
    "Ready",
    "DisruptionTarget",
];

/// A condition's type: one of [`KNOWN_TYPES`] (its index), or another (a readiness gate's)
/// kept among the status's texts (its index there, after the known types' numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConditionType(u16);

impl ConditionType {
    const OTHERS: u16 = KNOWN_TYPES.len() as u16;

    fn known(i: usize) -> Option<Self> {
        u16::try_from(i).ok().map(ConditionType)
    }

    fn other(text: u16) -> Option<Self> {
        text.checked_add(Self::OTHERS).map(ConditionType)
    }
}

/// A condition's `lastTransitionTime`: whole seconds when the text is the agent's own
/// `YYYY-MM-DDTHH:MM:SSZ` (the usual case, kept without a string), else the text, kept among
/// the status's texts (by index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    Unset,
    Seconds,
    Text(u16),
}

/// The form the agent writes times in.
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%SZ";

/// The seconds of `text` when it is in the agent's own form.
fn whole_seconds(text: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(text, TIME_FORMAT)
        .ok()
        .map(|time| time.and_utc())
        .filter(|time| time.format(TIME_FORMAT).to_string() == text)
        .map(|time| time.timestamp())
}

/// The remembered facts of one written status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WrittenStatus {
    digest: u64,
    members: u16,
    conditions: Box<[WrittenCondition]>,
    /// Condition types and times that are kept as text (usually none).
    texts: Box<[Box<str>]>,
}

/// Feeds serialized JSON into a hasher without building the text.
struct HashingWriter<'a>(&'a mut std::collections::hash_map::DefaultHasher);

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A digest of `status`'s JSON. Objects serialize with sorted members, so two statuses with
/// the same content have the same digest whatever order they were built in.
fn digest(status: &Value) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    // Writing into a hasher cannot fail.
    let _ = serde_json::to_writer(HashingWriter(&mut hasher), status);
    hasher.finish()
}

impl WrittenStatus {
    /// Remembers `status` (a pod's `status` object).
    pub fn of(status: &Value) -> Self {
        let members = MEMBERS
            .iter()
            .enumerate()
            .filter(|(_, name)| status.get(**name).is_some())
            .fold(0u16, |bits, (i, _)| bits | 1 << i);
        let mut texts: Vec<Box<str>> = Vec::new();
        let mut keep_text = |text: &str| {
            texts.push(text.into());
            u16::try_from(texts.len() - 1).ok()
        };
        let conditions = status
            .get("conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let kind = c.get("type")?.as_str()?;
                let kind = match KNOWN_TYPES.iter().position(|known| *known == kind) {
                    Some(i) => ConditionType::known(i)?,
                    None => ConditionType::other(keep_text(kind)?)?,
                };
                let time = c.get("lastTransitionTime").and_then(Value::as_str);
                let (seconds, since) = match time {
                    None => (0, Since::Unset),
                    Some(text) => match whole_seconds(text) {
                        Some(seconds) => (seconds, Since::Seconds),
                        None => (0, Since::Text(keep_text(text)?)),
                    },
                };
                Some(WrittenCondition {
                    seconds,
                    kind,
                    status: match c.get("status").and_then(Value::as_str) {
                        Some("True") => Some(true),
                        Some("False") => Some(false),
                        _ => None,
                    },
                    since,
                })
            })
            .collect();
        WrittenStatus {
            digest: digest(status),
            members,
            conditions,
            texts: texts.into_boxed_slice(),
        }
    }

    /// Kept text `i`.
    fn text(&self, i: u16) -> &str {
        self.texts.get(usize::from(i)).map_or("", |t| &**t)
    }

    /// Whether `status` has the same content as the remembered one.
    pub fn same_as(&self, status: &Value) -> bool {
        self.digest == digest(status)
    }

    /// The agent's members the remembered status set.
    pub fn members(&self) -> impl Iterator<Item = &'static str> + '_ {
        MEMBERS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.members & (1 << i) != 0)
            .map(|(_, name)| *name)
    }

    /// The remembered conditions as a status object (`{"conditions": [...]}`, each with its
    /// type, status and transition time), the shape condition bookkeeping reads.
    pub fn conditions(&self) -> Value {
        let conditions = self
            .conditions
            .iter()
            .map(|c| {
                let mut condition = Map::new();
                let kind = match c.kind.0.checked_sub(ConditionType::OTHERS) {
                    None => KNOWN_TYPES.get(usize::from(c.kind.0)).copied(),
                    Some(i) => Some(self.text(i)),
                };
                condition.insert("type".into(), json!(kind.unwrap_or_default()));
                let status = match c.status {
                    Some(true) => "True",
                    Some(false) => "False",
                    None => "Unknown",
                };
                condition.insert("status".into(), json!(status));
                let since = match c.since {
                    Since::Unset => None,
                    Since::Seconds => chrono::DateTime::from_timestamp(c.seconds, 0)
                        .map(|time| time.format(TIME_FORMAT).to_string()),
                    Since::Text(i) => Some(self.text(i).to_string()),
                };
                if let Some(since) = since {
                    condition.insert("lastTransitionTime".into(), json!(since));
                }
                Value::Object(condition)
            })
            .collect();
        json!({ "conditions": Value::Array(conditions) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> Value {
        json!({
            "phase": "Running",
            "podIP": "10.244.0.5",
            "nominatedNodeName": "n1",
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-04T10:00:00Z", "lastProbeTime": null},
                {"type": "PodScheduled", "status": "Unknown"},
                {"type": "example.com/gate", "status": "False", "lastTransitionTime": "2026-12-04T10:00:00.5Z"},
            ],
        })
    }

    #[test]
    fn the_same_content_in_another_order_is_the_same_status() {
        let written = WrittenStatus::of(&status());
        let reordered: Value = serde_json::from_str(
            r#"{"conditions": [{"lastProbeTime": null, "lastTransitionTime": "2026-12-04T10:00:00Z", "status": "True", "type": "Ready"}, {"status": "Unknown", "type": "PodScheduled"}, {"lastTransitionTime": "2026-12-04T10:00:00.5Z", "status": "False", "type": "example.com/gate"}], "nominatedNodeName": "n1", "podIP": "10.244.0.5", "phase": "Running"}"#,
        )
        .unwrap();
        assert!(written.same_as(&reordered));
        let mut changed = status();
        changed["phase"] = json!("Succeeded");
        assert!(!written.same_as(&changed));
    }

    #[test]
    fn a_condition_is_remembered_in_sixteen_bytes() {
        // A node keeps five or so for every pod it runs.
        assert_eq!(std::mem::size_of::<WrittenCondition>(), 16);
    }

    #[test]
    fn members_are_the_agents_own_that_were_set() {
        let written = WrittenStatus::of(&status());
        let members: Vec<&str> = written.members().collect();
        assert_eq!(members, ["phase", "conditions", "podIP"]);
    }

    #[test]
    fn conditions_keep_status_and_transition_time() {
        let written = WrittenStatus::of(&status());
        assert_eq!(
            written.conditions(),
            json!({"conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-04T10:00:00Z"},
                {"type": "PodScheduled", "status": "Unknown"},
                {"type": "example.com/gate", "status": "False", "lastTransitionTime": "2026-12-04T10:00:00.5Z"},
            ]})
        );
    }
}
