//! The form an object's JSON takes in the store: zstd-compressed when it is large enough to gain
//! from it (a running pod's 4.5 KB, much of it repeated member names in `managedFields`, to
//! about a third), as it is otherwise.
//!
//! The store keeps every object for as long as it exists — and the memory store, the embedded
//! store's cache and the API server's watch cache keep them in this process — so this form is
//! most of what a large cluster's objects cost the control plane. Readers tell the forms apart
//! by the first bytes: a zstd frame starts with its magic number, JSON never does, so values
//! stored as plain JSON (small ones, older ones, ones written by hand) read as they are.

use bytes::Bytes;
use std::borrow::Cow;
use std::cell::RefCell;

/// Values shorter than this are stored as they are: compressing a Lease or a small ConfigMap
/// gains a few hundred bytes and costs time on the most frequent writes.
const SMALLEST_COMPRESSED: usize = 512;
/// zstd's fastest standard level: higher ones gain a few percent for several times the time.
const LEVEL: i32 = 1;
/// The first four bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// The most a stored frame may expand to (objects are at most a few MiB); a frame that claims
/// more is corrupt, not a reason to allocate.
const LARGEST_VALUE: u64 = 64 << 20;

/// A stored value that is neither JSON nor a zstd frame this module wrote.
#[derive(Debug, thiserror::Error)]
#[error("unreadable compressed value: {0}")]
pub struct CorruptValue(String);

/// The value to store for an object's JSON `json`: compressed when that makes it smaller, in an
/// allocation of its exact length either way.
pub(crate) fn pack(json: &[u8]) -> Bytes {
    if json.len() < SMALLEST_COMPRESSED {
        return Bytes::copy_from_slice(json);
    }
    thread_local! {
        static COMPRESSOR: RefCell<Option<(zstd::bulk::Compressor<'static>, Vec<u8>)>> =
            const { RefCell::new(None) };
    }
    let compressed = COMPRESSOR.with(|slot| {
        let mut slot = slot.try_borrow_mut().ok()?;
        if slot.is_none() {
            *slot = Some((zstd::bulk::Compressor::new(LEVEL).ok()?, Vec::new()));
        }
        let (compressor, out) = slot.as_mut()?;
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(json.len()));
        compressor.compress_to_buffer(json, out).ok()?;
        let packed = (out.len() < json.len()).then(|| Bytes::copy_from_slice(out));
        // The buffer is kept for the thread's next value, unless one huge value grew it.
        if out.capacity() > 1 << 20 {
            *out = Vec::new();
        }
        packed
    });
    compressed.unwrap_or_else(|| Bytes::copy_from_slice(json))
}

/// The JSON of a stored value: the value itself when it is not compressed.
pub(crate) fn unpack(stored: &[u8]) -> Result<Cow<'_, [u8]>, CorruptValue> {
    if !stored.starts_with(&ZSTD_MAGIC) {
        return Ok(Cow::Borrowed(stored));
    }
    let size = zstd::zstd_safe::get_frame_content_size(stored)
        .map_err(|_| CorruptValue("not a zstd frame".into()))?
        .ok_or_else(|| CorruptValue("the frame does not say its size".into()))?;
    if size > LARGEST_VALUE {
        return Err(CorruptValue(format!("the frame claims {size} bytes")));
    }
    let mut out = Vec::with_capacity(size as usize);
    thread_local! {
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    let written = DECOMPRESSOR.with(|slot| match slot.try_borrow_mut() {
        Ok(mut slot) => {
            if slot.is_none() {
                *slot = Some(zstd::bulk::Decompressor::new()?);
            }
            match slot.as_mut() {
                Some(decompressor) => decompressor.decompress_to_buffer(stored, &mut out),
                None => Err(std::io::Error::other("no decompressor")),
            }
        }
        Err(_) => zstd::bulk::Decompressor::new()?.decompress_to_buffer(stored, &mut out),
    });
    match written {
        Ok(n) if n as u64 == size => Ok(Cow::Owned(out)),
        Ok(n) => Err(CorruptValue(format!(
            "{n} bytes where the frame says {size}"
        ))),
        Err(err) => Err(CorruptValue(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pod_json(containers: usize) -> Vec<u8> {
        let containers: Vec<_> = (0..containers)
            .map(|i| {
                serde_json::json!({"name": format!("c{i}"), "image": "busybox:1.36",
                    "imagePullPolicy": "IfNotPresent",
                    "terminationMessagePath": "/dev/termination-log",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-5b5cdc4678-pxntq", "namespace": "default"},
            "spec": {"containers": containers},
        }))
        .expect("json")
    }

    #[test]
    fn large_values_are_stored_compressed_and_read_back_whole() {
        let json = pod_json(8);
        let stored = pack(&json);
        assert!(stored.starts_with(&ZSTD_MAGIC));
        assert!(
            stored.len() * 2 < json.len(),
            "{} of {}",
            stored.len(),
            json.len()
        );
        assert_eq!(unpack(&stored).expect("readable"), &json[..]);
    }

    #[test]
    fn small_and_plain_values_are_stored_and_read_as_they_are() {
        let json = pod_json(0);
        assert!(json.len() < SMALLEST_COMPRESSED);
        assert_eq!(pack(&json), &json[..]);
        // JSON written before compression, or by another writer, reads unchanged.
        let plain = pod_json(8);
        assert!(matches!(unpack(&plain), Ok(Cow::Borrowed(b)) if b == &plain[..]));
    }

    #[test]
    fn a_damaged_frame_is_an_error_not_a_panic_or_a_huge_allocation() {
        let stored = pack(&pod_json(8));
        // Cut short.
        assert!(unpack(&stored[..stored.len() / 2]).is_err());
        // Only the magic number.
        assert!(unpack(&ZSTD_MAGIC).is_err());
        // A header claiming far more than any object.
        let mut huge = ZSTD_MAGIC.to_vec();
        huge.extend_from_slice(&[0xE0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]);
        assert!(unpack(&huge).is_err());
    }

    proptest! {
        #[test]
        fn any_value_reads_back_as_it_was_packed(value in prop::collection::vec(any::<u8>(), 0..4096)) {
            // Any bytes that do not pass for a frame themselves (JSON never starts with the
            // magic number's `(`) round-trip, compressed or not.
            prop_assume!(!value.starts_with(&ZSTD_MAGIC));
            let stored = pack(&value);
            prop_assert_eq!(unpack(&stored).map(|v| v.into_owned()).ok(), Some(value));
        }

        #[test]
        fn arbitrary_frames_never_panic(tail in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut stored = ZSTD_MAGIC.to_vec();
            stored.extend(tail);
            let _ = unpack(&stored);
        }
    }
}
