//! Reading a peer's lines with a bound on each: whatever a peer sends, the daemon holds at
//! most [`MAX_LINE_BYTES`] of it per connection. A line reader without a bound buffers
//! until the newline comes, so one peer streaming bytes with no newline could grow the
//! daemon's memory without end (and with it, an OOM kill would end every drain on the
//! node). A peer over the bound is cut: nothing it could still say is worth reading.

use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _};

/// The longest line a peer may send: a drain request is about 300 bytes.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Why no line was read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    #[error("line is not UTF-8")]
    NotUtf8,
    #[error("reading from the peer: {0}")]
    Io(#[from] std::io::Error),
}

/// The next line, without its newline, read in at most [`MAX_LINE_BYTES`] + 1 bytes;
/// `None` when the peer closed before sending any byte of one.
pub async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Result<Option<String>, LineError> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE_BYTES {
        return Err(LineError::TooLong);
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| LineError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use tokio::io::{AsyncRead, BufReader, ReadBuf};

    use super::*;

    /// A peer that sends `x` for ever, counting what was taken from it.
    struct Endless {
        given: usize,
    }

    impl AsyncRead for Endless {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = buf.remaining();
            buf.put_slice(&vec![b'x'; n]);
            self.given += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn lines_are_read_up_to_the_bound_and_no_further() {
        let mut reader = BufReader::new(&b"one\ntwo"[..]);
        assert_eq!(
            next_line(&mut reader).await.unwrap().as_deref(),
            Some("one")
        );
        assert_eq!(
            next_line(&mut reader).await.unwrap().as_deref(),
            Some("two")
        );
        assert!(next_line(&mut reader).await.unwrap().is_none());

        let exact = [vec![b'y'; MAX_LINE_BYTES], b"\n".to_vec()].concat();
        let mut reader = BufReader::new(&exact[..]);
        assert_eq!(
            next_line(&mut reader).await.unwrap().unwrap().len(),
            MAX_LINE_BYTES
        );

        let mut endless = BufReader::new(Endless { given: 0 });
        assert!(matches!(
            next_line(&mut endless).await,
            Err(LineError::TooLong)
        ));
        // What was read from the peer: the bound and one buffer's worth at most.
        assert!(endless.get_ref().given <= MAX_LINE_BYTES + 8 * 1024 + 1);
    }
}
