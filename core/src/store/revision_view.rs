//! Reading a past revision: the current state plus an overlay rebuilt from the revision log.
//!
//! Backends that keep the current state and a log of changes (with previous values) serve a
//! list at an older revision R by overlaying, for every key changed after R, its state at R.
//! This module owns that merge and nothing else.

use super::{KeyValue, Revision, StoreError, WatchEvent};
use std::collections::BTreeMap;
use std::iter::Peekable;

/// Given the events after revision R in ascending order, returns each touched key's state at R
/// (`None`: absent at R), for the keys accepted by `in_range`.
pub(crate) fn state_before<'a>(
    events_after: impl IntoIterator<Item = &'a WatchEvent>,
    in_range: impl Fn(&str) -> bool,
) -> BTreeMap<String, Option<KeyValue>> {
    let mut overlay = BTreeMap::new();
    for event in events_after {
        let Some(key) = event.key() else { continue };
        if !in_range(key) || overlay.contains_key(key) {
            continue;
        }
        overlay.insert(key.to_string(), event.previous().cloned());
    }
    overlay
}

/// Merges the current keys (ascending, already restricted to the range) with an overlay of
/// older states, returning at most `limit` visible keys and whether more remain.
pub(crate) fn merge_page<I>(
    current: I,
    overlay: BTreeMap<String, Option<KeyValue>>,
    limit: Option<usize>,
) -> Result<(Vec<KeyValue>, bool), StoreError>
where
    I: Iterator<Item = Result<KeyValue, StoreError>>,
{
    let limit = limit.filter(|l| *l > 0).unwrap_or(usize::MAX);
    let mut current: Peekable<I> = current.peekable();
    let mut overlay = overlay.into_iter().peekable();
    let mut items = Vec::new();
    loop {
        // Pick the smaller key of the two heads; the overlay wins on equal keys.
        let take_overlay = match (current.peek(), overlay.peek()) {
            (None, None) => break,
            (Some(Err(_)), _) => {
                return Err(current
                    .next()
                    .and_then(Result::err)
                    .unwrap_or_else(|| StoreError::backend("iterator error vanished")))
            }
            (Some(Ok(_)), None) => false,
            (None, Some(_)) => true,
            (Some(Ok(c)), Some((o, _))) => {
                if c.key.as_str() == o.as_str() {
                    current.next();
                    true
                } else {
                    o.as_str() < c.key.as_str()
                }
            }
        };
        let visible = if take_overlay {
            overlay.next().and_then(|(_, state)| state)
        } else {
            current.next().and_then(Result::ok)
        };
        if let Some(kv) = visible {
            if items.len() == limit {
                return Ok((items, true));
            }
            items.push(kv);
        }
    }
    Ok((items, false))
}

/// Fails unless a read at `requested` is possible: not compacted away, not in the future.
pub(crate) fn check_readable(
    requested: Revision,
    current: Revision,
    compacted: Revision,
) -> Result<(), StoreError> {
    if requested < compacted {
        return Err(StoreError::Compacted {
            requested,
            compacted,
        });
    }
    if requested > current {
        return Err(StoreError::FutureRevision { requested, current });
    }
    Ok(())
}

/// Whether `key` lies in the listing range of `prefix` after `start_after`.
pub(crate) fn in_list_range(key: &str, prefix: &str, start_after: Option<&str>) -> bool {
    key.starts_with(prefix) && start_after.is_none_or(|after| key > after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn kv(key: &str, rev: i64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::from(format!("{key}@{rev}")),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        }
    }

    #[test]
    fn overlay_restores_past_state() {
        // At R=2: /a@1, /b@2. After: /c created (3), /a modified (4), /b deleted (5).
        let events = [
            WatchEvent::Created(kv("/c", 3)),
            WatchEvent::Modified {
                current: kv("/a", 4),
                previous: kv("/a", 1),
            },
            WatchEvent::Deleted {
                previous: kv("/b", 2),
                revision: 5,
            },
        ];
        let overlay = state_before(events.iter(), |_| true);
        let current = vec![Ok(kv("/a", 4)), Ok(kv("/c", 3))];
        let (items, more) = merge_page(current.into_iter(), overlay.clone(), None).unwrap();
        assert_eq!(items, vec![kv("/a", 1), kv("/b", 2)]);
        assert!(!more);
        let current = vec![Ok(kv("/a", 4)), Ok(kv("/c", 3))];
        let (items, more) = merge_page(current.into_iter(), overlay, Some(1)).unwrap();
        assert_eq!(items, vec![kv("/a", 1)]);
        assert!(more);
    }
}
