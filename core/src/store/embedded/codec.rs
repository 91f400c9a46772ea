//! The embedded store's on-disk encoding of key-values and log entries.
//!
//! A small length-prefixed little-endian format: stable, cheap, and strict on decode — any
//! truncated or malformed record is a [`StoreError::Corrupt`], never a panic.

use crate::store::{KeyValue, LeaseId, StoreError, WatchEvent};
use bytes::Bytes;

const CREATED: u8 = 1;
const MODIFIED: u8 = 2;
const DELETED: u8 = 3;

/// Appends the encoding of `kv`.
pub(super) fn put_kv(out: &mut Vec<u8>, kv: &KeyValue) {
    put_bytes(out, kv.key.as_bytes());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.lease.map_or(0, |l| l.0).to_le_bytes());
    put_bytes(out, &kv.value);
}

/// Encodes a key-value on its own.
pub(super) fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(kv.key.len() + kv.value.len() + 40);
    put_kv(&mut out, kv);
    out
}

/// Encodes a change for the revision log.
pub(super) fn encode_event(event: &WatchEvent) -> Vec<u8> {
    let mut out = Vec::new();
    match event {
        WatchEvent::Created(kv) => {
            out.push(CREATED);
            put_kv(&mut out, kv);
        }
        WatchEvent::Modified { current, previous } => {
            out.push(MODIFIED);
            put_kv(&mut out, current);
            put_kv(&mut out, previous);
        }
        WatchEvent::Deleted { previous, revision } => {
            out.push(DELETED);
            out.extend_from_slice(&revision.to_le_bytes());
            put_kv(&mut out, previous);
        }
        WatchEvent::Progress(_) => {}
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A strict reader over one record.
pub(super) struct Reader<'a> {
    data: &'a [u8],
    location: &'a str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(data: &'a [u8], location: &'a str) -> Self {
        Reader { data, location }
    }

    fn corrupt(&self, reason: &str) -> StoreError {
        StoreError::Corrupt {
            location: self.location.to_string(),
            reason: reason.to_string(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.data.len() < n {
            return Err(self.corrupt("record is truncated"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn i64(&mut self) -> Result<i64, StoreError> {
        let bytes = self.take(8)?;
        let mut buf = [0u8; 8];
        buf.copy_from_slice(bytes);
        Ok(i64::from_le_bytes(buf))
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }

    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len = self.take(4)?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.take(len)
    }

    pub(super) fn kv(&mut self) -> Result<KeyValue, StoreError> {
        let key = std::str::from_utf8(self.bytes()?)
            .map_err(|_| self.corrupt("key is not UTF-8"))?
            .to_string();
        let create_revision = self.i64()?;
        let mod_revision = self.i64()?;
        let version = self.i64()?;
        let lease = self.i64()?;
        let value = Bytes::copy_from_slice(self.bytes()?);
        Ok(KeyValue {
            key,
            value,
            create_revision,
            mod_revision,
            version,
            lease: (lease != 0).then_some(LeaseId(lease)),
        })
    }

    pub(super) fn event(&mut self) -> Result<WatchEvent, StoreError> {
        let event = match self.u8()? {
            CREATED => WatchEvent::Created(self.kv()?),
            MODIFIED => WatchEvent::Modified {
                current: self.kv()?,
                previous: self.kv()?,
            },
            DELETED => {
                let revision = self.i64()?;
                WatchEvent::Deleted {
                    revision,
                    previous: self.kv()?,
                }
            }
            other => return Err(self.corrupt(&format!("unknown event tag {other}"))),
        };
        self.finish()?;
        Ok(event)
    }

    pub(super) fn finish(&self) -> Result<(), StoreError> {
        if self.data.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("trailing bytes"))
        }
    }
}

/// Decodes a key-value record.
pub(super) fn decode_kv(data: &[u8], location: &str) -> Result<KeyValue, StoreError> {
    let mut reader = Reader::new(data, location);
    let kv = reader.kv()?;
    reader.finish()?;
    Ok(kv)
}

/// Decodes a log record.
pub(super) fn decode_event(data: &[u8], location: &str) -> Result<WatchEvent, StoreError> {
    Reader::new(data, location).event()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kv(key: &str, rev: i64, lease: Option<i64>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::from_static(b"{\"a\":1}"),
            create_revision: 1,
            mod_revision: rev,
            version: rev,
            lease: lease.map(LeaseId),
        }
    }

    #[test]
    fn round_trip() {
        for event in [
            WatchEvent::Created(kv("/a", 1, Some(7))),
            WatchEvent::Modified {
                current: kv("/a", 2, None),
                previous: kv("/a", 1, Some(7)),
            },
            WatchEvent::Deleted {
                previous: kv("/a", 2, None),
                revision: 3,
            },
        ] {
            assert_eq!(decode_event(&encode_event(&event), "t").unwrap(), event);
        }
        let k = kv("/b", 4, None);
        assert_eq!(decode_kv(&encode_kv(&k), "t").unwrap(), k);
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_event(&data, "t");
            let _ = decode_kv(&data, "t");
        }

        #[test]
        fn truncation_is_an_error(cut in 0usize..60) {
            let bytes = encode_kv(&kv("/abc", 9, Some(3)));
            let cut = cut.min(bytes.len() - 1);
            let truncated = matches!(decode_kv(&bytes[..cut], "t"), Err(StoreError::Corrupt { .. }));
            prop_assert!(truncated);
        }
    }
}
