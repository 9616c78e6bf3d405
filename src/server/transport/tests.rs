//! End-to-end tests of the shim: client bytes in, what the server reads out.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::encode::encode_int;
use super::frame::{
    FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY, MAX_FRAME_PAYLOAD, PREFACE,
    TYPE_CONTINUATION, TYPE_HEADERS,
};
use super::shim::AuthorityShim;

type Headers = Vec<(Vec<u8>, Vec<u8>)>;
/// A header block being reassembled by the test parser: stream, flags, priority, block.
type OpenSeen = (u32, u8, Option<Vec<u8>>, Vec<u8>);

/// A client connection that yields `chunk` bytes per read (1 = byte by byte).
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .chunk
            .min(self.data.len() - self.pos)
            .min(dst.remaining());
        let pos = self.pos;
        dst.put_slice(&self.data[pos..pos + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// What the server reads from the shim, with reads of at most `out_chunk` bytes.
async fn shim(input: &[u8], in_chunk: usize, out_chunk: usize) -> io::Result<Vec<u8>> {
    let mut s = AuthorityShim::new(Trickle {
        data: input.to_vec(),
        pos: 0,
        chunk: in_chunk,
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; out_chunk];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(got);
        }
        got.extend_from_slice(&buf[..n]);
    }
}

fn run(input: &[u8]) -> io::Result<Vec<u8>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(shim(input, 64 * 1024, 64 * 1024))
}

fn raw_frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The client side: a stateful HPACK encoder (uses its dynamic table) and the bytes sent.
struct Client {
    enc: Encoder<'static>,
    bytes: Vec<u8>,
}

impl Client {
    fn new() -> Self {
        Client {
            enc: Encoder::new(),
            bytes: PREFACE.to_vec(),
        }
    }

    fn block(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        self.enc
            .encode(headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn headers(&mut self, stream: u32, flags: u8, headers: &[(&str, &str)]) -> usize {
        let block = self.block(headers);
        raw_frame(
            &mut self.bytes,
            TYPE_HEADERS,
            flags | FLAG_END_HEADERS,
            stream,
            &block,
        );
        block.len()
    }

    fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        raw_frame(&mut self.bytes, ty, flags, stream, payload);
    }
}

#[derive(Debug, PartialEq)]
enum Seen {
    Headers {
        stream: u32,
        flags: u8,
        priority: Option<Vec<u8>>,
        headers: Headers,
    },
    Other {
        ty: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    },
}

/// Parse the server's view: frames ≤ 16384, each header block decoded with a FRESH decoder
/// (so any reference to a dynamic table would fail), no padding left.
fn parse(out: &[u8]) -> Vec<Seen> {
    assert_eq!(&out[..24], PREFACE);
    let mut p = &out[24..];
    let mut seen = Vec::new();
    let mut open: Option<OpenSeen> = None;
    while !p.is_empty() {
        let len = usize::from(p[0]) << 16 | usize::from(p[1]) << 8 | usize::from(p[2]);
        let (ty, flags) = (p[3], p[4]);
        let stream = u32::from_be_bytes([p[5], p[6], p[7], p[8]]);
        let payload = &p[9..9 + len];
        p = &p[9 + len..];
        match ty {
            TYPE_HEADERS => {
                assert!(len <= MAX_FRAME_PAYLOAD, "HEADERS of {len}");
                assert!(open.is_none());
                assert_eq!(flags & FLAG_PADDED, 0, "padding removed");
                let (prio, frag) = if flags & FLAG_PRIORITY != 0 {
                    (Some(payload[..5].to_vec()), &payload[5..])
                } else {
                    (None, payload)
                };
                open = Some((stream, flags, prio, frag.to_vec()));
            }
            TYPE_CONTINUATION => {
                assert!(len <= MAX_FRAME_PAYLOAD, "CONTINUATION of {len}");
                let o = open.as_mut().expect("open block");
                assert_eq!(o.0, stream);
                o.3.extend_from_slice(payload);
            }
            _ => {
                assert!(open.is_none());
                seen.push(Seen::Other {
                    ty,
                    flags,
                    stream,
                    payload: payload.to_vec(),
                });
                continue;
            }
        }
        if flags & FLAG_END_HEADERS != 0 {
            let (stream, first_flags, priority, block) = open.take().expect("block");
            let mut fresh = Decoder::new();
            fresh.set_max_table_size(0);
            let headers = fresh.decode(&block).expect("table-free block");
            seen.push(Seen::Headers {
                stream,
                flags: first_flags & !FLAG_END_HEADERS,
                priority,
                headers,
            });
        }
    }
    assert!(open.is_none(), "unterminated header block");
    seen
}

fn owned(h: &[(&str, &str)]) -> Headers {
    h.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn request(authority: &str, path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "POST".to_string()),
        (":scheme", "http".to_string()),
        (":path", path.to_string()),
        (":authority", authority.to_string()),
        ("content-type", "application/grpc".to_string()),
        ("user-agent", "grpc-go/1.26.0".to_string()),
        ("te", "trailers".to_string()),
        (
            "grpc-trace-bin",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=\u{0}\u{ff}".to_string(),
        ),
    ]
}

