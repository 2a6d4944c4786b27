//! Encode + decode cost of a `Request::Reverse` frame against one memcpy of
//! the payload, and against the array-of-integers layout (`Vec<u8>` without
//! `serde_bytes`, as AOSP rialto's messages have it).
//!
//! `cargo bench -p svmc-proto` prints criterion's figures, then a summary table:
//!
//! - `ours`: what a host `rpc::Client` does per request, sender and
//!   receiver together. Encode: `ServiceVm::encode_request`
//!   (`svmc::encode_request_parts`) writes the frame's head bytes into
//!   a reused buffer and the client copies the payload after them (it
//!   sends the frame whole: see `gather`). Decode:
//!   `ServiceVm::decode_request` (`svmc::decode_request`) of that
//!   frame's body into a fresh owned `Request` (payload `Vec` allocated by
//!   the decoder). Two payload copies, so 2.0x `to_vec` is its floor at
//!   1 MiB.
//! - `gather`: the same, without the copy into the buffer: the head bytes
//!   and the payload borrowed, as a sender that writes both with one
//!   vectored write has them (`framed::send_frame_parts`). One payload
//!   copy. `rpc::Client` does not send this way: end to end against the
//!   firmware it measured about 2x slower (BENCHMARKS.md).
//! - `serde`: the generic path, `envelope::encode_request_into` +
//!   `envelope::decode::<Request>` (serde + ciborium; what other protocols
//!   use). Two payload copies.
//! - `in place`: the `gather` encode + `svmc::reverse_payload` on the
//!   received body, the borrowed decode with which the guest answers a
//!   `Reverse` in its receive buffer (no payload copy at all).
//! - `to_vec`: `payload.to_vec()`, one allocation + one copy. This is the
//!   **baseline** of the `x/to_vec` ratios: decoding has to produce an
//!   owned `Vec` too.
//! - `copy`: `copy_from_slice` into a preallocated buffer, a pure copy.
//! - `array`: the generic path with `Reverse(Vec<u8>)` as an array of
//!   integers.
//! - `ciborium-stream`: the generic encoder + ciborium's own `from_reader`,
//!   which is what `svmc-comm` decoded with before its slice deserializer
//!   (src/de.rs).
//!
//! `maps`: decoding the bodies made of maps (struct fields): the `Info`
//! `RESPONSE` (a map of 6 entries holding one of 3), a `HELLO`
//! (`Hello::decode_checked`, three passes over 3 entries) and an `ERROR`
//! (4 entries). The `Reverse` frames above hold no map but the enum's.
//!
//! Targets: `ours` within 2.0x `to_vec` at 1 MiB and 4x at
//! 4 KiB; wire overhead at most 16 bytes per message.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use svmc::{GuestInfo, HeapStats, Request, Response, ServiceVm};
use svmc_comm::Protocol;
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::frame::{self, HEADER_LEN};
use svmc_comm::{Hello, frame::ProtocolError, frame::ProtocolErrorCode};

const SIZES: [(usize, &str); 3] = [(16, "16 B"), (4096, "4 KiB"), (1 << 20, "1 MiB")];
const MAX: u32 = frame::DEFAULT_MAX_BODY * 8;

