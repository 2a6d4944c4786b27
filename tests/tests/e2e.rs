//! End-to-end suite: every case boots the real guest image under real QEMU
//! with the real vhost-device-vsock daemon and talks to it over hybrid vsock.
//! Run with `cargo xtask run-e2e [--arch A] [FILTER]`.

use std::process::Command;
use std::time::{Duration, Instant};

use svmc::{Request, Response, SERVICE_PORT, ServiceVm};
use svmc_comm::frame::{self, FrameKind, Header};
use tests::harness::{Case, Suite};
use tests::{Ctx, ensure};
use vsock_transport::rpc::Client;
use vsock_transport::{Connection, Error as TError};

mod concurrency;

type R = Result<(), String>;

fn pattern(len: usize) -> Vec<u8> {
    // Not a palindrome and not periodic with a small period.
    (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

/// Sends `payload` on `s` and checks the answer is its reverse; errors
/// start with `what`.
fn reverse_on(s: &mut svmc_host::Session, payload: Vec<u8>, what: &str) -> R {
    let mut expected = payload.clone();
    expected.reverse();
    let got = s.reverse(payload).map_err(|e| format!("{what}: {e}"))?;
    ensure(got.len() == expected.len(), || {
        format!("{what}: length {} != {}", got.len(), expected.len())
    })?;
    ensure(got == expected, || format!("{what}: reversed bytes differ"))
}

fn check_reverse(ctx: &Ctx, payload: Vec<u8>) -> R {
    let mut s = ctx.session()?;
    let what = format!("{} bytes", payload.len());
    reverse_on(&mut s, payload, &what)?;
    power_off(s)
}

fn power_off(s: svmc_host::Session) -> R {
    let status = s
        .power_off(Duration::from_secs(20))
        .map_err(|e| e.to_string())?
        .ok_or("no exit status")?;
    ensure(status.success(), || {
        format!("QEMU exit status {status} after power-off")
    })
}

fn reverse_abc(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let got = s.reverse(b"abc".to_vec()).map_err(|e| e.to_string())?;
    ensure(got == b"cba", || format!("got {got:?}"))?;
    power_off(s)
}

fn reverse_empty(ctx: &Ctx) -> R {
    check_reverse(ctx, Vec::new())
}

fn reverse_1mib(ctx: &Ctx) -> R {
    check_reverse(ctx, pattern(1 << 20))
}

fn reverse_8mib(ctx: &Ctx) -> R {
    check_reverse(ctx, pattern(8 << 20))
}

fn thousand_requests_one_connection(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    for i in 0..1000u32 {
        let payload = format!("request {i} {}", "x".repeat((i % 97) as usize)).into_bytes();
        reverse_on(&mut s, payload, &format!("request {i}"))?;
    }
    power_off(s)
}

/// Every length up to 130 bytes and around the 4 KiB and 64 KiB (the
/// largest vsock packet) boundaries, with bytes that differ from position
/// to position, on one connection: the copies at both ends (the guest's
/// own `memcpy` on aarch64) have a short path, a 16- and 32-byte path and
/// the tails between.
fn reverse_every_small_size(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let sizes = (0..=130)
        .chain(4090..=4100)
        .chain((65_530..=65_545).step_by(3));
    for len in sizes {
        reverse_on(&mut s, pattern(len), &format!("{len} bytes"))?;
    }
    power_off(s)
}

fn info(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let info = s.info().map_err(|e| e.to_string())?;
    ensure(info.arch == ctx.arch.name(), || {
        format!("arch {}", info.arch)
    })?;
    ensure(
        info.protocol_version == <ServiceVm as svmc_comm::Protocol>::VERSION,
        || format!("protocol version {}", info.protocol_version),
    )?;
    ensure(
        info.firmware == ctx.firmware_name() && !info.firmware_version.is_empty(),
        || format!("expected firmware {:?}: {info:?}", ctx.firmware_name()),
    )?;
    ensure(info.max_body >= 8 << 20, || {
        format!("max_body {}", info.max_body)
    })?;
    power_off(s)
}

fn host_initiated_connection(ctx: &Ctx) -> R {
    // The session's connection is the guest-initiated boot connection.
    let mut vm_session = ctx.session()?;
    let got = vm_session
        .reverse(b"boot".to_vec())
        .map_err(|e| e.to_string())?;
    ensure(got == b"toob", || format!("{got:?}"))?;
    let uds = vm_session.vm().ok_or("no vm")?.uds_path().to_path_buf();
    // A host-initiated connection while the boot connection is open: the
    // guest accepts it at once and serves it when the boot connection ends.
    let conn = vsock_transport::hybrid::connect(&uds, SERVICE_PORT, &ctx.timeouts())
        .map_err(|e| format!("connect: {e}"))?;
    frame_goodbye(vm_session.client().ok_or("no client")?.connection())?;
    let mut c = Client::<_, ServiceVm>::hello(conn, frame::DEFAULT_MAX_BODY)
        .map_err(|e| format!("handshake: {e}"))?;
    let r = c
        .call(&Request::Reverse(b"host".to_vec()))
        .map_err(|e| e.to_string())?;
    ensure(r == Response::Reverse(b"tsoh".to_vec()), || {
        format!("{r:?}")
    })?;
    power_off_via(&mut c, &mut vm_session)
}

type ServiceClient = Client<vsock_transport::hybrid::HybridStream, ServiceVm>;

/// A host-initiated, version-checked client on the guest's service port.
fn attach(uds: &std::path::Path, ctx: &Ctx) -> Result<ServiceClient, String> {
    let conn = vsock_transport::hybrid::connect(uds, SERVICE_PORT, &ctx.timeouts())
        .map_err(|e| format!("connect: {e}"))?;
    Client::hello(conn, frame::DEFAULT_MAX_BODY).map_err(|e| format!("handshake: {e}"))
}

/// Waits (up to 20 s) for the session's VM to exit and checks QEMU's exit
/// status 0 (WIRE.md R-END-3, after a `PowerOff`).
fn expect_clean_exit(s: &mut svmc_host::Session) -> R {
    let status = s
        .vm()
        .ok_or("no vm")?
        .wait_exit(Duration::from_secs(20))
        .map_err(|e| e.to_string())?;
    ensure(status.success(), || format!("exit status {status}"))
}

/// Powers the session's VM off through `c` and checks QEMU's exit status 0.
fn power_off_via(c: &mut ServiceClient, s: &mut svmc_host::Session) -> R {
    let r = c.call(&Request::PowerOff).map_err(|e| e.to_string())?;
    ensure(r == Response::PowerOff, || format!("{r:?}"))?;
    expect_clean_exit(s)
}

fn frame_goodbye<C: Connection + ?Sized>(c: &mut C) -> R {
    c.send(&frame::goodbye()).map_err(|e| e.to_string())
}

fn several_connections_in_sequence(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let uds = s.vm().ok_or("no vm")?.uds_path().to_path_buf();
    frame_goodbye(s.client().ok_or("no client")?.connection())?;
    for round in 0..5u8 {
        let mut c = attach(&uds, ctx).map_err(|e| format!("round {round}: {e}"))?;
        for i in 0..10u8 {
            let r = c
                .call(&Request::Reverse(vec![round, i, 0xff]))
                .map_err(|e| e.to_string())?;
            ensure(r == Response::Reverse(vec![0xff, i, round]), || {
                format!("{r:?}")
            })?;
        }
        if round % 2 == 0 {
            c.close().map_err(|e| e.to_string())?; // GOODBYE
        } else {
            drop(c); // plain close
        }
    }
    let mut c = attach(&uds, ctx)?;
    power_off_via(&mut c, &mut s)
}

fn power_off_exit_status_zero(ctx: &Ctx) -> R {
    let s = ctx.session()?;
    power_off(s)
}

fn refused_port_fails_fast(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let uds = s.vm().ok_or("no vm")?.uds_path().to_path_buf();
    let start = Instant::now();
    let r = vsock_transport::hybrid::connect(&uds, 4444, &ctx.timeouts());
    let took = start.elapsed();
    match r {
        Err(TError::Refused { port: 4444 }) => {}
        Err(e) => return Err(format!("expected Refused, got {e}")),
        Ok(_) => return Err("connected to a port nobody listens on".into()),
    }
    ensure(took < Duration::from_secs(5), || {
        format!("refusal took {took:?}")
    })?;
    // The VM is still fine.
    ensure(
        s.reverse(b"ok".to_vec()).map_err(|e| e.to_string())? == b"ko",
        || "after refusal".into(),
    )?;
    power_off(s)
}

fn payload_over_maximum(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let max = s.peer_max_body();
    // 1. Refused locally before sending; the connection stays usable.
    let too_big = vec![0u8; max as usize];
    match s.reverse(too_big) {
        Err(svmc_host::Error::Guest {
            source: TError::Protocol(svmc_comm::Error::TooLargeToSend { .. }),
            ..
        }) => {}
        other => return Err(format!("expected TooLarge, got {other:?}")),
    }
    ensure(
        s.reverse(b"still".to_vec()).map_err(|e| e.to_string())? == b"llits",
        || "after".into(),
    )?;
    // 2. A raw header announcing more than the maximum: the guest answers
    //    with a fatal ERROR frame and closes; the VM serves new connections.
    let uds = s.vm().ok_or("no vm")?.uds_path().to_path_buf();
    frame_goodbye(s.client().ok_or("no client")?.connection())?;
    let mut c = attach(&uds, ctx)?;
    let header = Header {
        kind: FrameKind::Request,
        len: max + 1,
    };
    c.connection()
        .send(&header.to_bytes())
        .map_err(|e| e.to_string())?;
    let mut body = Vec::new();
    let h = vsock_transport::framed::recv_frame(c.connection(), frame::DEFAULT_MAX_BODY, &mut body)
        .map_err(|e| format!("reading the guest's answer: {e}"))?;
    ensure(h.kind == FrameKind::Error, || {
        format!("expected ERROR, got {}", h.kind)
    })?;
    let pe: frame::ProtocolError = frame::decode_body(&body).map_err(|e| e.to_string())?;
    ensure(
        pe.code == frame::ProtocolErrorCode::TooLarge && pe.fatal,
        || format!("{pe:?}"),
    )?;
    drop(c);
    let mut c = attach(&uds, ctx)?;
    let r = c
        .call(&Request::Reverse(b"next".to_vec()))
        .map_err(|e| e.to_string())?;
    ensure(r == Response::Reverse(b"txen".to_vec()), || {
        format!("{r:?}")
    })?;
    power_off_via(&mut c, &mut s)
}

fn host_cli(ctx: &Ctx, args: &[&str]) -> Result<std::process::Output, String> {
    Command::new(&ctx.host_cli)
        .arg("--arch")
        .arg(ctx.arch.name())
        .args(ctx.host_cli_guest_args())
        .arg("--log-dir")
        .arg(&ctx.log_dir)
        .args(args)
        .output()
        .map_err(|e| format!("running host-cli: {e}"))
}

/// Checks that host-cli exited with success; the error shows its stderr.
fn cli_succeeded(out: &std::process::Output) -> R {
    ensure(out.status.success(), || {
        format!(
            "status {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn cli_reverse_abc(ctx: &Ctx) -> R {
    let out = host_cli(ctx, &["reverse", "abc"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    cli_succeeded(&out)?;
    ensure(stdout == "cba\n", || format!("stdout {stdout:?}"))
}

fn cli_info_json(ctx: &Ctx) -> R {
    let out = host_cli(ctx, &["--json", "info"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    cli_succeeded(&out)?;
    ensure(
        stdout.contains(&format!("\"arch\":\"{}\"", ctx.arch.name()))
            && stdout.contains("\"protocol_version\":2"),
        || format!("stdout {stdout:?}"),
    )
}

fn cli_attach_to_running_vm(ctx: &Ctx) -> R {
    let mut s = ctx.session()?;
    let uds = s.vm().ok_or("no vm")?.uds_path().to_path_buf();
    frame_goodbye(s.client().ok_or("no client")?.connection())?;
    let uds = uds.to_string_lossy().into_owned();
    let out = host_cli(ctx, &["--attach-uds", &uds, "reverse", "attached"])?;
    cli_succeeded(&out)?;
    ensure(out.stdout == b"dehcatta\n", || {
        format!("{:?}", String::from_utf8_lossy(&out.stdout))
    })?;
    let out = host_cli(ctx, &["--attach-uds", &uds, "power-off"])?;
    cli_succeeded(&out)?;
    expect_clean_exit(&mut s)
}

fn cli_missing_image_fails_cleanly(ctx: &Ctx) -> R {
    let out = Command::new(&ctx.host_cli)
        .args(["--image", "/nonexistent/guest.elf", "reverse", "abc"])
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure(!out.status.success(), || {
        "succeeded without an image".into()
    })?;
    ensure(
        stderr.trim_end().lines().count() == 1 && stderr.contains("/nonexistent/guest.elf"),
        || format!("stderr {stderr:?}"),
    )
}

const CASES: &[Case<Ctx>] = &[
    ("reverse_abc", reverse_abc),
    ("reverse_empty", reverse_empty),
    ("reverse_1mib", reverse_1mib),
    ("reverse_8mib", reverse_8mib),
    ("reverse_every_small_size", reverse_every_small_size),
    (
        "thousand_requests_one_connection",
        thousand_requests_one_connection,
    ),
    ("info", info),
    ("host_initiated_connection", host_initiated_connection),
    (
        "several_connections_in_sequence",
        several_connections_in_sequence,
    ),
    ("power_off_exit_status_zero", power_off_exit_status_zero),
    ("refused_port_fails_fast", refused_port_fails_fast),
    ("payload_over_maximum", payload_over_maximum),
    ("cli_reverse_abc", cli_reverse_abc),
    ("cli_info_json", cli_info_json),
    ("cli_attach_to_running_vm", cli_attach_to_running_vm),
    (
        "cli_missing_image_fails_cleanly",
        cli_missing_image_fails_cleanly,
    ),
    (
        "idle_and_stalled_clients_do_not_block",
        concurrency::idle_and_stalled_clients_do_not_block,
    ),
    (
        "busy_client_does_not_starve_another",
        concurrency::busy_client_does_not_starve_another,
    ),
    (
        "ninth_connection_gets_busy",
        concurrency::ninth_connection_gets_busy,
    ),
    (
        "idle_connection_gives_way_when_full",
        concurrency::idle_connection_gives_way_when_full,
    ),
    ("pipelined_burst", concurrency::pipelined_burst),
    (
        "reverse_8mib_next_to_others",
        concurrency::reverse_8mib_next_to_others,
    ),
    (
        "heap_back_after_many_connections",
        concurrency::heap_back_after_many_connections,
    ),
    (
        "dropped_connections_free_their_slots",
        concurrency::dropped_connections_free_their_slots,
    ),
    (
        "half_closed_connections_free_their_slots",
        concurrency::half_closed_connections_free_their_slots,
    ),
    (
        "dropped_with_answers_due_free_their_slots",
        concurrency::dropped_with_answers_due_free_their_slots,
    ),
];

fn main() {
    tests::harness::main(&Suite {
        name: "e2e",
        private_tmp: false,
        setup: |s| Ok(s.ctx),
        cases: CASES,
        last: None,
        helpers: &[],
    })
}
