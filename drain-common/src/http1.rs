//! Whether a server's write starts with a complete HTTP/1.x response head, by RFC 9112's
//! grammar, read one byte at a time.
//!
//! The sk_msg program runs this on a message that [`crate::boundary`] has proven to be
//! the server's first write of a response, and writes `Connection: close` after the
//! status line only on [`Verdict::Final`]. Anything the grammar does not allow (a bare
//! LF, obs-fold, a field without a name, a version other than 1.0 and 1.1) is
//! [`Verdict::Unusual`]: the program then leaves the connection alone for good, because a
//! server that writes such a head may be somewhere else in its stream than proven.
//!
//! The parser takes one byte per call and keeps a few words of state, so the kernel side
//! can feed it from a `bpf_loop` callback (verified once, whatever the head's length) and
//! the host side from a slice; both run exactly this code.

/// How many bytes of a message the head must end within. Longer heads are legal, and are
/// passed untouched ([`Verdict::TooLong`]); common servers write 100 to 400 bytes.
pub const HEAD_MAX: u32 = 1024;

/// What the bytes of a message say about its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A final response (status 200 to 599) whose head is complete; the status line
    /// (with its CRLF) ends `status_line_end` bytes into the message.
    Final { status_line_end: u32 },
    /// A complete interim response (100 to 199, but 101): no header goes into it, and
    /// the final response that follows may get one.
    Interim,
    /// A complete `101 Switching Protocols` head: the connection speaks another protocol
    /// from here on.
    Switching,
    /// The message ended before the head did.
    Incomplete,
    /// The head did not end within [`HEAD_MAX`] bytes.
    TooLong,
    /// Not a response head by the grammar.
    Unusual,
}

// Parser states: where in the head the next byte goes.
const VERSION: u8 = 0; // within `HTTP/1.` (`matched` bytes of it so far)
const MINOR: u8 = 1; // the version's minor digit
const VERSION_SP: u8 = 2; // the SP after the version
const CODE: u8 = 3; // the status code's digits (`matched` so far, `kind` what they say)
const CODE_END: u8 = 4; // SP before the reason phrase, or CR
const REASON: u8 = 5; // the reason phrase
const STATUS_LF: u8 = 6; // the LF of the status line
const LINE_START: u8 = 7; // a field name's first byte, or CR of the empty line
const NAME: u8 = 8; // a field name, up to its colon
const VALUE: u8 = 9; // a field value, up to CR
const FIELD_LF: u8 = 10; // the LF of a field line
const END_LF: u8 = 11; // the LF of the empty line that ends the head

// What the status code's digits so far say. The code is not accumulated as a number: the
// kernel's verifier would follow each of its values as a state of its own.
const FINAL: u8 = 1; // 2xx to 5xx
const ONE: u8 = 2; // `1`
const ONE_ZERO: u8 = 3; // `10`
const INTERIM: u8 = 4; // 1xx but 101
const SWITCHING: u8 = 5; // `101`

/// An HTTP/1.x response head parser, fed one byte at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadParser {
    state: u8,
    matched: u8,
    kind: u8,
    status_line_end: u32,
}

impl HeadParser {
    pub const fn new() -> Self {
        Self {
            state: VERSION,
            matched: 0,
            kind: 0,
            status_line_end: 0,
        }
    }

    /// Takes byte `at` of the message (the bytes in order, from 0); `Some` once the head is
    /// judged (the bytes after it are not looked at). The caller feeds at most
    /// [`HEAD_MAX`] bytes, then asks [`unfinished`]. The parser keeps no count of its own:
    /// the kernel's verifier would follow each value of a counter carried from byte to
    /// byte as a state of its own, where the offset the kernel's loop passes in is one
    /// unknown number.
    pub fn push(&mut self, at: u32, byte: u8) -> Option<Verdict> {
        let next = match self.state {
            VERSION => {
                // `HTTP/1.`, spelled out: no table for the kernel side to index.
                let expected = match self.matched {
                    0 => b'H',
                    1 | 2 => b'T',
                    3 => b'P',
                    4 => b'/',
                    5 => b'1',
                    _ => b'.',
                };
                if byte != expected {
                    return Some(Verdict::Unusual);
                }
                self.matched += 1;
                if self.matched == 7 {
                    MINOR
                } else {
                    VERSION
                }
            }
            MINOR if byte == b'0' || byte == b'1' => VERSION_SP,
            VERSION_SP if byte == b' ' => {
                self.matched = 0;
                CODE
            }
            CODE if byte.is_ascii_digit() => {
                self.kind = match (self.matched, self.kind, byte) {
                    (0, _, b'1') => ONE,
                    (0, _, b'2'..=b'5') => FINAL,
                    // 000 to 099 and 600 to 999.
                    (0, _, _) => return Some(Verdict::Unusual),
                    (1, ONE, b'0') => ONE_ZERO,
                    (2, ONE_ZERO, b'1') => SWITCHING,
                    (1, ONE, _) | (2, ONE_ZERO, _) => INTERIM,
                    (_, kind, _) => kind,
                };
                self.matched += 1;
                if self.matched == 3 {
                    CODE_END
                } else {
                    CODE
                }
            }
            CODE_END if byte == b' ' => REASON,
            CODE_END | REASON if byte == b'\r' => STATUS_LF,
            REASON if is_field_char(byte) => REASON,
            STATUS_LF if byte == b'\n' => {
                self.status_line_end = at + 1;
                LINE_START
            }
            LINE_START if byte == b'\r' => END_LF,
            LINE_START | NAME if is_token_char(byte) => NAME,
            NAME if byte == b':' => VALUE,
            VALUE if byte == b'\r' => FIELD_LF,
            VALUE if is_field_char(byte) => VALUE,
            FIELD_LF if byte == b'\n' => LINE_START,
            END_LF if byte == b'\n' => return Some(self.complete()),
            _ => return Some(Verdict::Unusual),
        };
        self.state = next;
        None
    }