/// rialto's layout: the payload as an array of integers.
#[derive(Serialize, Deserialize)]
enum ArrayRequest {
    #[serde(rename = "rev")]
    Reverse(Vec<u8>),
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

/// The frame `gather` sends, and its body as the receiver holds it.
struct Wire {
    head: Vec<u8>,
    received: Vec<u8>,
}

impl Wire {
    fn new(req: &Request) -> Self {
        let mut head = Vec::new();
        let tail = ServiceVm::encode_request(RequestId(7), req, MAX, &mut head).unwrap();
        let received = [&head[..], tail].concat();
        let mut generic = Vec::new();
        envelope::encode_request_into(RequestId(7), req, MAX, &mut generic).unwrap();
        assert_eq!(received, generic, "the parts are the generic encoding");
        Self { head, received }
    }
}

/// Encode as head + borrowed payload (a gathering sender), decode the
/// received frame into an owned `Request`.
fn gather(w: &mut Wire, req: &Request) -> Request {
    w.head.clear();
    let tail = ServiceVm::encode_request(RequestId(7), req, MAX, &mut w.head).unwrap();
    black_box((&w.head, tail));
    let (id, r) = ServiceVm::decode_request(&w.received[HEADER_LEN..]);
    assert_eq!(id, Some(RequestId(7)));
    r.unwrap()
}

/// The same frame written whole into one buffer, as `rpc::Client` sends
/// it, and decoded from it.
fn ours(buf: &mut Vec<u8>, req: &Request) -> Request {
    buf.clear();
    let tail = ServiceVm::encode_request(RequestId(7), req, MAX, buf).unwrap();
    buf.extend_from_slice(tail);
    let (id, r) = ServiceVm::decode_request(&buf[HEADER_LEN..]);
    assert_eq!(id, Some(RequestId(7)));
    r.unwrap()
}

/// The generic serde path, both ways.
fn serde_path(buf: &mut Vec<u8>, req: &Request) -> Request {
    buf.clear();
    envelope::encode_request_into(RequestId(7), req, MAX, buf).unwrap();
    let (id, r) = envelope::decode::<Request>(&buf[HEADER_LEN..]);
    assert_eq!(id, Some(RequestId(7)));
    r.unwrap()
}

/// Encode as `gather`, then find the payload where it lies in the received
/// body (the guest's decode).
fn in_place(w: &mut Wire, req: &Request) -> usize {
    w.head.clear();
    let tail = ServiceVm::encode_request(RequestId(7), req, MAX, &mut w.head).unwrap();
    black_box((&w.head, tail));
    let (_, payload) = svmc::reverse_payload(&w.received[HEADER_LEN..]).unwrap();
    payload.len()
}

fn array(buf: &mut Vec<u8>, req: &ArrayRequest) -> ArrayRequest {
    buf.clear();
    envelope::encode_request_into(RequestId(7), req, MAX, buf).unwrap();
    envelope::decode::<ArrayRequest>(&buf[HEADER_LEN..])
        .1
        .unwrap()
}

fn ciborium_stream(buf: &mut Vec<u8>, req: &Request) -> Request {
    buf.clear();
    envelope::encode_request_into(RequestId(7), req, MAX, buf).unwrap();
    let (_, r): (RequestId, Request) = ciborium::from_reader(&buf[HEADER_LEN..]).unwrap();
    r
}

/// The bodies of the `maps` figures: an `Info` response, a `HELLO` and an
/// `ERROR`.
fn map_bodies() -> [Vec<u8>; 3] {
    let info = Response::Info(GuestInfo {
        firmware: "svmc-guest".into(),
        firmware_version: "0.1.0".into(),
        protocol_version: 2,
        arch: "x86_64".into(),
        max_body: frame::DEFAULT_MAX_BODY,
        heap: Some(HeapStats {
            size: 1 << 20,
            used: 4096,
            peak: 8192,
        }),
    });
    let mut r = Vec::new();
    envelope::encode_response_into(RequestId(2), &info, MAX, &mut r).unwrap();
    let h = frame::encode(
        frame::FrameKind::Hello,
        &Hello::new::<ServiceVm>(frame::DEFAULT_MAX_BODY),
        MAX,
    )
    .unwrap();
    let e = ProtocolError::new(
        ProtocolErrorCode::UnknownVariant,
        false,
        "unknown variant `sum`",
    )
    .with_id(Some(RequestId(6)));
    let e = frame::encode(frame::FrameKind::Error, &e, MAX).unwrap();
    [r, h, e].map(|f| f[HEADER_LEN..].to_vec())
}

fn decode_maps(bodies: &[Vec<u8>; 3]) {
    let (id, r) = envelope::decode::<Response>(&bodies[0]);
    black_box((id, r.unwrap()));
    black_box(Hello::decode_checked::<ServiceVm>(&bodies[1]).unwrap());
    black_box(frame::decode_body::<ProtocolError>(&bodies[2]).unwrap());
}

fn criterion_benches(c: &mut Criterion) {
    let bodies = map_bodies();
    let mut g = c.benchmark_group("maps");
    g.bench_function("info+hello+error", |b| {
        b.iter(|| decode_maps(black_box(&bodies)))
    });
    g.finish();
    for (n, label) in SIZES {
        let data = payload(n);
        let req = Request::Reverse(data.clone());
        let areq = ArrayRequest::Reverse(data.clone());
        let mut wire = Wire::new(&req);
        let mut buf = Vec::new();
        let mut dst = vec![0u8; n];
        let mut g = c.benchmark_group(format!("reverse {label}"));
        g.throughput(Throughput::Bytes(n as u64));
        if n >= 1 << 20 {
            g.sample_size(10);
        }
        g.bench_function(BenchmarkId::new("ours", n), |b| {
            b.iter(|| ours(&mut buf, black_box(&req)))
        });
        g.bench_function(BenchmarkId::new("gather", n), |b| {
            b.iter(|| gather(&mut wire, black_box(&req)))
        });
        g.bench_function(BenchmarkId::new("serde", n), |b| {
            b.iter(|| serde_path(&mut buf, black_box(&req)))
        });
        g.bench_function(BenchmarkId::new("in_place", n), |b| {
            b.iter(|| in_place(&mut wire, black_box(&req)))
        });
        g.bench_function(BenchmarkId::new("to_vec", n), |b| {
            b.iter(|| black_box(&data).to_vec())
        });
        g.bench_function(BenchmarkId::new("copy", n), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&data)))
        });
        g.bench_function(BenchmarkId::new("array", n), |b| {
            b.iter(|| array(&mut buf, black_box(&areq)))
        });
        g.bench_function(BenchmarkId::new("ciborium-stream", n), |b| {
            b.iter(|| ciborium_stream(&mut buf, black_box(&req)))
        });
        g.finish();
    }
}

