//! The work queue between change notifications and reconciles: keys are deduplicated, a key is
//! never handed out twice at once (one re-added while being processed is handed out again after
//! [`WorkQueue::done`]), failures back off per key exponentially until a success resets them,
//! an overall token bucket limits retries, and additions can be delayed or debounced.

use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Settings of a [`WorkQueue`].
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// First retry delay after a failure.
    pub base_delay: Duration,
    /// Largest retry delay.
    pub max_delay: Duration,
    /// Retries let through per second overall (token bucket refill rate).
    pub retries_per_second: f64,
    /// Retries let through at once (token bucket size).
    pub retry_burst: u32,
    /// Additions through [`WorkQueue::add`] wait this long, so a burst of changes to one key
    /// makes one reconcile (zero: none).
    pub debounce: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(300),
            retries_per_second: 10.0,
            retry_burst: 100,
            debounce: Duration::ZERO,
        }
    }
}

struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    /// Takes a token, returning how long the caller must wait for it.
    fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

struct State<Key> {
    ready: VecDeque<Key>,
    queued: HashSet<Key>,
    processing: HashSet<Key>,
    /// Added while processing: handed out again once done.
    dirty: HashSet<Key>,
    failures: HashMap<Key, u32>,
    delayed: BinaryHeap<std::cmp::Reverse<(Instant, u64)>>,
    delayed_keys: HashMap<u64, Key>,
    /// The earliest pending delayed addition of each key.
    delayed_at: HashMap<Key, Instant>,
    sequence: u64,
    bucket: TokenBucket,
    shut_down: bool,
}

/// A deduplicating, rate-limited queue of keys.
pub struct WorkQueue<Key> {
    state: Mutex<State<Key>>,
    notify: Notify,
    config: QueueConfig,
}

