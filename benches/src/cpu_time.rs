//! CPU time used by this process, read from `/proc/self/stat`: on a noisy machine the CPU a
//! piece of work costs is steadier than the wall-clock time it takes.

/// User plus system CPU seconds this process has used so far (all threads); NaN when it
/// cannot be read.
pub fn cpu_seconds() -> f64 {
    // USER_HZ, the unit of /proc's tick counts, is 100 on Linux.
    const TICKS_PER_SECOND: f64 = 100.0;
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // The fields after the command name (which may contain spaces) start at `state`;
            // utime and stime are the 14th and 15th fields of the line.
            let rest = &stat[stat.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / TICKS_PER_SECOND)
        })
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_work() {
        let before = cpu_seconds();
        assert!(before.is_finite(), "readable");
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds() >= before + 0.03, "100 ms of spinning shows");
    }
}
