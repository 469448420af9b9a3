//! # tern-codec: the MQTT 3.1.1 and 5.0 wire format
//!
//! Pure packet encoding and decoding, with no I/O, on `bytes`:
//!
//! - [`header`]: the fixed header and framing (`check_frame` finds a frame's end, refuses an
//!   oversized one before its body is read, and says how many bytes are missing).
//! - [`packet`]: every control packet, [`decode_frame`] / [`decode`] and [`Packet::encode`],
//!   with [`Packet::encoded_len`] giving the exact size before encoding.
//! - [`properties`]: MQTT 5 properties and the rules on where and how often they appear.
//! - [`reason`]: MQTT 5 reason codes and their 3.1.1 equivalents.
//! - [`topic`]: topic name and filter rules, shared subscriptions, and filter matching.
//! - [`error`]: typed errors naming the rule a frame broke, mapped to reason codes.
//!
//! Decoding is zero-copy: a complete frame is split off the read buffer as `Bytes`, and the
//! strings and payload of the packet are slices of it.
//!
//! ```
//! use bytes::BytesMut;
//! use tern_codec::{decode, Packet, Protocol};
//!
//! let mut buf = BytesMut::from(&[0xC0u8, 0x00][..]); // PINGREQ
//! let packet = decode(&mut buf, Protocol::V311, 1024).unwrap();
//! assert_eq!(packet, Some(Packet::PingReq));
//! ```

pub mod error;
pub mod header;
pub mod packet;
mod primitives;
pub mod properties;
pub mod reason;
pub mod topic;

pub use bytestring::ByteString;
pub use error::{DecodeError, EncodeError, TopicError};
pub use header::{check_frame, FixedHeader, FrameStatus};
pub use packet::{
    decode, decode_frame, Auth, ConnAck, Connect, Disconnect, Packet, Protocol, PubResponse,
    Publish, PublishRef, QoS, RetainHandling, SubAck, Subscribe, SubscriptionOptions, UnsubAck,
    Unsubscribe, Will,
};
pub use primitives::{var_int_len, MAX_VAR_INT};
pub use properties::{Properties, PropertyContext, PropertyFields};
pub use reason::ReasonCode;
