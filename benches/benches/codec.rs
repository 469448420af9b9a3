//! Codec throughput: decoding and encoding of the packets a broker handles most (PUBLISH with
//! small and 4 KiB payloads, CONNECT, SUBSCRIBE), in MQTT 3.1.1 and 5.0, so that changes to
//! the parsers or encoders show up as numbers. Throughput is in frame bytes.
//!
//! Decoding is measured the way the broker does it: `decode` on a `BytesMut` read buffer
//! holding one whole frame (a fresh copy per iteration, made and dropped outside the timing).
//! Encoding appends to a reused, pre-sized `BytesMut`, so it measures the encoder rather than
//! the allocator.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use tern_codec::{
    decode, ByteString, Connect, Packet, Properties, Protocol, Publish, QoS, RetainHandling,
    Subscribe, SubscriptionOptions,
};

const MAX_PACKET_SIZE: usize = 1024 * 1024;

fn publish(payload_len: usize, protocol: Protocol) -> Packet {
    let mut properties = Properties::default();
    if protocol == Protocol::V5 {
        properties.message_expiry_interval = Some(3600);
    }
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: ByteString::from_static("chat/room-42/messages"),
        packet_id: 17,
        properties,
        payload: Bytes::from(vec![0x5a; payload_len]),
    })
}

fn connect(protocol: Protocol) -> Packet {
    let mut properties = Properties::default();
    if protocol == Protocol::V5 {
        properties.session_expiry_interval = Some(86_400);
        properties.receive_maximum = Some(64);
    }
    Packet::Connect(Box::new(Connect {
        protocol,
        clean_start: false,
        keep_alive: 60,
        properties,
        client_id: ByteString::from_static("device-7f3a9c2e-0042"),
        will: None,
        username: Some(ByteString::from_static("alice@example.com")),
        password: Some(Bytes::from_static(b"s3cr3t-t0ken-abcdef")),
    }))
}

fn subscribe(protocol: Protocol) -> Packet {
    let options = |qos, retain_handling| SubscriptionOptions {
        qos,
        no_local: protocol == Protocol::V5,
        retain_as_published: false,
        retain_handling,
    };
    let (at_subscribe, if_new) = match protocol {
        Protocol::V311 => (
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendAtSubscribe,
        ),
        Protocol::V5 => (
            RetainHandling::SendAtSubscribe,
            RetainHandling::SendAtSubscribeIfNew,
        ),
    };
    Packet::Subscribe(Subscribe {
        packet_id: 9,
        properties: Properties::default(),
        filters: vec![
            (
                ByteString::from_static("chat/room-42/messages"),
                options(QoS::AtLeastOnce, at_subscribe),
            ),
            (
                ByteString::from_static("chat/room-42/presence/+"),
                options(QoS::AtMostOnce, if_new),
            ),
            (
                ByteString::from_static("users/alice/inbox/#"),
                options(QoS::ExactlyOnce, at_subscribe),
            ),
            (
                ByteString::from_static("$share/workers/jobs/+/pending"),
                // No Local on a shared subscription is a protocol error [MQTT-3.8.3-4].
                SubscriptionOptions {
                    no_local: false,
                    ..options(QoS::AtLeastOnce, at_subscribe)
                },
            ),
        ],
    })
}

/// (name, protocol, packet) for every benchmarked case.
fn cases() -> Vec<(&'static str, Protocol, Packet)> {
    let mut cases = Vec::new();
    for protocol in [Protocol::V311, Protocol::V5] {
        cases.push(("publish_64B", protocol, publish(64, protocol)));
        cases.push(("publish_4KiB", protocol, publish(4096, protocol)));
        cases.push(("connect", protocol, connect(protocol)));
        cases.push(("subscribe_4_filters", protocol, subscribe(protocol)));
    }
    cases
}

fn version(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::V311 => "v3.1.1",
        Protocol::V5 => "v5",
    }
}

fn encoded(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut buf = BytesMut::new();
    packet
        .encode(protocol, &mut buf)
        .expect("benchmark packet encodes");
    buf
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, protocol, packet) in cases() {
        let frame = encoded(&packet, protocol);
        // The benchmark is only meaningful if it decodes what it encoded.
        assert_eq!(
            decode(&mut frame.clone(), protocol, MAX_PACKET_SIZE).unwrap(),
            Some(packet)
        );
        group.throughput(Throughput::Bytes(frame.len() as u64));
        group.bench_function(BenchmarkId::new(name, version(protocol)), |b| {
            b.iter_batched(
                || frame.clone(),
                |mut buf| {
                    decode(&mut buf, black_box(protocol), MAX_PACKET_SIZE)
                        .unwrap()
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, protocol, packet) in cases() {
        let len = packet.encoded_len(protocol);
        let mut buf = BytesMut::with_capacity(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::new(name, version(protocol)), |b| {
            b.iter(|| {
                buf.clear();
                black_box(&packet)
                    .encode(black_box(protocol), &mut buf)
                    .unwrap();
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode, bench_encode);
criterion_main!(benches);
