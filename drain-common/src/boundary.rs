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
//!   the mark: whether the server read since its previous write is unknown then;
//! - nothing was waiting unread at that previous write (`copied_seq == rcv_nxt` then):
//!   what the server read since arrived after it wrote, as a request sent after its
//!   answer does. Input already waiting while the server wrote (a pipelined request, a
//!   request body read after the response head) may be read in the middle of a
//!   response, and the write after such a read may be a body.
//!
//! A client that sends while the server's output is still unacknowledged (input arrived
//! since the previous write, and this write finds output in flight) is pipelining or
//! speaks a full-duplex protocol: the server may read in the middle of its units, so the
//! connection is left alone for good ([`Write::Duplex`]).
//!
//! The pieces of one response have no read between them, and a body written while the
//! previous piece is unacknowledged is not at a boundary either: neither is a candidate,
//! whatever its bytes look like. [`crate::http1`] then judges a candidate's bytes. What
//! the socket cannot tell is a server that reads input which arrived *after* one of its
//! writes before it writes the rest of the same unit (a full-duplex protocol such as a
//! websocket, a client that pipelines while the response is in flight): that piece is a
//! candidate, and changes only if its bytes are a complete response head by the grammar
//! (docs/in-band-close.md states this limit).

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
/// [`Inspection::flags`]: nothing was waiting unread when the mark was set.
pub const READ_ALL_AT_MARK: u32 = 1 << 3;

/// What the program keeps per connection (the value of the state map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    /// `copied_seq` at the server's previous write.
    pub read_mark: u32,
    /// [`MARKED`], [`ASKED`], [`LEFT_ALONE`], [`READ_ALL_AT_MARK`].
    pub flags: u32,
    /// `rcv_nxt` at the server's previous write.
    pub received_mark: u32,
}

/// Where a write stands ([`Inspection::next_write`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Write {
    /// The first write of a response to something the server read after its previous
    /// write, at a proven boundary.
    Candidate,
    /// Anything else: a piece of a unit, or a write the socket cannot place.
    Within,
    /// The client sent while the server's output was in flight: leave it alone for good.
    Duplex,
}

impl Inspection {
    /// Whether the program is done with the connection ([`ASKED`] or [`LEFT_ALONE`]): the
    /// loader takes it out of the program's map.
    pub const fn finished(&self) -> bool {
        self.flags & (ASKED | LEFT_ALONE) != 0
    }

    /// Records a write of the server and says where it stands.
    pub fn next_write(&mut self, seqs: &SocketSeqs) -> Write {
        if self.finished() {
            return Write::Within;
        }
        let marked = self.flags & MARKED != 0;
        let acked = seqs.snd_una == seqs.write_seq;
        let read_all = seqs.copied_seq == seqs.rcv_nxt;
        if marked && !acked && seqs.rcv_nxt != self.received_mark {
            self.flags |= LEFT_ALONE;
            return Write::Duplex;
        }
        let candidate = marked
            && self.flags & READ_ALL_AT_MARK != 0
            && acked
            && read_all
            && seqs.copied_seq != self.read_mark;
        self.read_mark = seqs.copied_seq;
        self.received_mark = seqs.rcv_nxt;
        self.flags |= MARKED;
        if read_all {
            self.flags |= READ_ALL_AT_MARK;
        } else {
            self.flags &= !READ_ALL_AT_MARK;
        }
        if candidate {
            Write::Candidate
        } else {
            Write::Within
        }
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
        let first = inspection.next_write(&seqs(100, 100, 50, 50));
        assert_eq!(first, Write::Within);
        let no_read = inspection.next_write(&seqs(200, 200, 50, 50));
        assert_eq!(no_read, Write::Within);
        let read_all_acked = inspection.next_write(&seqs(300, 300, 80, 80));
        assert_eq!(read_all_acked, Write::Candidate);
    }

    #[test]
    fn an_unread_request_is_no_boundary() {
        let mut inspection = Inspection::default();
        inspection.next_write(&seqs(100, 100, 50, 50));
        let half_read = inspection.next_write(&seqs(200, 200, 90, 80));
        assert_eq!(half_read, Write::Within);
    }

    #[test]
    fn input_waiting_at_the_previous_write_makes_no_boundary() {
        let mut inspection = Inspection::default();
        // A head written while a pipelined request (or the request's body) waits unread.
        inspection.next_write(&seqs(100, 100, 90, 50));
        let read_mid_response = inspection.next_write(&seqs(200, 200, 90, 90));
        assert_eq!(read_mid_response, Write::Within);
        let clean_again = inspection.next_write(&seqs(300, 300, 120, 120));
        assert_eq!(clean_again, Write::Candidate);
    }

    #[test]
    fn a_client_sending_while_output_is_in_flight_is_left_alone() {
        let mut inspection = Inspection::default();
        inspection.next_write(&seqs(100, 100, 50, 50));
        // A frame's first piece is unacknowledged when the client's next message arrives.
        assert_eq!(
            Write::Duplex,
            inspection.next_write(&seqs(200, 150, 60, 60))
        );
        assert!(inspection.finished());
        // Output in flight with no new input is a body going out, not a doubt.
        let mut inspection = Inspection::default();
        inspection.next_write(&seqs(100, 100, 50, 50));
        assert_eq!(
            Write::Within,
            inspection.next_write(&seqs(200, 150, 50, 50))
        );
        assert!(!inspection.finished());
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut inspection = Inspection::default();
        inspection.next_write(&seqs(u32::MAX, u32::MAX, u32::MAX - 2, u32::MAX - 2));
        assert_eq!(Write::Candidate, inspection.next_write(&seqs(5, 5, 3, 3)));
    }

    #[test]
    fn a_finished_connection_has_no_candidate() {
        let mut inspection = Inspection {
            read_mark: 1,
            flags: MARKED | READ_ALL_AT_MARK | LEFT_ALONE,
            received_mark: 1,
        };
        assert_eq!(Write::Within, inspection.next_write(&seqs(10, 10, 9, 9)));
    }
}
