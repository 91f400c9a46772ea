//! Running many requests with a bounded number in flight.

use futures::StreamExt;
use std::future::Future;

/// Runs `make(i)` for every `i` in `0..n`, at most `in_flight` at once, and waits for all.
pub async fn concurrently<F, Fut>(n: usize, in_flight: usize, make: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    futures::stream::iter(0..n)
        .map(make)
        .buffer_unordered(in_flight.max(1))
        .collect::<Vec<()>>()
        .await;
}