fn as_refs<'a>(h: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    h.iter().map(|(n, v)| (*n, v.as_str())).collect()
}

#[test]
fn authority_rewritten_other_headers_untouched() {
    let cases = [
        ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
        ("https://10.0.0.1:2379/some/path", Some("10.0.0.1:2379")),
        ("unix://localhost:2379", Some("localhost:2379")),
        ("127.0.0.1:2379", Some("127.0.0.1:2379")),
        ("unix:///var/run/etcd.sock", None),
    ];
    for (sent, want) in cases {
        let mut c = Client::new();
        let req = request(sent, "/etcdserverpb.Maintenance/Status");
        c.headers(1, FLAG_END_STREAM, &as_refs(&req));
        let seen = parse(&run(&c.bytes).expect("shim"));
        let mut expected: Vec<(&str, &str)> = as_refs(&req);
        match want {
            Some(w) => expected[3].1 = w,
            None => {
                expected.remove(3);
            }
        }
        assert_eq!(
            seen,
            vec![Seen::Headers {
                stream: 1,
                flags: FLAG_END_STREAM,
                priority: None,
                headers: owned(&expected),
            }],
            "authority {sent}"
        );
    }
}

#[test]
fn dynamic_table_references_across_blocks() {
    let mut c = Client::new();
    let mut expected = Vec::new();
    let mut sizes = Vec::new();
    for (i, path) in ["/etcdserverpb.KV/Put", "/etcdserverpb.KV/Range"]
        .iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let stream = 1 + 2 * i as u32;
        let mut req = request("http://127.0.0.1:2379", path);
        req.push(("grpc-timeout", format!("{}m", 4990 + i)));
        sizes.push(c.headers(stream, 0, &as_refs(&req)));
        c.frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\x02hi");
        req[3].1 = "127.0.0.1:2379".to_string();
        expected.push(Seen::Headers {
            stream,
            flags: 0,
            priority: None,
            headers: owned(&as_refs(&req)),
        });
        expected.push(Seen::Other {
            ty: 0,
            flags: FLAG_END_STREAM,
            stream,
            payload: b"\0\0\0\0\x02hi".to_vec(),
        });
    }
    // Later blocks use references into the client's dynamic table.
    assert!(sizes[3] < sizes[0], "{sizes:?}");
    assert_eq!(parse(&run(&c.bytes).expect("shim")), expected);
}

