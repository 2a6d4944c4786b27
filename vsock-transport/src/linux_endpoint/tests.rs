//! [`LinuxEndpoint`] without a VM. The error mapping is tested as pure
//! functions. The connections are one end of a Unix socketpair wrapped as a
//! `VsockStream` (which is only a file descriptor: read, write, shutdown and
//! poll(2) work the same on any stream socket; the `AF_VSOCK` options fail
//! and are logged). The listener binds a free port on `VMADDR_CID_ANY`,
//! which needs the vsock core module but no transport; without it the
//! tests that need one print why and pass without running.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use vsock::VsockStream;

use super::*;
use crate::host_vsock::PORT_ANY;

fn os_error(kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, "test")
}

#[test]
fn reads_map_to_data_end_of_stream_nothing_or_errors() {
    assert_eq!(read_outcome(Ok(7)).unwrap(), Recv::Data(7));
    assert_eq!(read_outcome(Ok(0)).unwrap(), Recv::Eof);
    for kind in [io::ErrorKind::WouldBlock, io::ErrorKind::Interrupted] {
        assert_eq!(read_outcome(Err(os_error(kind))).unwrap(), Recv::Empty);
    }
    assert!(matches!(
        read_outcome(Err(os_error(io::ErrorKind::ConnectionReset))),
        Err(Error::Reset)
    ));
    match read_outcome(Err(os_error(io::ErrorKind::PermissionDenied))) {
        Err(Error::Io { context, .. }) => assert_eq!(context, "reading"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn writes_map_to_bytes_no_room_or_errors() {
    assert_eq!(write_outcome(Ok(5)).unwrap(), Some(5));
    for kind in [io::ErrorKind::WouldBlock, io::ErrorKind::Interrupted] {
        assert_eq!(write_outcome(Err(os_error(kind))).unwrap(), None);
    }
    for kind in [io::ErrorKind::BrokenPipe, io::ErrorKind::ConnectionReset] {
        assert!(matches!(
            write_outcome(Err(os_error(kind))),
            Err(Error::Reset)
        ));
    }
    match write_outcome(Err(os_error(io::ErrorKind::PermissionDenied))) {
        Err(Error::Io { context, .. }) => assert_eq!(context, "writing"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn handles_show_as_numbers() {
    assert_eq!(ConnId(3).to_string(), "#3");
}

/// An endpoint listening on a free port, or `None` (after saying why) if
/// this machine has no AF_VSOCK at all.
fn endpoint() -> Option<LinuxEndpoint> {
    match LinuxEndpoint::bind_cid(CID_ANY, PORT_ANY, Some(CID_HOST)) {
        Ok(e) => Some(e),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "linux_endpoint: test skipped, no AF_VSOCK listener: {e}"
            );
            None
        }
    }
}

/// A connection served by `e`, and the test's end of it.
fn connection(e: &mut LinuxEndpoint) -> (ConnId, UnixStream) {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .unwrap();
    let id = e.add(VsockStream::from(ours)).unwrap();
    (id, UnixStream::from(theirs))
}

/// Reads `id` until something other than [`Recv::Empty`] comes.
fn recv_wait(e: &mut LinuxEndpoint, id: ConnId, buf: &mut [u8]) -> Result<Recv> {
    let start = Instant::now();
    loop {
        match e.recv(id, buf)? {
            Recv::Empty if start.elapsed() < Duration::from_secs(5) => e.idle(),
            r => return Ok(r),
        }
    }
}

#[test]
fn the_listener_has_a_port_and_nothing_to_accept() {
    let Some(mut e) = endpoint() else { return };
    assert_ne!(e.port().unwrap(), PORT_ANY);
    assert_eq!(Endpoint::accept(&mut e), None);
    assert!(!e.poll().unwrap(), "no device to poll");
    // Nothing is ready: idle waits, but no longer than IDLE_POLL.
    let start = Instant::now();
    e.idle();
    assert!(start.elapsed() < IDLE_POLL + Duration::from_secs(1));
}

#[test]
fn unknown_connections_fail_or_are_ignored() {
    let Some(mut e) = endpoint() else { return };
    let id = ConnId(42);
    assert!(matches!(e.recv(id, &mut [0; 4]), Err(Error::ShutDown)));
    assert!(matches!(e.send_some(id, b"x"), Err(Error::ShutDown)));
    assert!(!e.exists(id));
    assert!(!e.peer_closed(id));
    e.close(id);
    e.reset(id);
    e.probe(id);
    e.tick();
    assert!(!e.exists(id));
}

#[test]
fn bytes_go_both_ways_without_waiting() {
    let Some(mut e) = endpoint() else { return };
    let (id, mut peer) = connection(&mut e);
    let (id2, _peer2) = connection(&mut e);
    assert_ne!(id, id2, "handles are not reused");
    let mut buf = [0; 16];
    assert_eq!(e.recv(id, &mut buf).unwrap(), Recv::Empty);
    peer.write_all(b"ping").unwrap();
    assert_eq!(recv_wait(&mut e, id, &mut buf).unwrap(), Recv::Data(4));
    assert_eq!(&buf[..4], b"ping");
    assert_eq!(e.send_some(id, b"pong").unwrap(), 4);
    let mut got = [0; 4];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    // A probe on a socket without the AF_VSOCK options is logged, no more.
    e.probe(id);
    assert!(e.exists(id) && !e.peer_closed(id));
}

#[test]
fn a_full_socket_takes_nothing_and_send_some_returns() {
    let Some(mut e) = endpoint() else { return };
    let (id, _peer) = connection(&mut e);
    let chunk = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = e.send_some(id, &chunk).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        assert!(total < 64 << 20, "a socket buffer without end");
    }
    assert!(total > 0);
}

#[test]
fn the_peers_close_is_seen_at_once_and_reads_end() {
    let Some(mut e) = endpoint() else { return };
    let (id, mut peer) = connection(&mut e);
    peer.write_all(b"last").unwrap();
    drop(peer);
    assert!(e.peer_closed(id));
    let mut buf = [0; 16];
    assert_eq!(recv_wait(&mut e, id, &mut buf).unwrap(), Recv::Data(4));
    assert_eq!(recv_wait(&mut e, id, &mut buf).unwrap(), Recv::Eof);
    assert!(matches!(e.send_some(id, b"x"), Err(Error::Reset)));
}

#[test]
fn a_close_ends_our_side_and_lasts_until_the_peer_closes_too() {
    let Some(mut e) = endpoint() else { return };
    let (id, mut peer) = connection(&mut e);
    assert_eq!(e.send_some(id, b"bye").unwrap(), 3);
    e.close(id);
    assert!(e.exists(id), "waiting for the peer's end of the stream");
    assert!(matches!(e.recv(id, &mut [0; 4]), Err(Error::ShutDown)));
    // The peer reads our answer, then the end of the stream.
    let mut got = Vec::new();
    peer.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"bye");
    // What it still sends is dropped; its close ends ours.
    peer.write_all(b"ignored").unwrap();
    e.tick();
    assert!(e.exists(id));
    drop(peer);
    e.tick();
    assert!(!e.exists(id));
}

#[test]
fn a_reset_forgets_the_connection_at_once() {
    let Some(mut e) = endpoint() else { return };
    let (id, mut peer) = connection(&mut e);
    e.reset(id);
    assert!(!e.exists(id));
    let mut got = Vec::new();
    // (A Unix socket has no reset: its peer sees the end of the stream.)
    peer.read_to_end(&mut got).unwrap();
    assert!(got.is_empty());
    // A connection closing is forgotten by a reset too.
    let (id, _peer) = connection(&mut e);
    e.close(id);
    e.reset(id);
    assert!(!e.exists(id));
}
