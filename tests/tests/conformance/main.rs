//! Conformance suite: checks a server against the numbered rules of
//! `comm/WIRE.md` (v2), one case per rule a server can be checked for
//! (WIRE.md §9 maps rules to cases).
//!
//! It speaks raw bytes written from the specification, never through
//! `rpc::Client`: the point is to check the peer. The peer is a parameter:
//!
//! - `SVMC_CONFORMANCE_UDS=<path>`: a running peer behind a hybrid vsock
//!   socket (`SVMC_CONFORMANCE_PORT`, default 7001), e.g. another
//!   implementation;
//! - with `SVMC_E2E_ARCH` set, the VM of `cargo xtask run-e2e` (firmware
//!   on x86_64 or aarch64, or the Linux guest's service), launched here:
//!   that adds the boot-connection case and the exit status of the
//!   power-off;
//! - otherwise (plain `cargo test`) the guest's service in this process
//!   ([`tests::inproc`], on `rpc::serve`), in seconds; the cases that need
//!   a VM or the guests' event loop (the connection limit, flow control
//!   against a client that never reads) are printed as not applicable,
//!   each with its reason ([`NOT_IN_PROCESS`]).
//!
//! `SVMC_CONFORMANCE_MAX_CONNS` (default 8) is the peer's connection
//! limit. Every body sent (the well-formed ones) and received is kept and,
//! after the last case, validated against `comm/svmc.cddl` with the `cddl`
//! CLI (`cddl_every_captured_body`); `SVMC_CONFORMANCE_CAPTURE=<dir>` also
//! writes them there.
//!
//! The cases live in one module per section of WIRE.md whose rules they
//! check: [`frames`] (§2), [`hello`] (§3.1), [`requests`] (§3.2, §3.3),
//! [`errors`] (§3.4), [`end`] (§3.5), [`concurrency`] (§4), [`cbor`] (§5),
//! [`schema`] (§6), and for §10 [`extensions`], [`cancel`] and
//! [`streams`]; they speak through [`tests::raw::Raw`].
//!
//! Cases are plain functions in [`CASES`], run in order by
//! `tests::harness::run_trials` (libtest's command line: a filter,
//! `--exact`, `--skip`, `--list`); `r_end_3_power_off` and the CDDL check
//! come last, and the power-off runs whatever the filter.

use std::io::Write;
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use svmc::{Request, Response, SERVICE_PORT, ServiceError, ServiceVm};
use svmc_comm::envelope::{self, RequestId};
use svmc_comm::ext::{self, Cancel, Extensions, RequestMeta};
use svmc_comm::frame::{
    self, DEFAULT_MAX_BODY, FrameKind, HEADER_LEN, ProtocolError, ProtocolErrorCode,
};
use svmc_comm::{Hello, Protocol};
use svmc_host::Session;
use tests::inproc::InProcess;
use tests::raw::{
    Capture, Frame, R, Raw, cbor_head, cbor_text, cbor_uint, expect_reversed, hello_body, pattern,
    raw_frame, short,
};
use tests::suites::vars;
use tests::{Case, Ctx, cddl, ensure};

mod cancel;
mod cbor;
mod concurrency;
mod end;
mod errors;
mod extensions;
mod frames;
mod hello;
mod requests;
mod schema;
mod streams;

use cancel::*;
use cbor::*;
use concurrency::*;
use end::*;
use errors::*;
use extensions::*;
use frames::*;
use hello::*;
use requests::*;
use schema::*;
use streams::*;

/// How long an answer the peer owes may take (TCG is slow).
const ANSWER: Duration = Duration::from_secs(5);
/// How long "at once" may take: a second connection's `HELLO`, an answer
/// on one connection while another is stalled (R-CONN-4).
const PROMPT: Duration = Duration::from_millis(1500);

/// The server under test.
struct Peer {
    uds: PathBuf,
    port: u32,
    max_conns: usize,
    /// The launched VM's session; its client is the boot connection.
    session: Mutex<Option<Session>>,
    boot_open: AtomicBool,
    /// Every well-formed body sent and every body received.
    captured: Capture,
    /// The server in this process, if that is the peer.
    in_process: Option<InProcess>,
}