#[test]
fn authority_from_the_dynamic_table_is_rewritten() {
    // As grpc-go does: `:authority` literal with incremental indexing (name = static 1),
    // then later requests send only its dynamic index (62 = newest entry).
    let url = b"http://127.0.0.1:2379";
    let mut first = vec![0x83, 0x41, url.len() as u8];
    first.extend_from_slice(url);
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &first);
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0x83, 0x80 | 62]);
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &[0x80 | 62, 0x83]);
    let seen = parse(&run(&c.bytes).expect("shim"));
    let a = owned(&[(":method", "POST"), (":authority", "127.0.0.1:2379")]);
    let b = owned(&[(":authority", "127.0.0.1:2379"), (":method", "POST")]);
    let want: Vec<Seen> = [(1, a.clone()), (3, a), (5, b)]
        .into_iter()
        .map(|(stream, headers)| Seen::Headers {
            stream,
            flags: 0,
            priority: None,
            headers,
        })
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn dynamic_table_size_update_is_honoured() {
    let mut c = Client::new();
    let req = request("http://h:1", "/a");
    c.headers(1, 0, &as_refs(&req));
    // Size update to 0 (evicts everything), then to 256, then a literal indexed entry.
    let mut block = vec![0x20, 0x3f, 0xe1, 0x01];
    c.enc.set_max_table_size(0);
    c.enc.set_max_table_size(256);
    block.extend(c.block(&[(":method", "POST"), ("x-k", "v")]));
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &block);
    // Reference to the entry just added (index 62 = newest dynamic entry).
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &[0x83, 0x80 | 62]);
    let seen = parse(&run(&c.bytes).expect("shim"));
    assert_eq!(seen.len(), 3);
    let want = owned(&[(":method", "POST"), ("x-k", "v")]);
    assert!(matches!(&seen[1], Seen::Headers { headers, .. } if *headers == want));
    assert!(matches!(&seen[2], Seen::Headers { headers, .. } if *headers == want));

    // Above the server's SETTINGS_HEADER_TABLE_SIZE: rejected.
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x3f, 0xe2, 0x1f, 0x83]);
    assert!(run(&c.bytes).is_err());
}

#[test]
fn continuation_split_and_rejoined() {
    let big = "x".repeat(40_000);
    let mut c = Client::new();
    let headers = [
        (":method", "POST"),
        (":path", "/p"),
        (":authority", "http://127.0.0.1:2379"),
        ("big", big.as_str()),
    ];
    let block = c.block(&headers);
    // Sent as HEADERS + 3 CONTINUATION, uneven pieces.
    let cuts = [0, 10, 20_000, 20_001, block.len()];
    for (i, w) in cuts.windows(2).enumerate() {
        let (ty, mut flags) = if i == 0 {
            (TYPE_HEADERS, FLAG_END_STREAM)
        } else {
            (TYPE_CONTINUATION, 0)
        };
        if w[1] == block.len() {
            flags |= FLAG_END_HEADERS;
        }
        c.frame(ty, flags, 7, &block[w[0]..w[1]]);
    }
    c.frame(0x8, 0, 0, &[0, 0, 1, 0]); // WINDOW_UPDATE
    let out = run(&c.bytes).expect("shim");
    // 40 KB of header block: HEADERS + 2 CONTINUATION, END_STREAM only on HEADERS.
    assert_eq!(out[24 + 3], TYPE_HEADERS);
    assert_eq!(out[24 + 4], FLAG_END_STREAM);
    let seen = parse(&out);
    let mut want = headers;
    want[2].1 = "127.0.0.1:2379";
    assert_eq!(
        seen,
        vec![
            Seen::Headers {
                stream: 7,
                flags: FLAG_END_STREAM,
                priority: None,
                headers: owned(&want),
            },
            Seen::Other {
                ty: 0x8,
                flags: 0,
                stream: 0,
                payload: vec![0, 0, 1, 0],
            },
        ]
    );
}

#[test]
fn padded_priority_headers() {
    let mut c = Client::new();
    let headers = [(":method", "GET"), (":authority", "http://a:1")];
    let block = c.block(&headers);
    let prio = [0x80, 0, 0, 3, 15];
    let mut payload = vec![7u8];
    payload.extend_from_slice(&prio);
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0; 7]);
    c.frame(
        TYPE_HEADERS,
        FLAG_END_STREAM | FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
        5,
        &payload,
    );
    let seen = parse(&run(&c.bytes).expect("shim"));
    assert_eq!(
        seen,
        vec![Seen::Headers {
            stream: 5,
            flags: FLAG_END_STREAM | FLAG_PRIORITY,
            priority: Some(prio.to_vec()),
            headers: owned(&[(":method", "GET"), (":authority", "a:1")]),
        }]
    );
}

