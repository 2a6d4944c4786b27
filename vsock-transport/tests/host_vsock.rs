//! The AF_VSOCK backend.
//!
//! The end-to-end tests need a vsock loopback (`vsock_loopback` module, CID
//! 1 = `VMADDR_CID_LOCAL`). They detect it at run time by binding and
//! connecting on CID 1; without it they print one line saying why and pass
//! without running. Inside a Linux VM with `vsock_loopback` loaded, this
//! test binary (`cargo test --no-run`, then run the file under
//! `target/.../deps/host_vsock-*`) runs all of them.

mod common;

use std::io::Write;
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use vsock::VsockStream;
use vsock_transport::host_stream::{HostStream, Peer};
use vsock_transport::host_vsock::{self, CID_LOCAL, Listener, PORT_ANY, VsockHostStream};
use vsock_transport::rpc::Ended;
use vsock_transport::{Connection, Error, Step, Timeouts};

use common::*;

/// Why AF_VSOCK loopback is unusable here, or `None` if it works. Probed
/// once; the reason is printed once, bypassing the test harness's output
/// capture so that it shows in a normal `cargo test` run.
fn loopback_unavailable() -> Option<&'static str> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let reason = probe().err()?;
            let _ = writeln!(
                std::io::stderr(),
                "host_vsock: AF_VSOCK end-to-end tests skipped: no usable vsock loopback \
                 on CID 1 ({reason}); load the vsock_loopback module to run them"
            );
            Some(reason)
        })
        .as_deref()
}

fn probe() -> Result<(), String> {
    let t = Timeouts::uniform(Duration::from_secs(1));
    let l = Listener::bind_cid(CID_LOCAL, PORT_ANY, None, t).map_err(|e| e.to_string())?;
    let port = l.port();
    let c = thread::spawn(move || host_vsock::connect(CID_LOCAL, port, &t));
    let a = l.accept().map_err(|e| e.to_string());
    c.join().unwrap().map_err(|e| e.to_string())?;
    a.map(drop)
}

macro_rules! require_loopback {
    () => {
        if loopback_unavailable().is_some() {
            return;
        }
    };
}

/// A listener on loopback with a kernel-chosen port.
fn listener(expected_cid: Option<u32>, t: Timeouts) -> Listener {
    Listener::bind_cid(CID_LOCAL, PORT_ANY, expected_cid, t).unwrap()
}

/// The guest's end: a raw vsock stream as a [`Connection`].
fn guest_conn(s: VsockStream) -> HostStream<VsockStream> {
    HostStream::new(s, Peer::Other("test guest".into()), timeouts())
}

/// A "guest" that connects to `port` on loopback and serves.
fn serving_guest(port: u32) -> thread::JoinHandle<vsock_transport::Result<Ended>> {
    thread::spawn(move || {
        let s = VsockStream::connect_with_cid_port(CID_LOCAL, port).unwrap();
        serve_reverse(guest_conn(s))
    })
}

// ---------------------------------------------------------------------------
// Without a peer: run everywhere.

#[test]
fn unavailable_vsock_is_a_typed_error() {
    if loopback_unavailable().is_none() {
        // Binding CID 1 works here; nothing to check.
        return;
    }
    let err = Listener::bind_cid(CID_LOCAL, PORT_ANY, None, timeouts()).unwrap_err();
    assert!(host_vsock::is_unavailable(&err), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("AF_VSOCK is not available"), "{msg}");
    assert!(msg.contains("CID 1"), "{msg}");
}

