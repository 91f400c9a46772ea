//! `--config FILE`: a YAML mapping whose keys are long flag names (`listen: 127.0.0.1:6443`,
//! `etcd-endpoints: [http://a:2379, http://b:2379]`, `insecure-no-auth: true`). Its entries
//! become flags placed before the command line's own, so the command line wins.

use std::path::Path;

/// The flags `file` stands for.
fn flags_from(file: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let document: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{} is not YAML: {e}", file.display()))?;
    let mapping = match document {
        serde_yaml::Value::Mapping(mapping) => mapping,
        serde_yaml::Value::Null => return Ok(Vec::new()),
        _ => {
            return Err(format!(
                "{} must be a mapping of flag names",
                file.display()
            ))
        }
    };
    let mut flags = Vec::new();
    for (key, value) in mapping {
        let key = key
            .as_str()
            .ok_or_else(|| format!("{}: keys must be flag names", file.display()))?
            .to_string();
        let scalar = |value: &serde_yaml::Value| match value {
            serde_yaml::Value::String(s) => Ok(s.clone()),
            serde_yaml::Value::Number(n) => Ok(n.to_string()),
            serde_yaml::Value::Bool(b) => Ok(b.to_string()),
            _ => Err(format!(
                "{}: {key} must be a scalar or a list",
                file.display()
            )),
        };
        match &value {
            serde_yaml::Value::Bool(true) => flags.push(format!("--{key}")),
            serde_yaml::Value::Bool(false) | serde_yaml::Value::Null => {}
            serde_yaml::Value::Sequence(items) => {
                let items: Vec<String> = items.iter().map(scalar).collect::<Result<_, _>>()?;
                flags.push(format!("--{key}={}", items.join(",")));
            }
            other => flags.push(format!("--{key}={}", scalar(other)?)),
        }
    }
    Ok(flags)
}

/// The command line with a `--config FILE` (anywhere after the command) expanded in place of
/// itself, right after the command name.
pub fn expand(args: Vec<String>) -> Result<Vec<String>, String> {
    let position = args
        .iter()
        .position(|a| a == "--config" || a.starts_with("--config="));
    let Some(at) = position else {
        return Ok(args);
    };
    let (file, taken) = match args[at].strip_prefix("--config=") {
        Some(file) => (file.to_string(), 1),
        None => (args.get(at + 1).cloned().ok_or("--config needs a file")?, 2),
    };
    let flags = flags_from(Path::new(&file))?;
    let mut expanded: Vec<String> = args[..at].to_vec();
    expanded.extend(args[at + taken..].iter().cloned());
    // Program name and command first, then the file's flags, then the command line's.
    let split = expanded.len().min(2);
    let rest = expanded.split_off(split);
    expanded.extend(flags);
    expanded.extend(rest);
    Ok(expanded)
}
