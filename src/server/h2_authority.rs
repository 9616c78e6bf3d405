//! HTTP/2 `:authority` shim for etcd clients that send a URL as the authority.
//!
//! etcdctl 3.4 dials some commands (`endpoint status`, `endpoint hashkv`, `defrag`, `snapshot
//! save`, `move-leader`) with the grpc-go target `passthrough:///http://host:port`, so the
//! HTTP/2 `:authority` it sends is the literal `http://host:port`. etcd's Go server accepts that;
//! h2 (under tonic and hyper) rejects it as malformed and resets the stream with PROTOCOL_ERROR.
//! [`AuthorityShim`] wraps each accepted client connection and rewrites such authorities to
//! `host:port` on their way to the server.
//!
//! A grpc-go client sends one authority on every stream of a connection, so the first header
//! block decides: without a URL authority there, the block and everything after it pass through
//! untouched (every client but those etcdctl commands). Otherwise HPACK's state forces a
//! rewrite of the whole connection: every header block is decoded with the client's dynamic
//! table and re-encoded without any dynamic table (static-table references and literals
//! "without indexing" only), so the server's decoder table stays empty and always consistent.
//! Other frames pass through byte for byte; server→client bytes are not touched at all.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{ready, Context, Poll};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header: 24-bit length, type, flags, 31-bit stream id.
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Largest payload of a frame we emit: the default SETTINGS_MAX_FRAME_SIZE, which a server
/// can never lower.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// Cap on one encoded header block from the client (all its frames together). The server
/// accepts 16 KiB header lists by default; this only bounds our memory.
const MAX_BLOCK: usize = 1 << 20;
/// Cap on the decoded header list of one block (RFC 7541 sizes: name + value + 32 each), so
/// that a small block referencing big table entries cannot make us allocate without bound.
const MAX_DECODED: usize = 1 << 20;
/// The client's HPACK encoder table is bounded by the server's SETTINGS_HEADER_TABLE_SIZE;
/// hyper leaves it at h2's default.
const HEADER_TABLE_SIZE: usize = 4096;
/// Size of the read buffer: one default-size frame with its header.
const READ_CHUNK: usize = MAX_FRAME_PAYLOAD + FRAME_HEADER_LEN;

/// A client connection whose HTTP/2 `:authority` values of the form `scheme://host:port[/..]`
/// are rewritten to `host:port` before the server reads them. Writes go straight through.
pub struct AuthorityShim<IO> {
    io: IO,
    rw: Rewriter,
}