#[test]
fn connect_is_bounded_by_the_connect_timeout() {
    let t = Timeouts {
        connect: Some(Duration::from_millis(300)),
        ..timeouts()
    };
    // Nobody listens on this port: refused with loopback, no answer at all
    // (the kernel would wait 2 s) or unavailable without.
    let (r, took) = timed(|| host_vsock::connect(CID_LOCAL, 0x5eed, &t));
    match r {
        Err(Error::Timeout(Step::Connect)) => {
            assert!(took >= Duration::from_millis(300), "{took:?}")
        }
        Err(Error::Refused { port: 0x5eed }) => {}
        Err(ref e) if host_vsock::is_unavailable(e) => {}
        other => panic!("{other:?}"),
    }
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[test]
fn accept_is_bounded_by_the_accept_timeout() {
    let t = Timeouts {
        accept: Some(Duration::from_millis(200)),
        ..timeouts()
    };
    let l = match Listener::bind(PORT_ANY, Some(3), t) {
        Ok(l) => l,
        Err(e) if host_vsock::is_unavailable(&e) => {
            let _ = writeln!(std::io::stderr(), "host_vsock: no AF_VSOCK at all: {e}");
            return;
        }
        Err(e) => panic!("{e:?}"),
    };
    assert_ne!(l.port(), PORT_ANY);
    let (r, took) = timed(|| l.accept());
    assert!(matches!(r, Err(Error::Timeout(Step::Accept))), "{r:?}");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(1),
        "{took:?}"
    );
}

// ---------------------------------------------------------------------------
// End to end over vsock loopback.

#[test]
fn loopback_round_trips() {
    require_loopback!();
    let l = listener(Some(CID_LOCAL), timeouts());
    let g = serving_guest(l.port());
    let conn: VsockHostStream = l.accept().unwrap();
    assert!(
        matches!(conn.peer(), Peer::Vsock { cid: CID_LOCAL, .. }),
        "{:?}",
        conn.peer()
    );
    let mut c = client(conn);
    for i in 0..500 {
        check_reverse(&mut c, &payload(i % 300 + 1));
    }
    c.close().unwrap();
    assert_eq!(g.join().unwrap().unwrap(), Ended::Goodbye);
}

#[test]
fn loopback_host_connects_to_guest() {
    require_loopback!();
    let guest_listener = listener(None, timeouts());
    let port = guest_listener.port();
    let g = thread::spawn(move || serve_reverse(guest_listener.accept().unwrap()));
    let mut c = client(host_vsock::connect(CID_LOCAL, port, &timeouts()).unwrap());
    check_reverse(&mut c, b"host first");
    c.close().unwrap();
    assert_eq!(g.join().unwrap().unwrap(), Ended::Goodbye);
}

#[test]
fn loopback_eight_mib() {
    require_loopback!();
    let l = listener(Some(CID_LOCAL), timeouts());
    let g = serving_guest(l.port());
    let mut c = client(l.accept().unwrap());
    check_reverse(&mut c, &payload(8 << 20));
    c.close().unwrap();
    g.join().unwrap().unwrap();
}

#[test]
fn loopback_unexpected_peer_cid() {
    require_loopback!();
    let l = listener(Some(3), timeouts());
    let port = l.port();
    let g = thread::spawn(move || VsockStream::connect_with_cid_port(CID_LOCAL, port).unwrap());
    let err = l.accept().unwrap_err();
    assert!(
        matches!(
            err,
            Error::UnexpectedPeer {
                expected: 3,
                got: CID_LOCAL
            }
        ),
        "{err:?}"
    );
    drop(g.join().unwrap());
}

#[test]
fn loopback_refused() {
    require_loopback!();
    // A port nobody listens on (bound and dropped again).
    let port = listener(None, timeouts()).port();
    let err = host_vsock::connect(CID_LOCAL, port, &timeouts()).unwrap_err();
    assert!(
        matches!(err, Error::Refused { port: p } if p == port),
        "{err:?}"
    );
}

#[test]
fn loopback_peer_closing_mid_frame_is_truncated() {
    require_loopback!();
    let l = listener(Some(CID_LOCAL), timeouts());
    let port = l.port();
    let g = thread::spawn(move || {
        let mut conn = guest_conn(VsockStream::connect_with_cid_port(CID_LOCAL, port).unwrap());
        raw_server_until_request(&mut conn);
        let f = response_frame(b"abcdef");
        conn.send(&f[..f.len() - 3]).unwrap();
    });
    let mut c = client(l.accept().unwrap());
    let err = c
        .call(&svmc::Request::Reverse(b"fedcba".to_vec()))
        .unwrap_err();
    assert!(
        matches!(err, Error::Protocol(svmc_comm::Error::Truncated { .. })),
        "{err:?}"
    );
    g.join().unwrap();
}

