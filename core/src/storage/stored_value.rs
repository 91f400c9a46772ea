//! The form an object's JSON takes in the store: zstd-compressed when it is large enough to gain
//! from it, as it is otherwise.
//!
//! The store keeps every object for as long as it exists — and the memory store, the embedded
//! store's cache and the API server's watch cache keep them in this process — so this form is
//! most of what a large cluster's objects cost the control plane. Objects of one kind repeat
//! each other's member names, managed fields and defaults, so values are compressed against a
//! dictionary of typical objects (a Node, a Deployment, a ReplicaSet, an Event, an
//! EndpointSlice and a Pod, as Capstan stores them): a running pod's 4.5 KB of JSON becomes
//! about 0.2 KB, where zstd alone makes it 1.5 KB.
//!
//! Readers tell the forms apart by the first bytes. A value compressed against a dictionary
//! starts with [`DICTIONARY_MARK`] and the dictionary's version, then the zstd frame; a plain
//! zstd frame (as values were first compressed) starts with zstd's magic number; JSON starts
//! with neither, so values stored as plain JSON (small ones, older ones, ones written by hand)
//! read as they are. A dictionary, once values are written with it, never changes: a better one
//! is added under the next version, and every version stays readable.

use bytes::Bytes;
use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::LazyLock;
use zstd::bulk::{Compressor, Decompressor};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

/// Values shorter than this are stored as they are: compressing a Lease or a small ConfigMap
/// gains a few hundred bytes and costs time on the most frequent writes.
const SMALLEST_COMPRESSED: usize = 512;
/// zstd's fastest standard level: higher ones gain a few percent for several times the time.
const LEVEL: i32 = 1;
/// The first four bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// The first three bytes of a value compressed against a dictionary (no JSON text starts so).
const DICTIONARY_MARK: [u8; 3] = [0xCA, 0x57, 0xD1];
/// Version 1 of the dictionary: typical objects' JSON, one per line (zstd reads it as raw
/// content to match against). Frozen.
const DICTIONARY_V1: &[u8] = include_bytes!("stored_value_dictionary_v1.jsonl");
/// The version new values are written with.
const CURRENT_DICTIONARY: u8 = 1;
/// The most a stored frame may expand to (objects are at most a few MiB); a frame that claims
/// more is corrupt, not a reason to allocate.
const LARGEST_VALUE: u64 = 64 << 20;

/// The current dictionary, prepared once for compression.
static ENCODER_DICTIONARY: LazyLock<EncoderDictionary<'static>> =
    LazyLock::new(|| EncoderDictionary::copy(DICTIONARY_V1, LEVEL));
/// Version 1, prepared once for decompression.
static DECODER_DICTIONARY_V1: LazyLock<DecoderDictionary<'static>> =
    LazyLock::new(|| DecoderDictionary::copy(DICTIONARY_V1));

/// A stored value that is neither JSON nor a frame this module wrote.
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
        static COMPRESSOR: RefCell<Option<(Compressor<'static>, Vec<u8>)>> =
            const { RefCell::new(None) };
    }
    let compressed = COMPRESSOR.with(|slot| {
        let mut slot = slot.try_borrow_mut().ok()?;
        if slot.is_none() {
            let compressor = Compressor::with_prepared_dictionary(&ENCODER_DICTIONARY).ok()?;
            *slot = Some((compressor, Vec::new()));
        }
        let (compressor, out) = slot.as_mut()?;
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(json.len()));
        compressor.compress_to_buffer(json, out).ok()?;
        let header = DICTIONARY_MARK.len() + 1;
        let packed = (header + out.len() < json.len()).then(|| {
            let mut packed = Vec::with_capacity(header + out.len());
            packed.extend_from_slice(&DICTIONARY_MARK);
            packed.push(CURRENT_DICTIONARY);
            packed.extend_from_slice(out);
            Bytes::from(packed)
        });
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
    if let Some(rest) = stored.strip_prefix(&DICTIONARY_MARK) {
        let (&version, frame) = rest
            .split_first()
            .ok_or_else(|| CorruptValue("no dictionary version".into()))?;
        let kind = match version {
            1 => Frame::DictionaryV1,
            _ => {
                return Err(CorruptValue(format!(
                    "unknown dictionary version {version}"
                )))
            }
        };
        return decompress(frame, kind).map(Cow::Owned);
    }
    if stored.starts_with(&ZSTD_MAGIC) {
        return decompress(stored, Frame::Plain).map(Cow::Owned);
    }
    Ok(Cow::Borrowed(stored))
}

/// What a zstd frame was compressed against.
#[derive(Clone, Copy)]
enum Frame {
    /// Nothing (values compressed before dictionaries).
    Plain,
    /// Version 1 of the dictionary.
    DictionaryV1,
}

