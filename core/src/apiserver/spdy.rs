//! SPDY/3.1 framing, as far as Kubernetes streaming needs it: the frames kubectl's
//! `port-forward` sends over an upgraded HTTP connection (SYN_STREAM, DATA, RST_STREAM, PING,
//! SETTINGS, WINDOW_UPDATE, GOAWAY) and the ones a server answers with (SYN_REPLY, DATA,
//! RST_STREAM, PING). Header blocks are zlib streams with the SPDY/3 preset dictionary; the
//! blocks this side writes are stored (uncompressed) deflate blocks in one zlib stream, which
//! any SPDY peer reads.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Decompress, FlushDecompress, Status};
use std::sync::LazyLock;

/// Flag on DATA and SYN_STREAM frames: the sender's last frame on this stream.
pub(crate) const FLAG_FIN: u8 = 0x01;

/// Largest frame accepted (SPDY's length field allows 16 MiB; kubectl sends 32 KiB chunks).
const MAX_FRAME: usize = 1 << 20;

/// Largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// The name/value words of the SPDY/3 header dictionary (draft 3, section 2.6.10.1); each is
/// written as a 4-byte big-endian length and the word.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The dictionary's unprefixed tail: status codes and common values.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The SPDY/3 preset dictionary for header compression (1423 bytes).
static DICTIONARY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut out = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        out.extend_from_slice(&(word.len() as u32).to_be_bytes());
        out.extend_from_slice(word.as_bytes());
    }
    out.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    out
});

/// What is wrong with the peer's bytes; the session ends on any of these.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpdyError {
    /// A frame longer than this side accepts.
    #[error("SPDY frame of {0} bytes is too large")]
    TooLarge(usize),
    /// A control frame of another SPDY version.
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    /// A frame whose fixed fields are cut short.
    #[error("malformed SPDY {0} frame")]
    Malformed(&'static str),
    /// A header block that does not decompress or parse.
    #[error("bad SPDY header block: {0}")]
    Headers(String),
}

/// One frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A new stream opened by the peer, with its headers (names lower-cased).
    SynStream {
        stream: u32,
        flags: u8,
        headers: Vec<(String, String)>,
    },
    /// Bytes on a stream.
    Data { stream: u32, flags: u8, data: Bytes },
    /// The peer abandons a stream.
    RstStream { stream: u32, status: u32 },
    /// A liveness check to echo.
    Ping { id: u32 },
    /// The peer is going away.
    GoAway,
    /// Frames this side reads and has no use for (SETTINGS, WINDOW_UPDATE, SYN_REPLY, …).
    Ignored,
}

/// Decodes frames from one direction of a session (it keeps the header zlib stream).
pub(crate) struct Decoder {
    inflate: Decompress,
}

impl Decoder {
    pub(crate) fn new() -> Self {
        Decoder {
            inflate: Decompress::new(true),
        }
    }

    /// Takes one whole frame off the front of `buffer`, or `None` when more bytes are needed.
    pub(crate) fn decode(&mut self, buffer: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buffer.len() < 8 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([0, buffer[5], buffer[6], buffer[7]]) as usize;
        if length > MAX_FRAME {
            return Err(SpdyError::TooLarge(length));
        }
        if buffer.len() < 8 + length {
            return Ok(None);
        }
        let mut head = buffer.split_to(8);
        let mut body = buffer.split_to(length).freeze();
        let first = head.get_u32();
        let flags = head[0];
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream: first & 0x7fff_ffff,
                flags,
                data: body,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != 3 {
            return Err(SpdyError::Version(version));
        }
        let kind = (first & 0xffff) as u16;
        Ok(Some(match kind {
            1 => {
                if body.len() < 10 {
                    return Err(SpdyError::Malformed("SYN_STREAM"));
                }
                let stream = body.get_u32() & 0x7fff_ffff;
                body.advance(6);
                let headers = self.headers(&body)?;
                Frame::SynStream {
                    stream,
                    flags,
                    headers,
                }
            }
            2 | 8 => {
                // SYN_REPLY and HEADERS: the block still feeds the shared zlib stream.
                if body.len() < 4 {
                    return Err(SpdyError::Malformed("SYN_REPLY"));
                }
                body.advance(4);
                self.headers(&body)?;
                Frame::Ignored
            }
            3 => {
                if body.len() < 8 {
                    return Err(SpdyError::Malformed("RST_STREAM"));
                }
                Frame::RstStream {
                    stream: body.get_u32() & 0x7fff_ffff,
                    status: body.get_u32(),
                }
            }
            6 => {
                if body.len() < 4 {
                    return Err(SpdyError::Malformed("PING"));
                }
                Frame::Ping { id: body.get_u32() }
            }
            7 => Frame::GoAway,
            _ => Frame::Ignored,
        }))
    }

