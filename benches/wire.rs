//! Frame costs on the hot path: verify + read a Route in place, and encode
//! a Route and a Deliver, for a chat-sized and a 4 KiB payload.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use imrouter::wire::{
    check, Check, DeliverFrame, Encoder, Request, RequestLimits, RouteFrame, Verifier,
};

const LIMITS: RequestLimits = RequestLimits {
    fanout_max: 100_000,
};

const PAYLOADS: [usize; 2] = [64, 4096];

fn route_frame(encoder: &mut Encoder, payload: &[u8]) -> Vec<u8> {
    encoder
        .route(&RouteFrame {
            message_id: 123_456,
            from_user: "user-00000000001",
            from_device: "phone",
            to_user: "user-00000000002",
            to_device: None,
            flags: 1,
            payload,
        })
        .to_vec()
}

fn verify_and_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_verify_decode");
    let verifier = Verifier::new(64 * 1024);
    for size in PAYLOADS {
        let frame = route_frame(&mut Encoder::new(), &vec![7u8; size]);
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(size), &frame, |b, frame| {
            b.iter(|| {
                let Check::Complete(len) = check(black_box(frame), 64 * 1024) else {
                    unreachable!()
                };
                let frame = verifier.verify(&frame[..len]).unwrap();
                let Ok(Request::Route(message)) = Request::parse(frame, &LIMITS) else {
                    unreachable!()
                };
                black_box((message.to_user.len(), message.payload.len()))
            })
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let mut encoder = Encoder::new();
    for size in PAYLOADS {
        let payload = vec![7u8; size];
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("route", size), &payload, |b, payload| {
            b.iter(|| black_box(route_frame(&mut encoder, black_box(payload)).len()))
        });
        group.bench_with_input(BenchmarkId::new("deliver", size), &payload, |b, payload| {
            b.iter(|| {
                let frame = encoder.deliver(&DeliverFrame {
                    message_id: 123_456,
                    from_user: "user-00000000001",
                    from_device: "phone",
                    to_user: "user-00000000002",
                    devices: &[b"phone"],
                    flags: 0,
                    payload: black_box(payload),
                    origin: 0x1234_5678,
                });
                black_box(frame.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, verify_and_decode, encode);
criterion_main!(benches);