impl<Key: Clone + Eq + Hash + Send> WorkQueue<Key> {
    /// An empty queue.
    pub fn new(config: QueueConfig) -> Self {
        WorkQueue {
            state: Mutex::new(State {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                failures: HashMap::new(),
                delayed: BinaryHeap::new(),
                delayed_keys: HashMap::new(),
                delayed_at: HashMap::new(),
                sequence: 0,
                bucket: TokenBucket {
                    tokens: config.retry_burst as f64,
                    last: Instant::now(),
                    rate: config.retries_per_second,
                    burst: config.retry_burst as f64,
                },
                shut_down: false,
            }),
            notify: Notify::new(),
            config,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<Key>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` (after the debounce delay, if configured).
    pub fn add(&self, key: Key) {
        if self.config.debounce.is_zero() {
            self.add_now(key);
        } else {
            self.add_after(key, self.config.debounce);
        }
    }

    /// Queues `key` at once.
    pub fn add_now(&self, key: Key) {
        let mut state = self.lock();
        if state.shut_down {
            return;
        }
        if state.processing.contains(&key) {
            state.dirty.insert(key);
            return;
        }
        if state.queued.insert(key.clone()) {
            state.ready.push_back(key);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Queues `key` once `delay` has passed (an earlier pending addition wins).
    pub fn add_after(&self, key: Key, delay: Duration) {
        if delay.is_zero() {
            return self.add_now(key);
        }
        let at = Instant::now() + delay;
        let mut state = self.lock();
        if state.shut_down || state.queued.contains(&key) {
            return;
        }
        if state.delayed_at.get(&key).is_some_and(|&t| t <= at) {
            return;
        }
        state.sequence += 1;
        let id = state.sequence;
        state.delayed.push(std::cmp::Reverse((at, id)));
        state.delayed_keys.insert(id, key.clone());
        state.delayed_at.insert(key, at);
        drop(state);
        self.notify.notify_one();
    }

    /// Queues `key` after its next backoff delay (doubling per consecutive failure) and the
    /// overall retry budget.
    pub fn add_rate_limited(&self, key: Key) {
        let delay = {
            let mut state = self.lock();
            let failures = state.failures.entry(key.clone()).or_insert(0);
            let exponent = (*failures).min(30);
            *failures += 1;
            let per_key = self
                .config
                .base_delay
                .saturating_mul(1u32 << exponent)
                .min(self.config.max_delay);
            let overall = state.bucket.take(Instant::now());
            per_key.max(overall)
        };
        self.add_after(key, delay);
    }

    /// Forgets `key`'s failures (after a success), so its next backoff starts from the base.
    pub fn forget(&self, key: &Key) {
        self.lock().failures.remove(key);
    }

    /// Consecutive failures recorded for `key`.
    pub fn failures(&self, key: &Key) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Marks `key` processed; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &Key) {
        let mut state = self.lock();
        state.processing.remove(key);
        if state.dirty.remove(key) && state.queued.insert(key.clone()) {
            state.ready.push_back(key.clone());
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Keys queued or waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.ready.len() + state.delayed_at.len()
    }

    /// Whether nothing is queued or waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops handing out keys; [`WorkQueue::next`] returns `None` from now on.
    pub fn shut_down(&self) {
        self.lock().shut_down = true;
        self.notify.notify_waiters();
        self.notify.notify_one();
    }

    /// The next key to process (which the caller must pass to [`WorkQueue::done`]), waiting
    /// for one; `None` after [`WorkQueue::shut_down`].
    pub async fn next(&self) -> Option<Key> {
        loop {
            let notified = self.notify.notified();
            let wake_at = {
                let mut state = self.lock();
                if state.shut_down {
                    return None;
                }
                let now = Instant::now();
                while let Some(std::cmp::Reverse((at, id))) = state.delayed.peek().copied() {
                    if at > now {
                        break;
                    }
                    state.delayed.pop();
                    let Some(key) = state.delayed_keys.remove(&id) else {
                        continue;
                    };
                    if state.delayed_at.get(&key) != Some(&at) {
                        continue;
                    }
                    state.delayed_at.remove(&key);
                    if state.processing.contains(&key) {
                        state.dirty.insert(key);
                    } else if state.queued.insert(key.clone()) {
                        state.ready.push_back(key);
                    }
                }
                if let Some(key) = state.ready.pop_front() {
                    state.queued.remove(&key);
                    state.processing.insert(key.clone());
                    // Another worker may take the next key.
                    if !state.ready.is_empty() {
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
                state.delayed.peek().map(|r| r.0 .0)
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue<&'static str> {
        WorkQueue::new(QueueConfig::default())
    }

    #[tokio::test]
    async fn duplicates_collapse_and_a_key_is_never_handed_out_twice_at_once() {
        let q = queue();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.next().await, Some("a"));
        q.add("a"); // while processing: deferred
        assert_eq!(q.next().await, Some("b"));
        assert!(q.is_empty());
        q.done(&"a");
        assert_eq!(q.next().await, Some("a"));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_per_failure_and_resets_on_forget() {
        let q = queue();
        let start = Instant::now();
        for expected_ms in [5u64, 10, 20] {
            q.add_rate_limited("a");
            let key = q.next().await;
            assert_eq!(key, Some("a"));
            q.done(&"a");
            let waited = Instant::now() - start;
            assert!(waited >= Duration::from_millis(expected_ms), "{waited:?}");
        }
        assert_eq!(q.failures(&"a"), 3);
        q.forget(&"a");
        assert_eq!(q.failures(&"a"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_additions_wait_and_the_earliest_wins() {
        let q = queue();
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(2));
        assert_eq!(q.next().await, Some("a"));
        let waited = Instant::now() - start;
        assert!(waited >= Duration::from_secs(2) && waited < Duration::from_secs(10));
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn shut_down_wakes_waiters() {
        let q = std::sync::Arc::new(queue());
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.shut_down();
        assert_eq!(waiter.await.unwrap(), None);
    }
}