/// Best per-iteration time over a few batches of about `budget` in total.
fn time(budget: Duration, mut f: impl FnMut()) -> Duration {
    f();
    let start = Instant::now();
    f();
    let one = start.elapsed().max(Duration::from_nanos(1));
    let per_batch = (budget.as_nanos() / 8 / one.as_nanos()).clamp(1, 1 << 20) as u32;
    let mut best = Duration::MAX;
    for _ in 0..8 {
        let t = Instant::now();
        for _ in 0..per_batch {
            f();
        }
        best = best.min(t.elapsed() / per_batch);
    }
    best
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos() as f64;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

fn summary() {
    let budget = Duration::from_millis(200);
    println!();
    println!("Summary (best of 8 batches; baseline memcpy = to_vec, a fresh Vec)");
    println!(
        "{:>6} | {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} | {:>11} {:>11} {:>11} {:>11} {:>10} | {:>8} {:>8}",
        "size",
        "ours",
        "gather",
        "serde",
        "in place",
        "to_vec",
        "copy",
        "array",
        "cib-stream",
        "ours/to_vec",
        "gath/to_vec",
        "serde/to_vc",
        "inpl/to_vec",
        "array/serde",
        "overhead",
        "array ovh"
    );
    for (n, label) in SIZES {
        let data = payload(n);
        let req = Request::Reverse(data.clone());
        let areq = ArrayRequest::Reverse(data.clone());
        let mut wire = Wire::new(&req);
        let mut buf = Vec::new();
        let mut dst = vec![0u8; n];
        let t_ours = time(budget, || {
            black_box(ours(&mut buf, black_box(&req)));
        });
        let t_one = time(budget, || {
            black_box(gather(&mut wire, black_box(&req)));
        });
        let t_serde = time(budget, || {
            black_box(serde_path(&mut buf, black_box(&req)));
        });
        let t_inpl = time(budget, || {
            black_box(in_place(&mut wire, black_box(&req)));
        });
        let t_vec = time(budget, || {
            black_box(black_box(&data).to_vec());
        });
        let t_copy = time(budget, || {
            dst.copy_from_slice(black_box(&data));
            black_box(&dst);
        });
        let t_array = time(budget, || {
            black_box(array(&mut buf, black_box(&areq)));
        });
        let t_stream = time(budget, || {
            black_box(ciborium_stream(&mut buf, black_box(&req)));
        });
        let ovh = wire.received.len() - n;
        let mut awire = Vec::new();
        envelope::encode_request_into(RequestId(7), &areq, MAX, &mut awire).unwrap();
        let aovh = awire.len() as i64 - n as i64;
        let r = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
        println!(
            "{label:>6} | {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} | {:>10.2}x {:>10.2}x {:>10.2}x {:>10.2}x {:>9.1}x | {:>6} B {:>6} B",
            fmt(t_ours),
            fmt(t_one),
            fmt(t_serde),
            fmt(t_inpl),
            fmt(t_vec),
            fmt(t_copy),
            fmt(t_array),
            fmt(t_stream),
            r(t_ours, t_vec),
            r(t_one, t_vec),
            r(t_serde, t_vec),
            r(t_inpl, t_vec),
            r(t_array, t_serde),
            ovh,
            aovh,
        );
    }
    let bodies = map_bodies();
    let t_maps = time(budget, || decode_maps(black_box(&bodies)));
    println!(
        "  maps | info response + hello (decode_checked) + error, decoded: {}",
        fmt(t_maps)
    );
    println!(
        "overhead = frame length - payload length (header 5 + [id] 2..6 + map 1 + \"rev\" 4 + bstr head 1..9)"
    );
    println!(
        "ours = ServiceVm::encode_request + the payload copied after the head (the frame rpc::Client sends) + ServiceVm::decode_request into an owned Request; gather = the same without that copy (head + borrowed payload)"
    );
    println!("targets: ours/to_vec <= 2.00x at 1 MiB, <= 4.00x at 4 KiB");
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .sample_size(20)
        .configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
