//! `controller-perf`: the harness in [`capstan_benches::controller_perf`], with a counting allocator around the
//! allocator the `capstan` binary runs with.

/// Counts live heap bytes, so cache memory is measured exactly rather than through RSS (which
/// freed-but-kept allocator pages blur).
#[global_allocator]
static ALLOCATOR: cap::Cap<mimalloc::MiMalloc> = cap::Cap::new(mimalloc::MiMalloc, usize::MAX);

fn main() {
    capstan_benches::controller_perf::main(|| ALLOCATOR.allocated());
}
