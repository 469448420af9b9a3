//! The spec's data representations (section 1.5): two- and four-byte integers, variable byte
//! integers, UTF-8 strings and binary data, as nom parsers over a frame and as writers.
//!
//! Parsers work on `&[u8]` slices of one complete frame; strings and binary data come back as
//! `Bytes` slices of that frame (`Bytes::slice_ref`), so decoding never copies a payload.

use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;
use nom::number::complete::{be_u16, be_u8};
use nom::IResult;

use crate::error::{DecodeError, EncodeError};

pub(crate) type Res<'a, T> = IResult<&'a [u8], T, DecodeError>;

/// The largest value a variable byte integer can hold (four bytes).
pub const MAX_VAR_INT: u32 = 268_435_455;

/// Fails the parse with a specific error (no backtracking: the frame is complete).
pub(crate) fn fail<T>(err: DecodeError) -> Result<T, nom::Err<DecodeError>> {
    Err(nom::Err::Failure(err))
}

/// Outcome of reading a variable byte integer from a buffer that may be incomplete.
pub(crate) enum VarInt {
    /// The value and how many bytes it took.
    Complete(u32, usize),
    /// The buffer ends inside the integer.
    Incomplete,
}

/// Reads a variable byte integer (spec 1.5.5) from the start of `buf`.
pub(crate) fn read_var_int(buf: &[u8]) -> Result<VarInt, DecodeError> {
    let mut value: u32 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == 4 {
            return Err(DecodeError::VarIntTooLong);
        }
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of zero after the first means a longer encoding than needed.
            if i > 0 && byte == 0 {
                return Err(DecodeError::VarIntNotMinimal);
            }
            return Ok(VarInt::Complete(value, i + 1));
        }
    }
    if buf.len() >= 4 {
        return Err(DecodeError::VarIntTooLong);
    }
    Ok(VarInt::Incomplete)
}

pub(crate) fn var_int(i: &[u8]) -> Res<'_, u32> {
    match read_var_int(i) {
        Ok(VarInt::Complete(v, n)) => Ok((&i[n..], v)),
        Ok(VarInt::Incomplete) => fail(DecodeError::Truncated),
        Err(e) => fail(e),
    }
}

/// Number of bytes a variable byte integer takes on the wire.
pub const fn var_int_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_var_int(buf: &mut BytesMut, value: usize) -> Result<(), EncodeError> {
    if value > MAX_VAR_INT as usize {
        return Err(EncodeError::PacketTooLarge(value));
    }
    let mut v = value;
    loop {
        let mut byte = (v % 128) as u8;
        v /= 128;
        if v > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if v == 0 {
            return Ok(());
        }
    }
}

/// Binary data: a two-byte length and that many bytes, as a zero-copy slice of `frame`.
pub(crate) fn binary<'a>(frame: &Bytes, i: &'a [u8]) -> Res<'a, Bytes> {
    let (i, len) = be_u16(i)?;
    let len = usize::from(len);
    if i.len() < len {
        return fail(DecodeError::Truncated);
    }
    let (data, rest) = i.split_at(len);
    Ok((rest, frame.slice_ref(data)))
}

/// A UTF-8 encoded string (spec 1.5.4): well-formed UTF-8 (so no surrogates) and no U+0000.
pub(crate) fn string<'a>(frame: &Bytes, i: &'a [u8]) -> Res<'a, ByteString> {
    let (rest, data) = binary(frame, i)?;
    match to_string(data) {
        Ok(s) => Ok((rest, s)),
        Err(e) => fail(e),
    }
}

pub(crate) fn to_string(data: Bytes) -> Result<ByteString, DecodeError> {
    let s = ByteString::try_from(data).map_err(|_| DecodeError::InvalidUtf8)?;
    if s.as_bytes().contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(s)
}

pub(crate) fn u8_field(i: &[u8]) -> Res<'_, u8> {
    be_u8(i)
}

pub(crate) fn u16_field(i: &[u8]) -> Res<'_, u16> {
    be_u16(i)
}

pub(crate) fn u32_field(i: &[u8]) -> Res<'_, u32> {
    nom::number::complete::be_u32(i)
}

/// Writes binary data with its two-byte length prefix.
pub(crate) fn put_binary(buf: &mut BytesMut, data: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len()).map_err(|_| EncodeError::FieldTooLong(data.len()))?;
    buf.put_u16(len);
    buf.put_slice(data);
    Ok(())
}

/// Wire size of a string or binary field with its length prefix.
pub(crate) const fn field_len(data: &[u8]) -> usize {
    2 + data.len()
}
