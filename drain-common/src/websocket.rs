//! Whether a server's write is exactly one or more whole websocket frames (RFC 6455
//! section 5.2) as servers send them, read one byte at a time like [`crate::http1`].
//!
//! The shape alone proves nothing (a binary protocol's message can have it: `\x82\x03abc`
//! is a TLV record as well as a frame), so the program appends a close frame only where
//! the drain was told the port carries websockets (`--websocket-close`), and only to a
//! candidate write ([`crate::boundary`]).

/// The longest write judged: a heartbeat or a short message, not a stream.
pub const MESSAGE_MAX: u32 = 256;

/// The most frames one write may hold.
pub const MAX_FRAMES: u32 = 16;

/// A parser of server frames, fed one byte at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FramesParser {
    /// Bytes left of the current frame's payload, or the header byte expected next.
    payload_left: u32,
    /// 0: the first header byte is next; 1: the second; 2: payload.
    part: u8,
    frames: u32,
}

impl FramesParser {
    pub const fn new() -> Self {
        Self {
            payload_left: 0,
            part: 0,
            frames: 0,
        }
    }

    /// Takes the next byte; `false` once the bytes cannot be whole server frames. The
    /// caller feeds at most [`MESSAGE_MAX`] bytes (the parser keeps no count the kernel's
    /// verifier would have to follow byte by byte).
    pub fn push(&mut self, byte: u8) -> bool {
        match self.part {
            0 => {
                let opcode = byte & 0x0f;
                let control = opcode == 0x9 || opcode == 0xa;
                // Final, no reserved bit but RSV1 (compression) on data frames, a data
                // or ping/pong opcode.
                if byte & 0x80 == 0
                    || byte & 0x30 != 0
                    || !(opcode == 0x1 || opcode == 0x2 || control)
                    || (control && byte & 0x40 != 0)
                    || self.frames == MAX_FRAMES
                {
                    return false;
                }
                self.part = 1;
                true
            }
            1 => {
                // Unmasked, as servers send; a 16- or 64-bit length (126, 127) is a frame
                // longer than the write judged.
                if byte & 0x80 != 0 || byte & 0x7f > 125 {
                    return false;
                }
                self.frames += 1;
                self.payload_left = u32::from(byte & 0x7f);
                self.part = if self.payload_left == 0 { 0 } else { 2 };
                true
            }
            _ => {
                self.payload_left -= 1;
                if self.payload_left == 0 {
                    self.part = 0;
                }
                true
            }
        }
    }

    /// Whether the bytes pushed so far end exactly after one or more whole frames.
    pub const fn whole(&self) -> bool {
        self.part == 0 && self.frames > 0
    }
}

/// Whether `message` is one or more whole server frames (the host's way in).
pub fn whole_frames(message: &[u8]) -> bool {
    let mut parser = FramesParser::new();
    message.len() <= MESSAGE_MAX as usize
        && message.iter().all(|&byte| parser.push(byte))
        && parser.whole()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_server_frames_are_recognised() {
        assert!(whole_frames(b"\x81\x04pong"));
        assert!(whole_frames(b"\x81\x04pong\x8a\x00"));
        assert!(whole_frames(b"\xc1\x02ab"), "compressed text");
        assert!(
            whole_frames(b"\x82\x03abc"),
            "the shape a TLV record shares"
        );
    }

    #[test]
    fn anything_else_is_not() {
        for message in [
            &b""[..],
            b"\x81\x84abcdpong",
            b"\x81\x05pong",
            b"\x81\x03pong",
            b"\x01\x04pong",
            b"\x88\x02\x03\xe8",
            b"\xca\x00",
            b"\x81\x7e\x00\x10",
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"\x16\x03\x01\x00\x05hello",
        ] {
            assert!(!whole_frames(message), "{message:?}");
        }
        let many: [u8; 34] = core::array::from_fn(|i| if i % 2 == 0 { 0x89 } else { 0 });
        assert!(!whole_frames(&many), "more than MAX_FRAMES");
    }
}
