//! HTTP/2 framing (RFC 9113 §4, §6.2, §6.10): the constants the shim needs and the writer of a
//! header block as HEADERS + CONTINUATION frames.

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header: 24-bit length, type, flags, 31-bit stream id.
pub(crate) const FRAME_HEADER_LEN: usize = 9;
pub(crate) const TYPE_HEADERS: u8 = 0x1;
pub(crate) const TYPE_CONTINUATION: u8 = 0x9;
pub(crate) const FLAG_END_STREAM: u8 = 0x1;
pub(crate) const FLAG_END_HEADERS: u8 = 0x4;
pub(crate) const FLAG_PADDED: u8 = 0x8;
pub(crate) const FLAG_PRIORITY: u8 = 0x20;
/// Largest payload of a frame we emit: the default SETTINGS_MAX_FRAME_SIZE, which a server
/// can never lower.
pub(crate) const MAX_FRAME_PAYLOAD: usize = 16_384;

/// A HEADERS frame whose header block is not complete yet.
pub(crate) struct OpenBlock {
    pub(crate) stream: u32,
    pub(crate) flags: u8,
    pub(crate) priority: Option<[u8; 5]>,
}

/// Append HEADERS (+ CONTINUATION) frames carrying `block`, each at most the default frame size.
pub(crate) fn emit_block(out: &mut Vec<u8>, open: &OpenBlock, block: &[u8]) {
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
