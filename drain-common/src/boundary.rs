//! Where a server is in its output stream, proven from the state of its TCP socket rather
//! than guessed from a message's first bytes.
//!
//! A message the sk_msg program sees is not a `send()`: the kernel cuts large sends at
//! scatterlist bounds and runs the program per 64 KiB of a `sendfile`, and a drain arms a
//! connection at any moment, often in the middle of a response. So the bytes of a message
//! never prove that it starts a response. The socket does: the program reads four sequence
//! numbers of the server's `tcp_sock` and keeps, per connection, how far the server had
//! read at its previous write ([`Inspection`]). A message is a *candidate* (the first write
//! of a new response) only when
//! - everything the server wrote before is acknowledged (`snd_una == write_seq`): the
//!   client has received the whole previous output, as a client does before it sends its
//!   next request;
//! - the server has read everything that arrived (`copied_seq == rcv_nxt`): no request
//!   is half read;
//! - the server has read new bytes since its previous write (`copied_seq` moved since the
//!   mark): it is answering something new. The first write seen after arming only sets
//!   the mark: whether the server read since its previous write is unknown then.
//!
//! The pieces of one response have no read between them, and a body written while the
//! previous piece is unacknowledged is not at a boundary either: neither is a candidate,
//! whatever its bytes look like. [`crate::http1`] then judges a candidate's bytes.

/// The sequence numbers of the server's `tcp_sock` the decision needs, read when a
/// message is about to be sent (the socket is locked then, so they are consistent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SocketSeqs {
    /// The sequence number after the last byte the server has written.
    pub write_seq: u32,
    /// The first byte the client has not acknowledged.
    pub snd_una: u32,
    /// The sequence number after the last byte received in order.
    pub rcv_nxt: u32,
    /// The sequence number after the last byte the server has read.
    pub copied_seq: u32,
}

/// [`Inspection::flags`]: the mark was set (by an earlier message on this connection).
pub const MARKED: u32 = 1;
/// [`Inspection::flags`]: the connection was asked to close; never touched again.
pub const ASKED: u32 = 1 << 1;
/// [`Inspection::flags`]: the connection is left alone for good (its stream did not
/// follow the grammar, a write could not be changed, or it switched protocols).
pub const LEFT_ALONE: u32 = 1 << 2;

/// What the program keeps per connection (the value of the state map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    /// `copied_seq` at the server's previous write.
    pub read_mark: u32,
    /// [`MARKED`], [`ASKED`], [`LEFT_ALONE`].
    pub flags: u32,
}

impl Inspection {
    /// Whether the program is done with the connection ([`ASKED`] or [`LEFT_ALONE`]): the
    /// loader takes it out of the program's map.
    pub const fn finished(&self) -> bool {
        self.flags & (ASKED | LEFT_ALONE) != 0
    }

    /// Records a write of the server and says whether it is a candidate: the first write of
    /// a response to something the server read after its previous write.
    pub fn next_write(&mut self, seqs: &SocketSeqs) -> bool {
        if self.finished() {
            return false;
        }
        let candidate = self.flags & MARKED != 0
            && seqs.snd_una == seqs.write_seq
            && seqs.copied_seq == seqs.rcv_nxt
            && seqs.copied_seq != self.read_mark;
        self.read_mark = seqs.copied_seq;
        self.flags |= MARKED;
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(write_seq: u32, snd_una: u32, rcv_nxt: u32, copied_seq: u32) -> SocketSeqs {
        SocketSeqs {
            write_seq,
            snd_una,
            rcv_nxt,
            copied_seq,
        }
    }

    #[test]
    fn the_first_write_seen_only_sets_the_mark() {
        let mut inspection = Inspection::default();
        assert!(!inspection.next_write(&seqs(100, 100, 50, 50)));
        assert!(
            !inspection.next_write(&seqs(200, 200, 50, 50)),
            "no read between"
        );
        assert!(
            inspection.next_write(&seqs(300, 300, 80, 80)),
            "read, all acked"
        );
    }

    #[test]
    fn unacknowledged_output_or_an_unread_request_is_no_boundary() {
        let mut inspection = Inspection::default();
        inspection.next_write(&seqs(100, 100, 50, 50));
        assert!(
            !inspection.next_write(&seqs(200, 150, 80, 80)),
            "output in flight"
        );
        let mut inspection = Inspection::default();
        inspection.next_write(&seqs(100, 100, 50, 50));
        assert!(
            !inspection.next_write(&seqs(200, 200, 90, 80)),
            "request half read"
        );
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut inspection = Inspection::default();
        inspection.next_write(&seqs(u32::MAX, u32::MAX, u32::MAX - 2, u32::MAX - 2));
        assert!(inspection.next_write(&seqs(5, 5, 3, 3)));
    }

    #[test]
    fn a_finished_connection_has_no_candidate() {
        let mut inspection = Inspection {
            read_mark: 1,
            flags: MARKED | LEFT_ALONE,
        };
        assert!(!inspection.next_write(&seqs(10, 10, 9, 9)));
    }
}
