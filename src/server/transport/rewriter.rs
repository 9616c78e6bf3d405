//! The synchronous part of the shim: the client's byte stream cut into HTTP/2 frames, header
//! frames handed to [`Hpack`], everything else copied through.

use tokio::io::ReadBuf;

use super::frame::{FRAME_HEADER_LEN, MAX_FRAME_PAYLOAD, PREFACE, TYPE_CONTINUATION, TYPE_HEADERS};
use super::hpack::{Frame, Hpack, Next, MAX_BLOCK};

/// Size of the read buffer: one default-size frame with its header.
const READ_CHUNK: usize = MAX_FRAME_PAYLOAD + FRAME_HEADER_LEN;

/// Why `drain` stopped.
pub(crate) enum Step {
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
pub(crate) struct Rewriter {
    /// Bytes read from the client; `start..end` not processed yet.
    buf: Vec<u8>,
    start: usize,
    pub(crate) end: usize,
    /// Rewritten bytes not yet handed to the server (`out_pos..`).
    out: Vec<u8>,
    out_pos: usize,
    state: State,
    hpack: Hpack,
    /// Set once the input was rejected: every later read fails the same way.
    pub(crate) failed: Option<String>,
}

impl Rewriter {
    pub(crate) fn new() -> Self {
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
    pub(crate) fn spare(&mut self) -> &mut [u8] {
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
    pub(crate) fn drain(&mut self, dst: &mut ReadBuf<'_>) -> Result<Step, String> {
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