impl<IO> AuthorityShim<IO> {
    /// Wrap an accepted client connection.
    pub fn new(io: IO) -> Self {
        AuthorityShim {
            io,
            rw: Rewriter::new(),
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityShim<IO>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityShim<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(msg) = &this.rw.failed {
            return Poll::Ready(Err(invalid(msg.clone())));
        }
        let before = dst.filled().len();
        loop {
            match this.rw.drain(dst) {
                Err(msg) => {
                    tracing::debug!(error = %msg, "closing client connection: bad HTTP/2 input");
                    this.rw.failed = Some(msg.clone());
                    // Hand out the good bytes before the bad frame first; the next read fails.
                    if dst.filled().len() > before {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Ready(Err(invalid(msg)));
                }
                Ok(Step::DstFull) => return Poll::Ready(Ok(())),
                Ok(Step::NeedInput) if dst.filled().len() > before => return Poll::Ready(Ok(())),
                Ok(Step::NeedInput) => {}
            }
            let mut rb = ReadBuf::new(this.rw.spare());
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                // EOF: a frame cut short is the server's to notice (it sees EOF too).
                return Poll::Ready(Ok(()));
            }
            this.rw.end += n;
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityShim<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Why `drain` stopped.
enum Step {
    /// The caller's buffer is full.
    DstFull,
    /// Everything buffered was handed out (or is waiting for the rest of its frame).
    NeedInput,
}

/// Where the client→server byte stream is.
#[derive(Clone, Copy, Debug)]
enum State {
    /// Inside the connection preface, `matched` bytes of it seen.
    Preface { matched: usize },
    /// Not HTTP/2 with prior knowledge (the server will refuse it), or no URL authority in the
    /// first header block: pass everything.
    Transparent,
    /// At a frame boundary.
    FrameHeader,
    /// Inside the payload of a frame that passes verbatim.
    Pass { remaining: usize },
    /// Waiting for the whole payload of a HEADERS or CONTINUATION frame.
    Collect {
        head: [u8; FRAME_HEADER_LEN],
        ty: u8,
        flags: u8,
        stream: u32,
        len: usize,
    },
}

/// The synchronous part of the shim: input buffer, frame parser and output queue.
struct Rewriter {
    /// Bytes read from the client; `start..end` not processed yet.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Rewritten bytes not yet handed to the server (`out_pos..`).
    out: Vec<u8>,
    out_pos: usize,
    state: State,
    hpack: Hpack,
    /// Set once the input was rejected: every later read fails the same way.
    failed: Option<String>,
}

impl Rewriter {
    fn new() -> Self {
        Rewriter {
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            out: Vec::new(),
            out_pos: 0,
            state: State::Preface { matched: 0 },
            hpack: Hpack::new(),
            failed: None,
        }
    }

    /// Free space to read into, making room for what the current state waits for.
    fn spare(&mut self) -> &mut [u8] {
        let need = match self.state {
            State::FrameHeader => FRAME_HEADER_LEN,
            State::Collect { len, .. } => len,
            _ => 1,
        };
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > READ_CHUNK && need <= READ_CHUNK {
                // A big header frame grew the buffer; give the memory back.
                self.buf.truncate(READ_CHUNK);
                self.buf.shrink_to_fit();
            }
        }
        if self.buf.len() - self.start < need || self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Move as many processed bytes as fit into `dst`.
    fn drain(&mut self, dst: &mut ReadBuf<'_>) -> Result<Step, String> {
        loop {
            if self.out_pos < self.out.len() {
                let n = (self.out.len() - self.out_pos).min(dst.remaining());
                dst.put_slice(&self.out[self.out_pos..self.out_pos + n]);
                self.out_pos += n;
                if self.out_pos == self.out.len() {
                    self.out.clear();
                    self.out_pos = 0;
                }
            }
            if dst.remaining() == 0 {
                return Ok(Step::DstFull);
            }
            let avail = self.end - self.start;
            match self.state {
                State::Transparent => {
                    if avail == 0 {
                        return Ok(Step::NeedInput);
                    }
                    self.pass(dst, avail);
                }
                State::Preface { matched } => {
                    let n = (PREFACE.len() - matched).min(avail).min(dst.remaining());
                    if n == 0 {
                        return Ok(Step::NeedInput);
                    }
                    if self.buf[self.start..self.start + n] != PREFACE[matched..matched + n] {
                        self.state = State::Transparent;
                        continue;
                    }
                    self.pass(dst, n);
                    self.state = if matched + n == PREFACE.len() {
                        State::FrameHeader
                    } else {
                        State::Preface {
                            matched: matched + n,
                        }
                    };
                }
                State::FrameHeader => {
                    if avail < FRAME_HEADER_LEN {
                        return Ok(Step::NeedInput);
                    }
                    let mut head = [0u8; FRAME_HEADER_LEN];
                    head.copy_from_slice(&self.buf[self.start..self.start + FRAME_HEADER_LEN]);
                    self.start += FRAME_HEADER_LEN;
                    let len = usize::from(head[0]) << 16
                        | usize::from(head[1]) << 8
                        | usize::from(head[2]);
                    let (ty, flags) = (head[3], head[4]);
                    let stream =
                        u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    if ty == TYPE_HEADERS || ty == TYPE_CONTINUATION {
                        if len > MAX_BLOCK {
                            return Err(format!("header frame of {len} bytes is too large"));
                        }
                        self.state = State::Collect {
                            head,
                            ty,
                            flags,
                            stream,
                            len,
                        };
                        continue;
                    }
                    if self.hpack.open.is_some() {
                        return Err(format!(
                            "frame of type {ty:#x} inside a header block (RFC 9113 §6.10)"
                        ));
                    }
                    if dst.remaining() >= FRAME_HEADER_LEN {
                        dst.put_slice(&head);
                    } else {
                        self.out.extend_from_slice(&head);
                    }
                    self.state = if len == 0 {
                        State::FrameHeader
                    } else {
                        State::Pass { remaining: len }
                    };
                }
                State::Pass { remaining } => {
                    if avail == 0 {
                        return Ok(Step::NeedInput);
                    }
                    let n = self.pass(dst, remaining.min(avail));
                    self.state = if n == remaining {
                        State::FrameHeader
                    } else {
                        State::Pass {
                            remaining: remaining - n,
                        }
                    };
                }
                State::Collect {
                    head,
                    ty,
                    flags,
                    stream,
                    len,
                } => {
                    if avail < len {
                        return Ok(Step::NeedInput);
                    }
                    let payload = &self.buf[self.start..self.start + len];
                    let next = self.hpack.frame(
                        &mut self.out,
                        Frame {
                            head: &head,
                            ty,
                            flags,
                            stream,
                            payload,
                        },
                    )?;
                    self.start += len;
                    self.state = match next {
                        Next::Frames => State::FrameHeader,
                        Next::PassRest => State::Transparent,
                    };
                }
            }
        }
    }

    /// Copy up to `max` input bytes straight to `dst`; returns how many.
    fn pass(&mut self, dst: &mut ReadBuf<'_>, max: usize) -> usize {
        let n = max.min(dst.remaining());
        dst.put_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        n
    }
}

/// One HEADERS or CONTINUATION frame as read: its raw header and payload, and the parsed fields.
struct Frame<'a> {
    head: &'a [u8; FRAME_HEADER_LEN],
    ty: u8,
    flags: u8,
    stream: u32,
    payload: &'a [u8],
}

/// What follows a header frame.
enum Next {
    /// More frames to parse.
    Frames,
    /// The first header block carried no URL authority: the rest of the connection passes.
    PassRest,
}

/// A HEADERS frame whose header block is not complete yet.
struct OpenBlock {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
}

/// Header-block reassembly and the HPACK decode + re-encode.
struct Hpack {
    /// Mirrors the client encoder's dynamic table.
    decoder: Decoder<'static>,
    /// Fragments of the open header block.
    block: Vec<u8>,
    open: Option<OpenBlock>,
    /// Scratch for the re-encoded block.
    encoded: Vec<u8>,
    /// Set once a header block carried a URL authority; until then (the first block) its
    /// frames are also kept as read, in `verbatim`, to pass on untouched if it has none.
    rewriting: bool,
    verbatim: Vec<u8>,
}

impl Hpack {
    fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Hpack {
            decoder,
            block: Vec::new(),
            open: None,
            encoded: Vec::new(),
            rewriting: false,
            verbatim: Vec::new(),
        }
    }

    /// Take one HEADERS or CONTINUATION frame; once its block is complete, append the
    /// rewritten frames (or the first block as read) to `out`.
    fn frame(&mut self, out: &mut Vec<u8>, frame: Frame<'_>) -> Result<Next, String> {
        let Frame {
            head,
            ty,
            flags,
            stream,
            payload,
        } = frame;
        if !self.rewriting {
            self.verbatim.extend_from_slice(head);
            self.verbatim.extend_from_slice(payload);
        }
        if ty == TYPE_HEADERS {
            if self.open.is_some() {
                return Err("HEADERS inside an open header block".to_string());
            }
            if stream == 0 {
                return Err("HEADERS on stream 0".to_string());
            }
            let mut p = payload;
            if flags & FLAG_PADDED != 0 {
                let (&pad, rest) = p
                    .split_first()
                    .ok_or("padded HEADERS without a pad length")?;
                let keep = rest
                    .len()
                    .checked_sub(usize::from(pad))
                    .ok_or("HEADERS padding longer than the frame")?;
                p = &rest[..keep];
            }
            let mut priority = None;
            if flags & FLAG_PRIORITY != 0 {
                if p.len() < 5 {
                    return Err("HEADERS too short for its priority fields".to_string());
                }
                let (prio, rest) = p.split_at(5);
                let mut fields = [0u8; 5];
                fields.copy_from_slice(prio);
                priority = Some(fields);
                p = rest;
            }
            self.block.clear();
            self.block.extend_from_slice(p);
            self.open = Some(OpenBlock {
                stream,
                flags,
                priority,
            });
        } else {
            let open = self
                .open
                .as_ref()
                .ok_or("CONTINUATION without an open header block")?;
            if open.stream != stream {
                return Err(format!(
                    "CONTINUATION on stream {stream} for a block of stream {}",
                    open.stream
                ));
            }
            if self.block.len() + payload.len() > MAX_BLOCK {
                return Err("header block too large".to_string());
            }
            self.block.extend_from_slice(payload);
        }
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(Next::Frames);
        }
        let Some(open) = self.open.take() else {
            return Err("header block ended twice".to_string());
        };
        let url_authority = self.reencode()?;
        if !self.rewriting && !url_authority {
            // The server decodes the first block itself, from the same empty table.
            out.append(&mut self.verbatim);
            self.verbatim = Vec::new();
            self.block = Vec::new();
            self.encoded = Vec::new();
            return Ok(Next::PassRest);
        }
        self.rewriting = true;
        self.verbatim = Vec::new();
        emit_block(out, &open, &self.encoded);
        if self.block.capacity() > 4 * MAX_FRAME_PAYLOAD {
            self.block = Vec::new();
        }
        if self.encoded.capacity() > 4 * MAX_FRAME_PAYLOAD {
            self.encoded = Vec::new();
        }
        Ok(Next::Frames)
    }

    /// Decode `block` (updating the client's table) into `encoded`, table-free; returns
    /// whether it carried a URL authority.
    fn reencode(&mut self) -> Result<bool, String> {
        let encoded = &mut self.encoded;
        encoded.clear();
        let mut decoded = 0usize;
        let mut url_authority = false;
        self.decoder
            .decode_with_cb(&self.block, |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                decoded = decoded.saturating_add(name.len() + value.len() + 32);
                if decoded > MAX_DECODED {
                    return;
                }
                if &name[..] == b":authority" {
                    let host = rewrite_authority(&value);
                    url_authority |= host.len() != value.len();
                    // `unix:///path` leaves no host: no authority is better than a bad one.
                    if !host.is_empty() {
                        encode_field(encoded, &name, host);
                    }
                } else {
                    encode_field(encoded, &name, &value);
                }
            })
            .map_err(|e| format!("HPACK: {e}"))?;
        if decoded > MAX_DECODED {
            return Err(format!("decoded header list over {MAX_DECODED} bytes"));
        }
        Ok(url_authority)
    }
}