    fn headers(&mut self, block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
        let plain = self.inflate_block(block)?;
        parse_header_block(&plain)
    }

    fn inflate_block(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(256);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::Headers("header block too large".into()));
                }
                out.reserve(out.len());
            }
            let before_in = self.inflate.total_in();
            let before_out = out.len();
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before_in) as usize;
            input = &input[used..];
            match result {
                Ok(Status::StreamEnd) => return Ok(out),
                Ok(_) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        return Ok(out);
                    }
                    if used == 0 && out.len() == before_out && out.len() < out.capacity() {
                        return Ok(out);
                    }
                }
                Err(err) if err.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| SpdyError::Headers(e.to_string()))?;
                }
                Err(err) => return Err(SpdyError::Headers(err.to_string())),
            }
        }
    }
}

fn parse_header_block(mut block: &[u8]) -> Result<Vec<(String, String)>, SpdyError> {
    fn take<'a>(block: &mut &'a [u8]) -> Result<&'a [u8], SpdyError> {
        if block.len() < 4 {
            return Err(SpdyError::Headers("truncated header block".into()));
        }
        let length = u32::from_be_bytes([block[0], block[1], block[2], block[3]]) as usize;
        if block.len() < 4 + length {
            return Err(SpdyError::Headers("truncated header block".into()));
        }
        let value = &block[4..4 + length];
        *block = &block[4 + length..];
        Ok(value)
    }
    if block.len() < 4 {
        return Err(SpdyError::Headers("truncated header block".into()));
    }
    let count = u32::from_be_bytes([block[0], block[1], block[2], block[3]]) as usize;
    block = &block[4..];
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = String::from_utf8_lossy(take(&mut block)?).to_ascii_lowercase();
        let value = String::from_utf8_lossy(take(&mut block)?).to_string();
        headers.push((name, value));
    }
    Ok(headers)
}

/// An uncompressed header block: the pair count, then each name and value length-prefixed.
fn header_pairs(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut plain = Vec::new();
    plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (name, value) in headers {
        for word in [name, value] {
            plain.extend_from_slice(&(word.len() as u32).to_be_bytes());
            plain.extend_from_slice(word.as_bytes());
        }
    }
    plain
}

/// Encodes this side's frames (it keeps the header zlib stream).
pub(crate) struct Encoder {
    started: bool,
}

impl Encoder {
    pub(crate) fn new() -> Self {
        Encoder { started: false }
    }

    /// A SYN_REPLY with no headers, accepting `stream`.
    pub(crate) fn syn_reply(&mut self, stream: u32) -> Bytes {
        let block = self.header_block(&[]);
        let mut body = BytesMut::with_capacity(4 + block.len());
        body.put_u32(stream & 0x7fff_ffff);
        body.put_slice(&block);
        control(2, 0, &body)
    }

    /// A header block as stored deflate blocks in this side's zlib stream, sync-flushed.
    fn header_block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let plain = header_pairs(headers);
        let mut out = Vec::with_capacity(plain.len() + 7);
        if !self.started {
            // zlib header: deflate, 32 KiB window, no preset dictionary.
            out.extend_from_slice(&[0x78, 0x01]);
            self.started = true;
        }
        for chunk in plain.chunks(u16::MAX as usize) {
            let length = chunk.len() as u16;
            out.push(0x00);
            out.extend_from_slice(&length.to_le_bytes());
            out.extend_from_slice(&(!length).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        // An empty stored block, as zlib's sync flush writes: inflaters hand the block's
        // bytes out at this marker instead of reading on into the next frame.
        out.extend_from_slice(&[0x00, 0x00, 0x00, 0xff, 0xff]);
        out
    }
}

/// A DATA frame.
pub(crate) fn data(stream: u32, flags: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + payload.len());
    out.put_u32(stream & 0x7fff_ffff);
    out.put_u32((u32::from(flags) << 24) | payload.len() as u32);
    out.put_slice(payload);
    out.freeze()
}

/// A RST_STREAM frame (status 5 = CANCEL).
pub(crate) fn rst_stream(stream: u32, status: u32) -> Bytes {
    let mut body = BytesMut::with_capacity(8);
    body.put_u32(stream & 0x7fff_ffff);
    body.put_u32(status);
    control(3, 0, &body)
}

