//! Connection set-up: requests accepted, refused or ignored, the backlog
//! and its bounds, and our own `connect`.

use super::*;

#[test]
fn a_request_is_accepted_with_the_small_window_and_its_data_is_read() {
    let mut t = table();
    t.request(1000, 65536);
    assert_eq!(
        t.driver.take(),
        [Sent::Response {
            port: 1000,
            buf_alloc: ACCEPT_WINDOW
        }]
    );
    assert_eq!(t.backlog_len(), 1);
    let id = t.accept().unwrap();
    assert_eq!(t.accept(), None);
    assert_eq!(t.peer(id), Some(host(1000)));
    t.data(1000, b"hello", 65536, 0);
    t.data(1000, b" world", 65536, 0);
    assert_eq!(t.read_all(id), b"hello world");
    assert_eq!(t.recv(id, &mut [0; 8]).unwrap(), Recv::Empty);
    assert_eq!(t.unread(), 0);
}

#[test]
fn a_request_on_a_port_nobody_listens_on_is_reset() {
    let mut t = table();
    let mut e = event(1000, VsockEventType::ConnectionRequest, 4096, 0);
    e.destination.port = PORT + 1;
    t.deliver(e, &[]);
    assert_eq!(t.driver.take(), [Sent::Rst(1000)]);
    assert!(t.is_empty());
    assert_eq!(t.accept(), None);
}

#[test]
fn packets_for_another_cid_or_an_unknown_connection_change_nothing() {
    let mut t = table();
    let id = t.served(1000, 65536);
    // Not for us: another CID, even with the right ports.
    let mut e = event(1000, VsockEventType::Received { length: 3 }, 65536, 0);
    e.destination.cid = GUEST_CID + 1;
    t.deliver(e, b"abc");
    // A connection request for another CID is not answered at all.
    let mut e = event(2000, VsockEventType::ConnectionRequest, 65536, 0);
    e.destination.cid = 0xFFFF_FFFF;
    t.deliver(e, &[]);
    // Data, a close and credit from a port we have no connection with.
    t.data(1001, b"xyz", 65536, 0);
    t.control(1001, rst(), 0, 0);
    t.control(1001, VsockEventType::CreditRequest, u32::MAX, u32::MAX);
    t.control(1001, VsockEventType::Connected, 0, 0);
    assert_eq!(t.driver.take(), []);
    assert_eq!(t.len(), 1);
    assert_eq!(t.recv(id, &mut [0; 8]).unwrap(), Recv::Empty);
}

#[test]
fn a_full_backlog_resets_further_requests() {
    let mut t = table();
    t.set_max_pending(2);
    for port in 1000..1003 {
        t.request(port, 4096);
    }
    let sent = t.driver.take();
    assert_eq!(sent.len(), 3);
    assert!(matches!(sent[0], Sent::Response { port: 1000, .. }));
    assert!(matches!(sent[1], Sent::Response { port: 1001, .. }));
    assert_eq!(sent[2], Sent::Rst(1002));
    assert_eq!((t.len(), t.backlog_len()), (2, 2));
    // Taking one from the backlog makes room for the next.
    let first = t.accept().unwrap();
    t.request(1003, 4096);
    assert!(matches!(
        t.driver.take()[..],
        [Sent::Response { port: 1003, .. }]
    ));
    assert_eq!(t.peer(first), Some(host(1000)));
}

#[test]
fn a_flood_of_requests_holds_no_more_than_the_backlog() {
    let mut t = table();
    for port in 0..10_000 {
        t.request(port, 4096);
    }
    assert_eq!(t.len(), DEFAULT_MAX_PENDING);
    let resets = t
        .driver
        .take()
        .iter()
        .filter(|s| matches!(s, Sent::Rst(_)))
        .count();
    assert_eq!(resets, 10_000 - DEFAULT_MAX_PENDING);
}

#[test]
fn the_table_grows_past_its_initial_capacity_and_keeps_connections_apart() {
    let mut t = table();
    let n = TABLE_CAPACITY as u32 + 8;
    let ids: Vec<ConnId> = (0..n).map(|i| t.served(1000 + i, 65536)).collect();
    assert_eq!(t.len(), n as usize);
    for (i, _) in ids.iter().enumerate().rev() {
        t.data(1000 + i as u32, format!("conn {i}").as_bytes(), 65536, 0);
    }
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(t.read_all(id), format!("conn {i}").as_bytes());
    }
    // Handles are never reused, even for the same peer and port.
    t.reset(ids[0]);
    advance(DUPLICATE_REQUEST_US);
    let again = t.served(1000, 65536);
    assert!(!ids.contains(&again));
    assert!(!t.exists(ids[0]));
}

