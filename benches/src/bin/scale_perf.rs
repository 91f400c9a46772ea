//! `scale-perf`: the harness in [`capstan_benches::scale_perf`], run with the allocator the `capstan`
//! binary runs with, so the figures are the binary's.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    capstan_benches::scale_perf::main();
}