/// A PING frame echoing `id`.
pub(crate) fn ping(id: u32) -> Bytes {
    control(6, 0, &id.to_be_bytes())
}

fn control(kind: u16, flags: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(8 + body.len());
    out.put_u16(0x8003);
    out.put_u16(kind);
    out.put_u32((u32::from(flags) << 24) | body.len() as u32);
    out.put_slice(body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::{Compress, Compression, FlushCompress};

    /// A SYN_STREAM as a Go client writes it: headers deflated against the dictionary.
    fn client_syn_stream(compress: &mut Compress, stream: u32, headers: &[(&str, &str)]) -> Bytes {
        let plain = header_pairs(headers);
        let mut block = Vec::with_capacity(plain.len() + 64);
        compress
            .compress_vec(&plain, &mut block, FlushCompress::Sync)
            .unwrap();
        let mut body = BytesMut::new();
        body.put_u32(stream);
        body.put_u32(0);
        body.put_u16(0);
        body.put_slice(&block);
        control(1, 0, &body)
    }

    #[test]
    fn the_dictionary_is_the_spec_one() {
        assert_eq!(DICTIONARY.len(), 1423);
        assert!(DICTIONARY.ends_with(b"enq=0."));
        // zlib's dictionary id of the SPDY/3 dictionary, as sent in kubectl's header blocks.
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for byte in DICTIONARY.iter() {
            a = (a + u32::from(*byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn decodes_dictionary_compressed_headers_across_frames() {
        let mut compress = Compress::new(Compression::default(), true);
        compress.set_dictionary(&DICTIONARY).unwrap();
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&client_syn_stream(
            &mut compress,
            1,
            &[("streamtype", "error"), ("port", "80"), ("requestid", "0")],
        ));
        wire.extend_from_slice(&client_syn_stream(
            &mut compress,
            3,
            &[("streamtype", "data"), ("port", "80"), ("requestid", "0")],
        ));
        wire.extend_from_slice(&data(3, FLAG_FIN, b"GET /"));
        wire.extend_from_slice(&ping(7));
        let mut decoder = Decoder::new();
        let first = decoder.decode(&mut wire).unwrap().unwrap();
        assert_eq!(
            first,
            Frame::SynStream {
                stream: 1,
                flags: 0,
                headers: vec![
                    ("streamtype".into(), "error".into()),
                    ("port".into(), "80".into()),
                    ("requestid".into(), "0".into())
                ]
            }
        );
        let Frame::SynStream {
            stream, headers, ..
        } = decoder.decode(&mut wire).unwrap().unwrap()
        else {
            panic!("expected a SYN_STREAM");
        };
        assert_eq!((stream, headers[0].1.as_str()), (3, "data"));
        assert_eq!(
            decoder.decode(&mut wire).unwrap().unwrap(),
            Frame::Data {
                stream: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"GET /")
            }
        );
        assert_eq!(
            decoder.decode(&mut wire).unwrap().unwrap(),
            Frame::Ping { id: 7 }
        );
        assert!(decoder.decode(&mut wire).unwrap().is_none());
    }

    #[test]
    fn replies_decode_with_a_standard_inflater() {
        let mut encoder = Encoder::new();
        let mut inflate = Decompress::new(true);
        for stream in [1u32, 3, 5] {
            let frame = encoder.syn_reply(stream);
            assert_eq!(&frame[..4], &[0x80, 0x03, 0x00, 0x02]);
            let block = &frame[12..];
            let mut out = Vec::with_capacity(64);
            inflate
                .decompress_vec(block, &mut out, FlushDecompress::Sync)
                .unwrap();
            assert_eq!(
                out,
                [0, 0, 0, 0],
                "an empty header block for stream {stream}"
            );
        }
    }

    #[test]
    fn rejects_bad_input() {
        let mut decoder = Decoder::new();
        let mut huge = BytesMut::from(&[0x80, 0x03, 0x00, 0x01, 0x00, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decoder.decode(&mut huge),
            Err(SpdyError::TooLarge(_))
        ));
        let mut version = BytesMut::from(&control(6, 0, &[0, 0, 0, 1])[..]);
        version[1] = 2;
        assert!(matches!(
            decoder.decode(&mut version),
            Err(SpdyError::Version(2))
        ));
        let mut garbage = BytesMut::from(&control(1, 0, &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2])[..]);
        assert!(matches!(
            decoder.decode(&mut garbage),
            Err(SpdyError::Headers(_))
        ));
        let mut partial = BytesMut::from(&data(1, 0, b"abc")[..7]);
        assert!(decoder.decode(&mut partial).unwrap().is_none());
    }
}