impl Peer {
    /// Ends the boot connection (GOODBYE, then the close, R-END-1), once:
    /// the other cases use host-initiated connections only, and a slot the
    /// boot connection held would count against the limit.
    fn end_boot(&self) {
        if self.boot_open.swap(false, Ordering::SeqCst)
            && let Some(s) = self.session.lock().unwrap().as_mut()
            && let Some(c) = s.client()
        {
            use vsock_transport::Connection as _;
            let _ = c.connection().send(&frame::goodbye());
            let _ = c.connection().shutdown();
        }
    }

    /// A new connection to the service port, after the hybrid `CONNECT`.
    fn connect(&self) -> Result<Raw<'_>, String> {
        self.end_boot();
        self.connect_keeping_boot()
    }

    fn connect_keeping_boot(&self) -> Result<Raw<'_>, String> {
        Raw::connect(&self.uds, self.port, ANSWER, Some(&self.captured))
    }

    /// A connection with our `HELLO` (accepting `max_body`) sent and the
    /// server's read and checked; returns it and the server's `max_body`.
    fn hello_with(&self, max_body: u32) -> Result<(Raw<'_>, u32), String> {
        let mut c = self.connect()?;
        let m = c.handshake(max_body)?;
        Ok((c, m))
    }

    fn hello(&self) -> Result<Raw<'_>, String> {
        Ok(self.hello_with(DEFAULT_MAX_BODY)?.0)
    }

    /// [`Peer::hello`] offering the extensions `ext` (§10); checks that
    /// the server's `HELLO` lists all three.
    fn hello_offering(&self, max_body: u32, ext: Extensions) -> Result<Raw<'_>, String> {
        let mut c = self.connect()?;
        c.send_msg(
            FrameKind::Hello,
            &Hello::new::<ServiceVm>(max_body).with_ext(ext),
        )?;
        let h = c.expect_hello_body(ANSWER)?;
        ensure(h.extensions() == Extensions::ALL, || {
            format!("the server's HELLO lists {:?}", h.ext)
        })?;
        Ok(c)
    }

    /// A connection with every extension on (R-EXT-2).
    fn hello_ext(&self) -> Result<Raw<'_>, String> {
        self.hello_offering(DEFAULT_MAX_BODY, Extensions::ALL)
    }

    fn capture(&self, kind: FrameKind, body: &[u8], what: String) {
        self.captured.add(kind, body, what);
    }
}

/// A well-formed `REQUEST` frame, its body captured.
fn request_frame(peer: &Peer, id: u32, request: &Request) -> Vec<u8> {
    peer.captured.request_frame(id, request)
}

const REQ: u8 = FrameKind::Request as u8;
const CODE_BAD_FRAME: ProtocolErrorCode = ProtocolErrorCode::BadFrame;
const CODE_TOO_LARGE: ProtocolErrorCode = ProtocolErrorCode::TooLarge;
const CODE_BAD: ProtocolErrorCode = ProtocolErrorCode::BadMessage;
const CODE_VARIANT: ProtocolErrorCode = ProtocolErrorCode::UnknownVariant;
const CODE_UNEXPECTED: ProtocolErrorCode = ProtocolErrorCode::UnexpectedFrame;
const CODE_VERSION: ProtocolErrorCode = ProtocolErrorCode::VersionMismatch;
const CODE_DEADLINE: ProtocolErrorCode = ProtocolErrorCode::DeadlineExceeded;
const CODE_CANCELLED: ProtocolErrorCode = ProtocolErrorCode::Cancelled;
const CANCEL: u8 = FrameKind::Cancel as u8;
const CHUNK: u8 = FrameKind::Chunk as u8;

/// `(name, case)` of each case function.
macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$((stringify!($case), $case as fn(&Peer) -> R)),*]
    };
}

