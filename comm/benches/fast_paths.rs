//! Every direct (serde-free) codec path against the generic serde path it
//! stands in for, on the same bytes: what each fast path saves, so that a
//! fast path is kept only where it pays. The figures are written next to
//! each fast path in the code.
//!
//! `cargo bench -p svmc-comm --bench fast_paths -- --warm-up-time 1 --measurement-time 2`
//!
//! - `decode request`: `svmc::decode_request` against
//!   `envelope::decode::<Request>` for `[7, "info"]` and `[7, {"rev":
//!   bytes}]` of 16 B and 4 KiB.
//! - `decode response`: `svmc::decode_response` against
//!   `envelope::decode::<Response>` for `[7, "off"]`.
//! - `encode request`: `svmc::encode_request_parts` (head only, the
//!   payload returned) against `envelope::encode_request_into` for a
//!   `Reverse` of 4 KiB.
//! - `request meta`: `ext::split_request_meta` against
//!   `ext::split_meta::<RequestMeta>` for `[7, {"deadline_ms": 250},
//!   "info"]`, and `ext::insert_request_meta` against `ext::insert_meta`.
//! - `response meta`: `ext::insert_response_meta` against
//!   `ext::insert_meta` for timings alone.

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use svmc::{Request, Response};
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::ext::{self, RequestMeta, ResponseMeta};
use svmc_comm::frame::HEADER_LEN;

const MAX: u32 = 1 << 24;

fn request_body(r: &Request) -> Vec<u8> {
    let mut f = Vec::new();
    envelope::encode_request_into(RequestId(7), r, MAX, &mut f).unwrap();
    f.split_off(HEADER_LEN)
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode request");
    for (name, r) in [
        ("info", Request::Info),
        ("rev 16 B", Request::Reverse(vec![5; 16])),
        ("rev 4 KiB", Request::Reverse(vec![5; 4096])),
    ] {
        let body = request_body(&r);
        assert_eq!(svmc::decode_request(&body).1, Ok(r.clone()));
        g.bench_function(format!("{name}/fast"), |b| {
            b.iter(|| svmc::decode_request(black_box(&body)))
        });
        g.bench_function(format!("{name}/serde"), |b| {
            b.iter(|| envelope::decode::<Request>(black_box(&body)))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("decode response");
    let mut f = Vec::new();
    envelope::encode_response_into(RequestId(7), &Response::PowerOff, MAX, &mut f).unwrap();
    let body = f.split_off(HEADER_LEN);
    g.bench_function("off/fast", |b| {
        b.iter(|| svmc::decode_response(black_box(&body)))
    });
    g.bench_function("off/serde", |b| {
        b.iter(|| envelope::decode::<Response>(black_box(&body)))
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode request");
    let r = Request::Reverse(vec![5; 4096]);
    let mut out = Vec::with_capacity(8192);
    g.bench_function("rev 4 KiB/fast", |b| {
        b.iter(|| {
            out.clear();
            let tail = svmc::encode_request_parts(RequestId(7), black_box(&r), MAX, &mut out);
            black_box(tail.unwrap().len())
        })
    });
    g.bench_function("rev 4 KiB/serde", |b| {
        b.iter(|| {
            out.clear();
            envelope::encode_request_into(RequestId(7), black_box(&r), MAX, &mut out).unwrap();
        })
    });
    g.finish();
}

fn meta(c: &mut Criterion) {
    let deadline = RequestMeta {
        deadline_ms: Some(250),
        ..Default::default()
    };
    let mut frame = Vec::new();
    envelope::encode_request_into(RequestId(7), &Request::Info, MAX, &mut frame).unwrap();
    let plain = frame.clone();
    ext::insert_meta(&mut frame, 0, 0, &deadline, MAX).unwrap();
    let mut g = c.benchmark_group("request meta");
    let mut body = frame[HEADER_LEN..].to_vec();
    g.bench_function("split/fast", |b| {
        b.iter(|| {
            body.copy_from_slice(&frame[HEADER_LEN..]);
            black_box(ext::split_request_meta(black_box(&mut body)).is_ok())
        })
    });
    g.bench_function("split/serde", |b| {
        b.iter(|| {
            body.copy_from_slice(&frame[HEADER_LEN..]);
            black_box(ext::split_meta::<RequestMeta>(black_box(&mut body)).is_ok())
        })
    });
    let mut out = Vec::with_capacity(64);
    g.bench_function("insert/fast", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(&plain);
            ext::insert_request_meta(&mut out, 0, 0, black_box(&deadline), MAX).unwrap();
        })
    });
    g.bench_function("insert/serde", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(&plain);
            ext::insert_meta(&mut out, 0, 0, black_box(&deadline), MAX).unwrap();
        })
    });
    g.finish();
    let timings = ResponseMeta {
        queued_us: Some(12),
        handled_us: Some(3456),
        stats: None,
    };
    let mut g = c.benchmark_group("response meta");
    g.bench_function("insert/fast", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(&plain);
            ext::insert_response_meta(&mut out, 0, 0, black_box(&timings), MAX).unwrap();
        })
    });
    g.bench_function("insert/serde", |b| {
        b.iter(|| {
            out.clear();
            out.extend_from_slice(&plain);
            ext::insert_meta(&mut out, 0, 0, black_box(&timings), MAX).unwrap();
        })
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .sample_size(20)
        .configure_from_args();
    decode(&mut c);
    encode(&mut c);
    meta(&mut c);
    c.final_summary();
}
