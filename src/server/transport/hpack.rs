//! Header-block reassembly and the HPACK decode + table-free re-encode, where the first block
//! of a connection decides whether the connection is rewritten at all.

use std::borrow::Cow;

use loona_hpack::Decoder;

use super::encode::encode_field;
use super::frame::{
    emit_block, OpenBlock, FLAG_END_HEADERS, FLAG_PADDED, FLAG_PRIORITY, FRAME_HEADER_LEN,
    MAX_FRAME_PAYLOAD, TYPE_HEADERS,
};

/// Cap on one encoded header block from the client (all its frames together). The server
/// accepts 16 KiB header lists by default; this only bounds our memory.
pub(crate) const MAX_BLOCK: usize = 1 << 20;
/// Cap on the decoded header list of one block (RFC 7541 sizes: name + value + 32 each), so
/// that a small block referencing big table entries cannot make us allocate without bound.
const MAX_DECODED: usize = 1 << 20;
/// The client's HPACK encoder table is bounded by the server's SETTINGS_HEADER_TABLE_SIZE;
/// hyper leaves it at h2's default.
const HEADER_TABLE_SIZE: usize = 4096;

/// One HEADERS or CONTINUATION frame as read: its raw header and payload, and the parsed fields.
pub(crate) struct Frame<'a> {
    pub(crate) head: &'a [u8; FRAME_HEADER_LEN],
    pub(crate) ty: u8,
    pub(crate) flags: u8,
    pub(crate) stream: u32,
    pub(crate) payload: &'a [u8],
}

/// What follows a header frame.
pub(crate) enum Next {
    /// More frames to parse.
    Frames,
    /// The first header block carried no URL authority: the rest of the connection passes.
    PassRest,
}

/// Header-block reassembly and the HPACK decode + re-encode.
pub(crate) struct Hpack {
    /// Mirrors the client encoder's dynamic table.
    decoder: Decoder<'static>,
    /// Fragments of the open header block.
    block: Vec<u8>,
    pub(crate) open: Option<OpenBlock>,
    /// Scratch for the re-encoded block.
    encoded: Vec<u8>,
    /// Set once a header block carried a URL authority; until then (the first block) its
    /// frames are also kept as read, in `verbatim`, to pass on untouched if it has none.
    rewriting: bool,
    verbatim: Vec<u8>,
}

impl Hpack {
    pub(crate) fn new() -> Self {
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
    pub(crate) fn frame(&mut self, out: &mut Vec<u8>, frame: Frame<'_>) -> Result<Next, String> {
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