/// Every case, in the order they run (the power-off and the CDDL check
/// last). `r_conn_3_boot_connection_is_served_alongside` is first so that
/// the boot connection is still open; it runs only against a launched VM.
const CASES: &[Case<Peer>] = cases![
    r_conn_3_boot_connection_is_served_alongside,
    r_hello_1_hello_comes_first,
    r_hello_2_a_256_byte_hello_is_read,
    r_hello_3_v1_hello_is_a_version_mismatch,
    r_hello_3_other_protocol_is_a_mismatch,
    r_hello_4_other_version_fields_are_not_read,
    r_hello_5_request_before_hello_is_fatal,
    r_hello_5_bad_hello_is_fatal,
    r_hello_5_error_or_goodbye_as_the_first_frame,
    r_hello_7_the_body_is_checked_before_the_protocol,
    r_frame_2_unknown_kind_is_fatal,
    r_frame_3_too_large_refused_from_the_header,
    r_frame_5_goodbye_with_a_body_is_fatal,
    r_frame_6_empty_body_is_not_fatal,
    r_frame_7_trailing_bytes_are_not_fatal,
    r_frame_8_truncated_frame_closes,
    r_id_3_every_id_is_echoed,
    r_id_4_answers_in_order,
    r_id_5_eight_pipelined_requests,
    r_flow_1_large_pipelined_requests_without_reading,
    r_flow_2_many_small_requests_without_reading,
    r_end_2_answers_after_goodbye_with_megabytes_due,
    r_req_2_bad_requests_are_not_fatal,
    r_req_3_errors_name_the_request,
    r_req_4_unexpected_kinds_are_not_fatal,
    r_req_5_response_too_large_for_the_client,
    r_err_2_code_2_refusing_an_answer_is_not_fatal,
    r_req_6_large_request_is_answered_or_out_of_memory,
    r_err_5_client_error_not_fatal_is_ignored,
    r_err_5_client_fatal_error_closes,
    r_err_5_undecodable_client_error_is_a_bad_message,
    r_err_3_errors_about_other_frames_are_not_answers,
    r_err_8_the_first_fault_decides,
    r_end_1_goodbye_closes,
    r_end_2_answers_after_goodbye,
    r_end_2_closes_after_shutdown,
    r_cbor_1_key_order_unknown_and_repeated_keys,
    r_cbor_1_repeated_unknown_key_in_hello_is_fatal,
    r_cbor_2_enum_shapes,
    r_cbor_4_integers_of_any_width,
    r_cbor_5_indefinite_lengths,
    r_cbor_6_tags,
    r_cbor_6_bignum_ids_and_tagged_chunks,
    r_cbor_7_nesting_limit,
    r_cbor_8_invalid_utf8,
    r_conn_3_eight_connections_at_once,
    r_conn_4_stalled_client_does_not_block_another,
    r_conn_5_busy_over_the_limit,
    r_conn_6_idle_connection_is_kept,
    r_conn_7_closed_connections_stop_counting,
    r_conn_7_closed_with_answers_due_stop_counting,
    r_ext_2_the_server_offers_the_extensions,
    r_ext_1_a_bad_ext_is_a_bad_hello,
    r_ext_3_a_client_without_extensions_gets_plain_v2,
    r_ext_3_unknown_kinds_whatever_their_length,
    r_meta_1_meta_is_read_and_unknown_keys_ignored,
    r_meta_2_a_bad_meta_is_code_3_with_the_id,
    r_meta_3_deadline_0_is_code_8_and_not_carried_out,
    r_meta_3_a_deadline_passed_behind_a_long_request,
    r_meta_4_timing_and_stats_only_when_asked,
    r_meta_4_meta_never_makes_an_answer_too_large,
    r_cancel_3_cancels_of_answered_ids_are_ignored,
    r_cancel_2_cancel_stops_a_running_spin,
    r_cancel_2_cancel_right_behind_its_request,
    r_cancel_2_a_pipelined_request_cancelled_before_it_starts,
    r_stream_1_sha256_of_a_stream,
    r_stream_2_a_chunk_outside_a_stream_is_fatal,
    r_stream_2_a_request_inside_a_stream_is_fatal,
    r_stream_4_a_request_that_takes_no_stream,
    r_stream_3_refused_at_its_start_the_chunks_are_dropped,
    r_stream_5_cancel_of_an_open_stream,
    r_stream_8_prng_answer_stream,
    r_stream_9_a_request_inside_an_answer_stream_is_fatal,
    r_stream_10_cancel_of_an_answer_stream,
    r_end_3_power_off,
    cddl_every_captured_body,
];
/// The case that needs the boot connection of a launched VM.
const BOOT_CASE: &str = "r_conn_3_boot_connection_is_served_alongside";

/// The cases that do not apply to the in-process server
/// ([`tests::inproc`]: the guest's service on `rpc::serve`, one blocking
/// connection per thread), and why. They run against the VMs.
const NOT_IN_PROCESS: &[(&str, &str)] = &[
    (
        "r_conn_5_busy_over_the_limit",
        "the connection limit is the guests' event loop's (rpc::many); the in-process server \
         has a thread per connection and no limit",
    ),
    (
        "r_conn_6_idle_connection_is_kept",
        "idle connections give way at the limit in the guests' event loop (rpc::many); no \
         limit here",
    ),
    (
        "r_conn_7_closed_connections_stop_counting",
        "no connection limit here to count against",
    ),
    (
        "r_conn_7_closed_with_answers_due_stop_counting",
        "no connection limit here to count against",
    ),
];

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{key}={v:?} is not valid")),
        Err(_) => default,
    }
}

