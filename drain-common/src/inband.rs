//! What the in-band close does with one write of the server: the whole decision of the
//! sk_msg program, from the socket's state and the write's first bytes to the bytes it
//! adds, if any. The kernel program only reads its inputs and carries out the
//! [`Action`]; the host's tests and fuzzer call [`decide`] with the same inputs.

use crate::{
    boundary::{Inspection, SocketSeqs, Write, ASKED, LEFT_ALONE},
    http1::{Verdict, HEAD_MAX},
    websocket::MESSAGE_MAX,
};

/// What the program does with a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send it as it is.
    Pass,
    /// Send it as it is; the connection is not looked at again.
    LeaveAlone,
    /// Insert `Connection: close\r\n` (`crate::CONNECTION_CLOSE`) `at` bytes into it.
    ConnectionClose { at: u32 },
    /// Append a websocket close frame (`crate::WEBSOCKET_GOING_AWAY`) after its `at` bytes.
    WebsocketClose { at: u32 },
}

/// How many bytes of a write [`decide`] may look at: the judges read no further.
pub const fn window(size: u32) -> u32 {
    if size < HEAD_MAX {
        size
    } else {
        HEAD_MAX
    }
}

/// The write [`decide`] looks at, and the questions it asks of its bytes; each is asked
/// at most once, and only of a candidate write.
pub trait Judge {
    /// The write's size in bytes.
    fn size(&self) -> u32;
    /// The head at the start of the write, judged within its first [`window`] bytes
    /// (`crate::http1::judge`).
    fn head(&mut self) -> Verdict;
    /// Whether the whole write, at most [`MESSAGE_MAX`] bytes, is whole websocket server
    /// frames (`crate::websocket`).
    fn whole_frames(&mut self) -> bool;
}

/// Decides what to do with the write `judge` holds on a connection whose record is
/// `inspection`, given the socket's state before the write. `websocket_close`: the drain
/// was told the port's upgraded connections are websockets.
///
/// Updates the record as the program keeps it; [`Action::ConnectionClose`] and
/// [`Action::WebsocketClose`] mark it asked, [`Action::LeaveAlone`] left alone. Where
/// the kernel refuses the insertion, the caller calls [`Inspection::refused`].
pub fn decide(
    inspection: &mut Inspection,
    seqs: Option<&SocketSeqs>,
    websocket_close: bool,
    judge: &mut impl Judge,
) -> Action {
    let size = judge.size();
    if inspection.finished() {
        return Action::Pass;
    }
    let Some(seqs) = seqs else {
        inspection.flags |= LEFT_ALONE;
        return Action::LeaveAlone;
    };
    match inspection.next_write(seqs) {
        Write::Candidate if size > 0 => {}
        Write::Candidate | Write::Within => return Action::Pass,
        Write::Duplex => return Action::LeaveAlone,
    }
    let action = match judge.head() {
        Verdict::Final { status_line_end } => Action::ConnectionClose {
            at: status_line_end,
        },
        // The final response comes after the server's next read, and may get it.
        Verdict::Interim | Verdict::Incomplete | Verdict::TooLong => Action::Pass,
        Verdict::Unusual if websocket_close => {
            if size <= MESSAGE_MAX && judge.whole_frames() {
                // After the server's own frames, so an answer it was sending arrives first.
                Action::WebsocketClose { at: size }
            } else {
                Action::Pass
            }
        }
        Verdict::Switching | Verdict::Unusual => Action::LeaveAlone,
    };
    match action {
        Action::ConnectionClose { .. } | Action::WebsocketClose { .. } => {
            inspection.flags |= ASKED;
        }
        Action::LeaveAlone => inspection.flags |= LEFT_ALONE,
        Action::Pass => {}
    }
    action
}

impl Inspection {
    /// The kernel refused to change the write [`decide`] chose: the connection is left
    /// alone for good, unasked.
    pub fn refused(&mut self) {
        self.flags = (self.flags & !ASKED) | LEFT_ALONE;
    }
}

/// A [`Judge`] of bytes in memory (the host's).
pub struct Bytes<'a>(pub &'a [u8]);

impl Judge for Bytes<'_> {
    fn size(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }

    fn head(&mut self) -> Verdict {
        crate::http1::judge(self.0)
    }

    fn whole_frames(&mut self) -> bool {
        crate::websocket::whole_frames(self.0)
    }
}