/// A mixed connection: settings, pings, data, headers with continuation and dynamic refs.
fn busy_connection() -> Vec<u8> {
    let mut c = Client::new();
    c.frame(0x4, 0, 0, &[0, 1, 0, 0, 0x10, 0, 0, 4, 0, 0x10, 0, 0]);
    c.frame(0x8, 0, 0, &[0, 0x0f, 0, 1]);
    for i in 0..5u32 {
        let stream = 1 + 2 * i;
        let req = request("http://127.0.0.1:2379", "/etcdserverpb.Watch/Watch");
        c.headers(stream, 0, &as_refs(&req));
        c.frame(0x0, 0, stream, &vec![i as u8; 20_000 + i as usize]);
        c.frame(0x6, 0, 0, b"pingpong");
        c.frame(0x0, 0, stream, &[]);
    }
    let big = "y".repeat(17_000);
    let block = c.block(&[(":method", "POST"), ("big", big.as_str())]);
    c.frame(TYPE_HEADERS, 0, 11, &block[..5]);
    c.frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 11, &block[5..]);
    c.frame(0x3, 0, 11, &[0, 0, 0, 8]);
    c.bytes
}

#[test]
fn partial_reads_give_the_same_bytes() {
    let input = busy_connection();
    let whole = run(&input).expect("shim");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for (inc, outc) in [(1, 1), (1, 100_000), (100_000, 1), (7, 13), (4096, 9)] {
        let got = rt.block_on(shim(&input, inc, outc)).expect("shim");
        assert!(got == whole, "in {inc} out {outc}: differs");
    }
    // Everything but HEADERS is passed verbatim.
    let seen = parse(&whole);
    assert_eq!(seen.len(), 2 + 5 * 4 + 2);
    assert!(seen.contains(&Seen::Other {
        ty: 0x0,
        flags: 0,
        stream: 9,
        payload: vec![4; 20_004],
    }));
}

#[test]
fn not_http2_passes_through() {
    let input = b"GET / HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec();
    assert_eq!(run(&input).expect("shim"), input);
    // Diverging after a few preface bytes too.
    let input = b"PRI * HTTP/1.1\r\n\r\n\x00\x00\x00\x01\x04".to_vec();
    assert_eq!(run(&input).expect("shim"), input);
}

#[test]
fn connection_without_url_authority_passes_untouched() {
    // The first header block decides: padded, with priority, split by CONTINUATION and
    // with a host:port authority, it and everything after reach the server as sent, even
    // a later URL authority (grpc-go never changes it within a connection).
    let mut c = Client::new();
    c.frame(0x4, 0, 0, &[0, 1, 0, 0, 0x10, 0]);
    let req = request("127.0.0.1:2379", "/etcdserverpb.KV/Range");
    let block = c.block(&as_refs(&req));
    let mut payload = vec![3u8, 0x80, 0, 0, 0, 15];
    payload.extend_from_slice(&block[..4]);
    payload.extend_from_slice(&[0; 3]);
    c.frame(TYPE_HEADERS, FLAG_PADDED | FLAG_PRIORITY, 1, &payload);
    c.frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block[4..]);
    c.frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\x02hi");
    c.headers(3, FLAG_END_STREAM, &as_refs(&req));
    let url = request("http://127.0.0.1:2379", "/etcdserverpb.KV/Range");
    c.headers(5, FLAG_END_STREAM, &as_refs(&url));
    // Not even a malformed block later on is ours to judge.
    c.frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 9, &[0xff]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for (inc, outc) in [(1 << 20, 1 << 20), (1, 1), (7, 13)] {
        let got = rt.block_on(shim(&c.bytes, inc, outc)).expect("shim");
        assert!(got == c.bytes, "in {inc} out {outc}: differs");
    }
}

#[test]
fn malformed_input_is_an_error() {
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 100]);
    cases.push(("index out of range", c.bytes));
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x00, 0x7f, 0xff]);
    cases.push(("truncated literal", c.bytes));
    let mut c = Client::new();
    c.frame(
        TYPE_HEADERS,
        FLAG_END_HEADERS,
        1,
        &[0x00, 0x81, 0xff, 0x01, 0x61],
    );
    cases.push(("bad huffman", c.bytes));
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, &[9, 0x83]);
    cases.push(("padding too long", c.bytes));
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, &[]);
    cases.push(("no pad length", c.bytes));
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PRIORITY, 1, &[0, 0]);
    cases.push(("short priority", c.bytes));
    let mut c = Client::new();
    c.frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x83]);
    cases.push(("stray continuation", c.bytes));
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, 0, 1, &[0x83]);
    c.frame(0x0, 0, 1, b"x");
    cases.push(("data inside block", c.bytes));
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, 0, 1, &[0x83]);
    c.frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[0x84]);
    cases.push(("continuation of another stream", c.bytes));
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &[0x83]);
    cases.push(("stream 0", c.bytes));
    let mut c = Client::new();
    c.bytes
        .extend_from_slice(&[0xff, 0xff, 0xff, TYPE_HEADERS, 0, 0, 0, 0, 1]);
    cases.push(("huge header frame", c.bytes));
    let mut c = Client::new();
    // A small block that expands enormously through one big dynamic entry.
    let big = "z".repeat(3000);
    let mut block = c.block(&[("k", big.as_str())]);
    block.extend(std::iter::repeat_n(0x80 | 62, 1000));
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block);
    cases.push(("decompression bomb", c.bytes));

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for (what, input) in cases {
        for chunk in [1, 1 << 20] {
            let err = rt.block_on(shim(&input, chunk, chunk)).expect_err(what);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
        }
    }
}

