//! [`AuthorityShim`]: the accepted client connection wrapped, reads going through the
//! [`Rewriter`], writes straight to the connection.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::rewriter::{Rewriter, Step};

/// A client connection whose HTTP/2 `:authority` values of the form `scheme://host:port[/..]`
/// are rewritten to `host:port` before the server reads them. Writes go straight through.
pub(crate) struct AuthorityShim<IO> {
    io: IO,
    rw: Rewriter,
}

impl<IO> AuthorityShim<IO> {
    /// Wrap an accepted client connection.
    pub(crate) fn new(io: IO) -> Self {
        AuthorityShim {
            io,
            rw: Rewriter::new(),
        }
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