#[test]
fn loopback_trickling_peer_times_out() {
    require_loopback!();
    let t = Timeouts {
        read: Some(Duration::from_millis(500)),
        ..timeouts()
    };
    let l = listener(Some(CID_LOCAL), t);
    let port = l.port();
    let g = thread::spawn(move || {
        let mut conn = guest_conn(VsockStream::connect_with_cid_port(CID_LOCAL, port).unwrap());
        raw_server_until_request(&mut conn);
        for b in response_frame(b"0123456789") {
            if conn.send(&[b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let mut c = client(l.accept().unwrap());
    let (r, took) = timed(|| c.call(&svmc::Request::Reverse(b"9876543210".to_vec())));
    // Part of the frame had arrived: out of step, fatal.
    assert!(
        matches!(r, Err(Error::TimeoutInFrame { step: Step::Read, got }) if got > 0),
        "{r:?}"
    );
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(900),
        "{took:?}"
    );
    drop(c);
    g.join().unwrap();
}

/// The async API (feature `tokio`) over AF_VSOCK loopback: tokio-vsock
/// streams against the blocking server, and the async listener.
#[cfg(feature = "tokio")]
mod async_vsock {
    use std::sync::Arc;

    use svmc::{Request, Response, ServiceVm};
    use svmc_comm::frame::DEFAULT_MAX_BODY;
    use vsock_transport::async_host::{self, Client};

    use super::*;

    fn reversed(b: &[u8]) -> Response {
        Response::Reverse(b.iter().rev().copied().collect())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn loopback_async_sixteen_tasks_on_one_connection() {
        require_loopback!();
        let l = listener(None, timeouts());
        let port = l.port();
        let server = thread::spawn(move || serve_reverse(l.accept().unwrap()));
        let s = async_host::vsock::connect(CID_LOCAL, port, &timeouts())
            .await
            .unwrap();
        let client = Arc::new(
            Client::<ServiceVm>::hello(s, DEFAULT_MAX_BODY, &timeouts())
                .await
                .unwrap(),
        );
        let tasks: Vec<_> = (0..16u32)
            .map(|t| {
                let client = client.clone();
                tokio::spawn(async move {
                    for i in 0..100u32 {
                        let p = format!("vsock task {t} call {i}");
                        let got = client.call(&Request::Reverse(p.clone().into())).await;
                        assert_eq!(got.unwrap(), reversed(p.as_bytes()), "task {t} call {i}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(client).unwrap().close().await.unwrap();
        assert!(matches!(server.join().unwrap(), Ok(Ended::Goodbye)));
    }

    #[tokio::test]
    async fn loopback_async_listener_checks_the_peer_cid() {
        require_loopback!();
        let l = async_host::vsock::Listener::bind(CID_LOCAL, PORT_ANY, Some(CID_LOCAL), timeouts())
            .unwrap();
        let port = l.port();
        let guest = serving_guest(port);
        let (s, cid) = l.accept().await.unwrap();
        assert_eq!(cid, CID_LOCAL);
        let client = Client::<ServiceVm>::hello(s, DEFAULT_MAX_BODY, &timeouts())
            .await
            .unwrap();
        let r = Request::Reverse(b"over vsock".to_vec());
        assert_eq!(client.call(&r).await.unwrap(), reversed(b"over vsock"));
        client.close().await.unwrap();
        assert!(matches!(guest.join().unwrap(), Ok(Ended::Goodbye)));

        let l =
            async_host::vsock::Listener::bind(CID_LOCAL, PORT_ANY, Some(42), timeouts()).unwrap();
        let port = l.port();
        let c = thread::spawn(move || host_vsock::connect(CID_LOCAL, port, &timeouts()));
        let e = l.accept().await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::UnexpectedPeer {
                    expected: 42,
                    got: CID_LOCAL
                }
            ),
            "{e:?}"
        );
        drop(c.join().unwrap());
    }

    #[tokio::test]
    async fn loopback_async_connect_refused() {
        require_loopback!();
        // A port bound and closed again: nobody listens there now.
        let port = listener(None, timeouts()).port();
        let e = async_host::vsock::connect(CID_LOCAL, port, &timeouts())
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Refused { .. }), "{e:?}");
    }
}