#[test]
fn error_is_sticky() {
    let mut c = Client::new();
    c.frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x83]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut s = AuthorityShim::new(Trickle {
            data: c.bytes.clone(),
            pos: 0,
            chunk: 1 << 20,
        });
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).await.expect("preface"), 24);
        assert!(s.read(&mut buf).await.is_err());
        assert!(s.read(&mut buf).await.is_err());
    });
}

#[test]
fn garbage_never_panics() {
    // xorshift: deterministic pseudo-random frames biased towards header frames.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for _ in 0..3000 {
        let mut input = PREFACE.to_vec();
        for _ in 0..(next() % 4 + 1) {
            let len = (next() % 64) as usize;
            let ty = [TYPE_HEADERS, TYPE_CONTINUATION, 0, 4][(next() % 4) as usize];
            let mut payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && !payload.is_empty() {
                payload[0] &= 0x3f; // more plausible HPACK starts
            }
            raw_frame(&mut input, ty, next() as u8, (next() % 4) as u32, &payload);
        }
        if next() % 3 == 0 {
            input.truncate((next() as usize) % input.len());
        }
        let chunk = (next() % 16 + 1) as usize;
        let _ = rt.block_on(shim(&input, chunk, chunk));
    }
}

/// Append a Huffman-coded string literal (codes from RFC 7541 Appendix B).
fn push_huffman(block: &mut Vec<u8>, coded: &[u8], plain: &[u8]) {
    let mut reference = loona_hpack::huffman::HuffmanDecoder::new();
    assert_eq!(reference.decode(coded).expect("valid Huffman"), plain);
    encode_int(block, coded.len(), 7, 0x80);
    block.extend_from_slice(coded);
}

#[test]
fn huffman_coded_fields_are_decoded() {
    // `:authority` (incremental indexing, static name 1) and a new name + value, all
    // Huffman-coded the way Go and h2 clients send them; then a dynamic reference.
    let mut block = vec![0x83, 0x41];
    let url = [
        0x9d, 0x29, 0xae, 0xe3, 0x0c, 0x04, 0x4e, 0xae, 0x05, 0xc0, 0xb8, 0x6e, 0x09, 0x97, 0x5f,
    ];
    push_huffman(&mut block, &url, b"http://127.0.0.1:2379");
    block.push(0x10); // literal never indexed, new name
    let name = [0x9a, 0xca, 0xc8, 0xb2, 0x4d, 0x49, 0x4f, 0x6a, 0x7f];
    push_huffman(&mut block, &name, b"grpc-timeout");
    push_huffman(
        &mut block,
        &[0x69, 0xf7, 0xdf, 0x79, 0xd0, 0x5b],
        b"4999870u",
    );
    let mut c = Client::new();
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block);
    c.frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &[0x83, 0x80 | 62]);
    let seen = parse(&run(&c.bytes).expect("shim"));
    let first = owned(&[
        (":method", "POST"),
        (":authority", "127.0.0.1:2379"),
        ("grpc-timeout", "4999870u"),
    ]);
    assert!(matches!(&seen[0], Seen::Headers { headers, .. } if *headers == first));
    let second = owned(&[(":method", "POST"), (":authority", "127.0.0.1:2379")]);
    assert!(matches!(&seen[1], Seen::Headers { headers, .. } if *headers == second));
}
