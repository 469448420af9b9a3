//! Fuzzes the decoder with arbitrary bytes, because a broker decodes whatever a peer sends:
//! `check_frame` and `decode` must never panic, hang or allocate without bound, and every
//! packet they accept must survive an encode/decode round trip unchanged (catching any
//! asymmetry between encoder and decoder, and `encoded_len` disagreeing with `encode`).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_codec::{check_frame, decode, Packet, Protocol};

/// The maximum packet size the fuzzed decoder enforces, so a frame cannot ask for more.
const MAX_PACKET_SIZE: usize = 64 * 1024;

fn round_trip(packet: &Packet, protocol: Protocol) {
    let expected = packet.encoded_len(protocol);
    let mut out = BytesMut::new();
    packet
        .encode(protocol, &mut out)
        .unwrap_or_else(|e| panic!("decoded {packet:?} but cannot encode it: {e:?}"));
    assert_eq!(
        out.len(),
        expected,
        "encoded_len disagrees with encode for {packet:?}"
    );
    let encoded = out.clone();
    let again = decode(&mut out, protocol, expected)
        .unwrap_or_else(|e| panic!("re-encoding of {packet:?} ({encoded:02x?}) fails: {e:?}"))
        .unwrap_or_else(|| panic!("re-encoding of {packet:?} ({encoded:02x?}) is incomplete"));
    assert_eq!(
        &again, packet,
        "round trip changed the packet ({encoded:02x?})"
    );
    assert!(out.is_empty(), "re-encoding has trailing bytes");
}

fuzz_target!(|data: &[u8]| {
    let _ = check_frame(data, MAX_PACKET_SIZE);
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut buf = BytesMut::from(data);
        // Each decoded packet consumes at least its 2-byte header, so this ends.
        while let Ok(Some(packet)) = decode(&mut buf, protocol, MAX_PACKET_SIZE) {
            round_trip(&packet, protocol);
        }
    }
});