/// `scheme://host:port/...` → `host:port`; anything without `://` unchanged.
fn rewrite_authority(value: &[u8]) -> &[u8] {
    match value.windows(3).position(|w| w == b"://") {
        Some(i) => {
            let rest = &value[i + 3..];
            let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
            &rest[..end]
        }
        None => value,
    }
}

/// Append HEADERS (+ CONTINUATION) frames carrying `block`, each at most the default frame size.
fn emit_block(out: &mut Vec<u8>, open: &OpenBlock, block: &[u8]) {
    let prio_len = if open.priority.is_some() { 5 } else { 0 };
    let (first, mut rest) = block.split_at(block.len().min(MAX_FRAME_PAYLOAD - prio_len));
    let mut flags = open.flags & (FLAG_END_STREAM | FLAG_PRIORITY);
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    frame_header(
        out,
        prio_len + first.len(),
        TYPE_HEADERS,
        flags,
        open.stream,
    );
    if let Some(prio) = &open.priority {
        out.extend_from_slice(prio);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, open.stream);
        out.extend_from_slice(chunk);
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, stream: u32) {
    // `len` ≤ MAX_FRAME_PAYLOAD, so it fits the 24-bit field.
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&[len[1], len[2], len[3], ty, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// One header field without touching the dynamic table: an indexed static entry, or a literal
/// "without indexing" with a static name reference when there is one (RFC 7541 §6.1, §6.2.2).
fn encode_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let mut name_index = 0;
    for &i in static_by_name_len()
        .get(name.len())
        .map_or(&[][..], Vec::as_slice)
    {
        let (n, v) = STATIC_TABLE[usize::from(i)];
        if n == name {
            if v == value {
                encode_int(out, usize::from(i) + 1, 7, 0x80);
                return;
            }
            if name_index == 0 {
                name_index = usize::from(i) + 1;
            }
        }
    }
    encode_int(out, name_index, 4, 0x00);
    if name_index == 0 {
        encode_str(out, name);
    }
    encode_str(out, value);
}

/// HPACK integer with an N-bit prefix (RFC 7541 §5.1).
fn encode_int(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// HPACK string literal, raw (no Huffman): the server decodes it with a plain copy.
fn encode_str(out: &mut Vec<u8>, s: &[u8]) {
    encode_int(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// Positions in `STATIC_TABLE` by name length, so a lookup compares a handful of names.
fn static_by_name_len() -> &'static [Vec<u8>] {
    static BY_LEN: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    BY_LEN.get_or_init(|| {
        let mut by_len = Vec::new();
        for (i, (name, _)) in STATIC_TABLE.iter().enumerate() {
            if by_len.len() <= name.len() {
                by_len.resize(name.len() + 1, Vec::new());
            }
            by_len[name.len()].push(i as u8);
        }
        by_len
    })
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&[u8], &[u8]); 61] = [
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
];

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;
    use tokio::io::AsyncReadExt;

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
            0x9d, 0x29, 0xae, 0xe3, 0x0c, 0x04, 0x4e, 0xae, 0x05, 0xc0, 0xb8, 0x6e, 0x09, 0x97,
            0x5f,
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

    #[test]
    fn encoding_uses_static_table_only() {
        let mut out = Vec::new();
        encode_field(&mut out, b":method", b"POST");
        assert_eq!(out, [0x83]);
        out.clear();
        encode_field(&mut out, b"content-type", b"ab");
        assert_eq!(out, [0x0f, 31 - 15, 2, b'a', b'b']);
        out.clear();
        encode_field(&mut out, b"te", b"trailers");
        let mut want = vec![0x00, 2, b't', b'e', 8];
        want.extend_from_slice(b"trailers");
        assert_eq!(out, want);
        out.clear();
        encode_int(&mut out, 1337, 5, 0);
        assert_eq!(out, [31, 154, 10]);
    }
}
