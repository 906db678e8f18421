//! Micro-benchmarks of the hot encoding paths: the control `Send` request
//! (what `peerctl send` streams) through the codec, and through the
//! length-prefixed framing over an in-memory pipe. `make bench` measures
//! the whole system; these isolate the codec and framing, so a change to
//! either (or a swap of bincode) shows up on its own.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use peerlink::codec;
use peerlink::control::{MAX_FRAME, Request};
use peerlink::frame;

fn send_request(size: usize, count: usize) -> Request {
    Request::Send {
        bodies: vec![vec![b'x'; size]; count],
        wait: false,
        to: Vec::new(),
    }
}

fn codec_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for (size, count) in [(64usize, 4096usize), (1024, 1024), (65536, 16)] {
        let req = send_request(size, count);
        let bytes = codec::encode(&req).expect("encode");
        g.throughput(Throughput::Elements(count as u64));
        g.bench_with_input(BenchmarkId::new("encode_send", size), &req, |b, r| {
            b.iter(|| codec::encode(black_box(r)).expect("encode"))
        });
        g.bench_with_input(BenchmarkId::new("decode_send", size), &bytes, |b, bytes| {
            b.iter(|| codec::decode::<Request>(black_box(bytes)).expect("decode"))
        });
    }
    g.finish();
}

fn framing_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("framing");
    for (size, count) in [(64usize, 4096usize), (65536, 16)] {
        let req = send_request(size, count);
        g.throughput(Throughput::Elements(count as u64));
        g.bench_with_input(BenchmarkId::new("send_recv", size), &req, |b, req| {
            b.iter(|| {
                rt.block_on(async {
                    let (a, z) = tokio::io::duplex(1 << 20);
                    let mut w = frame::writer(a, MAX_FRAME);
                    let mut r = frame::reader(z, MAX_FRAME);
                    let (sent, got) =
                        tokio::join!(frame::send(&mut w, req), frame::recv::<Request, _>(&mut r));
                    sent.expect("send");
                    got.expect("recv").expect("a frame")
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec_benches, framing_benches);
criterion_main!(benches);