    fn complete(&self) -> Verdict {
        match self.kind {
            SWITCHING => Verdict::Switching,
            FINAL => Verdict::Final {
                status_line_end: self.status_line_end,
            },
            _ => Verdict::Interim,
        }
    }
}

/// What a message of `size` bytes holds when its first `HEAD_MAX` (or all) bytes ended
/// before the head did.
pub const fn unfinished(size: u32) -> Verdict {
    if size > HEAD_MAX {
        Verdict::TooLong
    } else {
        Verdict::Incomplete
    }
}

/// Judges the head at the start of `message` (the host's way in; the kernel's feeds the
/// same parser from packet memory).
pub fn judge(message: &[u8]) -> Verdict {
    let mut parser = HeadParser::new();
    for (at, &byte) in (0..HEAD_MAX).zip(message) {
        if let Some(verdict) = parser.push(at, byte) {
            return verdict;
        }
    }
    unfinished(u32::try_from(message.len()).unwrap_or(u32::MAX))
}

/// `tchar` (RFC 9110 section 5.6.2): the bytes of a field name.
const fn tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
        || matches!(
            byte,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// `VCHAR / obs-text / SP / HTAB` (RFC 9110 section 5.5): the bytes of a field value and
/// of a reason phrase. OWS is made of them too.
const fn field_char(byte: u8) -> bool {
    byte == b' ' || byte == b'\t' || (byte >= 0x21 && byte != 0x7f)
}

/// A class per byte, looked up rather than computed: the kernel's verifier would follow
/// each comparison of the computation as a path of its own, for every byte.
const TOKEN: u8 = 1;
const FIELD: u8 = 2;
const CLASSES: [u8; 256] = {
    let mut classes = [0; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        classes[byte] =
            (if tchar(b) { TOKEN } else { 0 }) | (if field_char(b) { FIELD } else { 0 });
        byte += 1;
    }
    classes
};

fn is_token_char(byte: u8) -> bool {
    CLASSES[byte as usize] & TOKEN != 0
}

fn is_field_char(byte: u8) -> bool {
    CLASSES[byte as usize] & FIELD != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_head_is_judged_with_the_end_of_its_status_line() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            judge(head),
            Verdict::Final {
                status_line_end: 17
            }
        );
        assert_eq!(
            judge(b"HTTP/1.0 404\r\n\r\n"),
            Verdict::Final {
                status_line_end: 14
            }
        );
        assert_eq!(
            judge(b"HTTP/1.1 204 \r\nX:\r\n\r\n"),
            Verdict::Final {
                status_line_end: 15
            }
        );
    }

    #[test]
    fn interim_and_switching_heads_are_told_apart() {
        assert_eq!(judge(b"HTTP/1.1 100 Continue\r\n\r\n"), Verdict::Interim);
        assert_eq!(
            judge(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"),
            Verdict::Interim
        );
        assert_eq!(
            judge(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
            Verdict::Switching
        );
    }

    #[test]
    fn anything_off_the_grammar_is_unusual() {
        for message in [
            &b"HTTP/1.1 200 OK\nContent-Length: 14\n\nline1\r\nline2\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: no name\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX : space before colon\r\n\r\n",
            b"http/1.1 200 OK\r\n\r\n",
            b"HTTP/1.2 200 OK\r\n\r\n",
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 099 Odd\r\n\r\n",
            b"HTTP/1.1 600 Odd\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 O\x7fK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\r\n\r\n",
            b"\x82\x03abc",
            b"\x16\x03\x01\x00\x05hello",
            b"+OK\r\n",
        ] {
            assert_eq!(judge(message), Verdict::Unusual, "{message:?}");
        }
    }

    #[test]
    fn a_head_the_message_does_not_hold_whole_is_incomplete_or_too_long() {
        assert_eq!(judge(b"HTTP/1.1 200 O"), Verdict::Incomplete);
        assert_eq!(
            judge(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"),
            Verdict::Incomplete
        );
        assert_eq!(judge(b""), Verdict::Incomplete);
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.resize(HEAD_MAX as usize, b'a');
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(judge(&long), Verdict::TooLong);
        let mut fits = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        fits.resize(HEAD_MAX as usize - 4, b'a');
        fits.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            judge(&fits),
            Verdict::Final {
                status_line_end: 17
            }
        );
    }
}