fn main() {
    let args = tests::harness::arguments();
    if args.list {
        tests::harness::list(&args, CASES);
    }
    let logs = tempfile::Builder::new()
        .prefix("svmc-conformance-logs-")
        .tempdir()
        .expect("log dir");
    let port = env_or("SVMC_CONFORMANCE_PORT", SERVICE_PORT);
    let max_conns = env_or("SVMC_CONFORMANCE_MAX_CONNS", 8usize);
    let in_process = std::env::var_os("SVMC_CONFORMANCE_UDS").is_none()
        && std::env::var_os(vars::ARCH).is_none();
    let (peer, label) = match std::env::var_os("SVMC_CONFORMANCE_UDS") {
        None if in_process => {
            let server = InProcess::start().expect("starting the in-process server");
            println!(
                "conformance against the in-process server at {} ({} not set: no VM)",
                server.uds().display(),
                vars::ARCH
            );
            let peer = Peer {
                uds: server.uds().to_path_buf(),
                port,
                max_conns,
                session: Mutex::new(None),
                boot_open: AtomicBool::new(false),
                captured: Capture::default(),
                in_process: Some(server),
            };
            (peer, "conformance-inproc".to_string())
        }
        Some(uds) => {
            let uds = PathBuf::from(uds);
            println!(
                "conformance against the peer at {} port {port}",
                uds.display()
            );
            let peer = Peer {
                uds,
                port,
                max_conns,
                session: Mutex::new(None),
                boot_open: AtomicBool::new(false),
                captured: Capture::default(),
                in_process: None,
            };
            (peer, "conformance".to_string())
        }
        None => {
            let ctx = match Ctx::from_env(logs.path().to_path_buf()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("conformance: {e} (or set SVMC_CONFORMANCE_UDS)");
                    std::process::exit(2);
                }
            };
            let label = format!("conformance-{}-{}", ctx.arch, ctx.guest.name());
            println!("{label} with {}", ctx.image.display());
            let mut session = match ctx.session() {
                Ok(s) => s,
                Err(e) => {
                    println!("{label}: could not start the VM: {e}");
                    println!("{label}: 0 passed, {} failed", CASES.len());
                    std::process::exit(1);
                }
            };
            let uds = session.vm().expect("launched").uds_path().to_path_buf();
            let peer = Peer {
                uds,
                port,
                max_conns,
                session: Mutex::new(Some(session)),
                boot_open: AtomicBool::new(true),
                captured: Capture::default(),
                in_process: None,
            };
            (peer, label)
        }
    };
    let launched = peer.session.lock().unwrap().is_some();
    let not_here = |name: &str| -> Option<&'static str> {
        if peer.in_process.is_some()
            && let Some((_, why)) = NOT_IN_PROCESS.iter().find(|(n, _)| *n == name)
        {
            return Some(why);
        }
        (!launched && name == BOOT_CASE)
            .then_some("there is no boot connection: no VM launched here")
    };
    for (name, _) in NOT_IN_PROCESS {
        assert!(
            CASES.iter().any(|(n, _)| n == name),
            "NOT_IN_PROCESS names {name}, which is not a case"
        );
    }
    let mut cases: Vec<Case<Peer>> = Vec::new();
    for &(name, f) in CASES {
        match not_here(name) {
            Some(why) if !args.is_filtered_out(&libtest_mimic::Trial::test(name, || Ok(()))) => {
                println!("test {name} ... not applicable: {why}");
            }
            Some(_) => {}
            None => cases.push((name, f)),
        }
    }
    // With a filter, still power off at the end.
    let peer = std::sync::Arc::new(peer);
    let (passed, failed) =
        tests::harness::run_trials(&args, Ok(peer.clone()), &cases, Some("r_end_3_power_off"));
    println!("{label}: {passed} passed, {failed} failed");
    let ok = failed == 0;
    drop(peer);
    // `exit` runs no destructors: remove the logs, or keep them (the
    // guest's serial log says why a case failed) and say where.
    if ok {
        drop(logs);
    } else {
        println!("{label}: logs kept in {}", logs.keep().display());
    }
    std::process::exit(if ok { 0 } else { 1 });
}