#[test]
fn a_repeated_request_is_ignored_and_a_late_one_replaces_the_connection() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.data(1000, b"kept", 65536, 0);
    advance(DUPLICATE_REQUEST_US - 1);
    t.request(1000, 65536);
    assert_eq!(
        t.driver.take(),
        [],
        "a second RESPONSE for the same request"
    );
    assert_eq!(t.backlog_len(), 0);
    assert_eq!(t.read_all(id), b"kept");
    // Later: the host reused the port for a new connection.
    advance(1);
    t.request(1000, 65536);
    assert!(matches!(
        t.driver.take()[..],
        [Sent::Response { port: 1000, .. }]
    ));
    assert!(!t.exists(id));
    assert!(matches!(t.recv(id, &mut [0; 4]), Err(Error::ShutDown)));
    let new = t.accept().unwrap();
    assert_ne!(new, id);
}

#[test]
fn connect_waits_for_the_answer_and_is_bounded() {
    let mut t = table();
    // Accepted: the answer is waiting when connect polls.
    t.feed(event(9, VsockEventType::Connected, 65536, 0), &[]);
    let id = t.connect(host(9), PORT).unwrap();
    assert_eq!(t.driver.take(), [Sent::Request(9)]);
    assert!(t.is_open(id));
    // A second connection with the same addresses.
    assert!(t.connect(host(9), PORT).is_err());
    // Refused.
    t.feed(event(10, rst(), 0, 0), &[]);
    assert!(matches!(
        t.connect(host(10), PORT),
        Err(Error::Refused { port: 10 })
    ));
    assert_eq!(t.driver.take(), [Sent::Request(10)]);
    // No answer: polls count the time when the clock stands still.
    let mut t = VsockTable::with_device(Fake::default(), CONNECTION_BUFFER_SIZE);
    t.set_limits(Limits {
        connect_us: 50,
        shutdown_us: 50,
    });
    assert!(matches!(
        t.connect(host(11), PORT),
        Err(Error::Timeout(Step::Connect))
    ));
    assert_eq!(t.driver.take(), [Sent::Request(11), Sent::Rst(11)]);
    assert!(t.is_empty());
}

#[test]
fn a_connected_event_out_of_turn_changes_nothing() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.control(1000, shutdown(), 65536, 0);
    // RESPONSE to a connection we did not request: it stays half-closed.
    t.control(1000, VsockEventType::Connected, 65536, 0);
    assert!(t.peer_closed(id));
    assert_eq!(t.recv(id, &mut [0; 4]).unwrap(), Recv::Eof);
}

#[test]
fn a_connection_waiting_in_the_backlog_keeps_its_data_and_its_close() {
    let mut t = table();
    t.request(1000, 65536);
    t.request(1001, 65536);
    t.data(1000, b"early", 65536, 0);
    t.control(1001, rst(), 65536, 0);
    // Handed out in order, with what happened while they waited.
    let a = t.accept().unwrap();
    let b = t.accept().unwrap();
    assert_eq!(t.peer(a), Some(host(1000)));
    assert_eq!(t.read_all(a), b"early");
    assert!(t.peer_closed(b));
    assert_eq!(t.recv(b, &mut [0; 4]).unwrap(), Recv::Eof);
    assert!(matches!(t.send_some(b, b"x"), Err(Error::Reset)));
}

#[test]
fn a_shutdown_in_answer_to_our_request_is_a_refusal() {
    let mut t = table();
    t.feed(event(9, shutdown(), 0, 0), &[]);
    assert!(matches!(
        t.connect(host(9), PORT),
        Err(Error::Refused { port: 9 })
    ));
    // Events for other connections that come meanwhile are recorded.
    t.feed(event(1000, VsockEventType::ConnectionRequest, 4096, 0), &[]);
    t.feed(event(10, VsockEventType::Connected, 4096, 0), &[]);
    let id = t.connect(host(10), PORT).unwrap();
    assert!(t.is_open(id));
    assert_eq!(t.backlog_len(), 1);
}