fn new_decompressor(kind: Frame) -> std::io::Result<Decompressor<'static>> {
    match kind {
        Frame::Plain => Decompressor::new(),
        Frame::DictionaryV1 => Decompressor::with_prepared_dictionary(&DECODER_DICTIONARY_V1),
    }
}

/// The content of zstd frame `frame`, which says its size.
fn decompress(frame: &[u8], kind: Frame) -> Result<Vec<u8>, CorruptValue> {
    let size = zstd::zstd_safe::get_frame_content_size(frame)
        .map_err(|_| CorruptValue("not a zstd frame".into()))?
        .ok_or_else(|| CorruptValue("the frame does not say its size".into()))?;
    if size > LARGEST_VALUE {
        return Err(CorruptValue(format!("the frame claims {size} bytes")));
    }
    let mut out = Vec::with_capacity(size as usize);
    thread_local! {
        /// One decompressor per frame kind, made when first needed.
        static DECOMPRESSORS: RefCell<[Option<Decompressor<'static>>; 2]> =
            const { RefCell::new([None, None]) };
    }
    let written = DECOMPRESSORS.with(|slots| match slots.try_borrow_mut() {
        Ok(mut slots) => {
            let slot = &mut slots[kind as usize];
            if slot.is_none() {
                *slot = Some(new_decompressor(kind)?);
            }
            match slot.as_mut() {
                Some(decompressor) => decompressor.decompress_to_buffer(frame, &mut out),
                None => Err(std::io::Error::other("no decompressor")),
            }
        }
        Err(_) => new_decompressor(kind)?.decompress_to_buffer(frame, &mut out),
    });
    match written {
        Ok(n) if n as u64 == size => Ok(out),
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

    /// A running pod of another Deployment than the dictionary's, as the store keeps it.
    fn running_pod_json() -> Vec<u8> {
        let text = std::str::from_utf8(DICTIONARY_V1).expect("text");
        let line = text
            .lines()
            .find(|l| l.contains(r#""kind":"Pod""#))
            .expect("the dictionary has a pod");
        let renamed = line
            .replace("web", "checkout")
            .replace("busybox:1.36", "registry.example/checkout:2.4.1")
            .replace("747f9cb88f", "5d8c7b6f9a")
            .replace("698nk", "q2x7z");
        let mut pod: serde_json::Value = serde_json::from_str(&renamed).expect("a pod");
        pod["metadata"]["uid"] = "8f14e45f-ceea-467f-a0e6-1d6b2c3a9d01".into();
        serde_json::to_vec(&pod).expect("json")
    }

    #[test]
    fn a_running_pod_is_stored_in_a_small_fraction_of_its_json() {
        let json = running_pod_json();
        let stored = pack(&json);
        assert!(stored.starts_with(&DICTIONARY_MARK));
        assert_eq!(stored[DICTIONARY_MARK.len()], CURRENT_DICTIONARY);
        // zstd without the dictionary keeps about a third.
        assert!(
            stored.len() * 8 < json.len(),
            "{} of {}",
            stored.len(),
            json.len()
        );
        assert_eq!(unpack(&stored).expect("readable"), &json[..]);
    }

    #[test]
    fn values_compressed_without_a_dictionary_still_read() {
        let json = running_pod_json();
        let plain = zstd::bulk::compress(&json, LEVEL).expect("compressed");
        assert!(plain.starts_with(&ZSTD_MAGIC));
        assert_eq!(unpack(&plain).expect("readable"), &json[..]);
    }

    #[test]
    fn large_values_are_stored_compressed_and_read_back_whole() {
        let json = pod_json(8);
        let stored = pack(&json);
        assert!(stored.starts_with(&DICTIONARY_MARK));
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
        // A dictionary this build does not know, or none named.
        let mut unknown = stored.to_vec();
        unknown[DICTIONARY_MARK.len()] = 2;
        assert!(unpack(&unknown).is_err());
        assert!(unpack(&DICTIONARY_MARK).is_err());
    }

    proptest! {
        #[test]
        fn any_value_reads_back_as_it_was_packed(value in prop::collection::vec(any::<u8>(), 0..4096)) {
            // Any bytes that do not pass for a frame themselves (JSON never starts with the
            // magic number's `(`) round-trip, compressed or not.
            prop_assume!(!value.starts_with(&ZSTD_MAGIC) && !value.starts_with(&DICTIONARY_MARK));
            let stored = pack(&value);
            prop_assert_eq!(unpack(&stored).map(|v| v.into_owned()).ok(), Some(value));
        }

        #[test]
        fn arbitrary_frames_never_panic(tail in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut stored = ZSTD_MAGIC.to_vec();
            stored.extend(&tail);
            let _ = unpack(&stored);
            let mut marked = DICTIONARY_MARK.to_vec();
            marked.push(CURRENT_DICTIONARY);
            marked.extend(&ZSTD_MAGIC);
            marked.extend(tail);
            let _ = unpack(&marked);
        }
    }
}
