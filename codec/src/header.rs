//! The fixed header (spec 2.1) and framing: finding where one packet ends in a byte stream.
//!
//! `check_frame` looks only at the first two to five bytes: it validates the packet type and
//! its flags, reads the remaining length, and refuses a frame over the maximum packet size
//! before its body is buffered. It never copies; on a partial buffer it says how many more
//! bytes are needed at least.

use crate::error::DecodeError;
use crate::primitives::{read_var_int, VarInt};

/// Packet type numbers (spec 2.1.2).
pub mod packet_type {
    pub const CONNECT: u8 = 1;
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBSCRIBE: u8 = 8;
    pub const SUBACK: u8 = 9;
    pub const UNSUBSCRIBE: u8 = 10;
    pub const UNSUBACK: u8 = 11;
    pub const PINGREQ: u8 = 12;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
    pub const AUTH: u8 = 15;
}

/// A parsed fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    /// First byte: packet type in the high nibble, flags in the low one.
    pub first_byte: u8,
    /// Length of the variable header and payload.
    pub remaining_len: usize,
    /// Length of the fixed header itself (2 to 5 bytes).
    pub header_len: usize,
}

impl FixedHeader {
    pub fn packet_type(&self) -> u8 {
        self.first_byte >> 4
    }

    pub fn flags(&self) -> u8 {
        self.first_byte & 0x0F
    }

    /// Length of the whole frame: fixed header plus remaining length.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// What `check_frame` found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameStatus {
    /// At least `needed` more bytes must arrive before the frame is complete.
    Incomplete { needed: usize },
    /// A complete frame of `header.frame_len()` bytes is at the start of the buffer.
    Complete(FixedHeader),
}

/// Checks the first byte of a fixed header: a known packet type and the flags it must carry
/// (spec 2.1.3). PUBLISH flags are checked for QoS 3 and for DUP with QoS 0.
pub fn check_first_byte(byte: u8) -> Result<(), DecodeError> {
    let (kind, flags) = (byte >> 4, byte & 0x0F);
    let expected = match kind {
        packet_type::PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                return Err(DecodeError::InvalidQoS);
            }
            if qos == 0 && flags & 0b1000 != 0 {
                return Err(DecodeError::DupWithQoS0);
            }
            return Ok(());
        }
        packet_type::PUBREL | packet_type::SUBSCRIBE | packet_type::UNSUBSCRIBE => 0b0010,
        1..=15 => 0,
        _ => return Err(DecodeError::InvalidPacketType(kind)),
    };
    if flags != expected {
        return Err(DecodeError::InvalidHeaderFlags {
            packet_type: kind,
            flags,
        });
    }
    Ok(())
}

/// Looks for one frame at the start of `buf` without copying it.
///
/// `max_packet_size` bounds the whole frame (fixed header included, as MQTT 5's Maximum Packet
/// Size does); a larger frame is refused as soon as its fixed header is readable.
pub fn check_frame(buf: &[u8], max_packet_size: usize) -> Result<FrameStatus, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(FrameStatus::Incomplete { needed: 2 });
    };
    check_first_byte(first)?;
    let (remaining_len, len_bytes) = match read_var_int(&buf[1..])? {
        VarInt::Complete(v, n) => (v as usize, n),
        VarInt::Incomplete => return Ok(FrameStatus::Incomplete { needed: 1 }),
    };
    let header = FixedHeader {
        first_byte: first,
        remaining_len,
        header_len: 1 + len_bytes,
    };
    let size = header.frame_len();
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(FrameStatus::Incomplete {
            needed: size - buf.len(),
        });
    }
    Ok(FrameStatus::Complete(header))
}
