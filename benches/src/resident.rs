//! Resident memory of a process, read from `/proc/<pid>/status`.

/// A `Vm*` figure (`VmRSS`, `VmHWM`) of process `pid` (`None`: this process) in MiB; NaN when
/// it cannot be read.
pub fn resident_mib(pid: Option<u32>, field: &str) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    let prefix = format!("{field}:");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(&prefix))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}
