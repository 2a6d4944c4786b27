//! Flow control in both directions: the accept window and its growth,
//! credit updates after reads, and sends cut to what the peer's credit
//! allows.

use super::*;

#[test]
fn a_peer_that_ignores_the_accept_window_is_reset() {
    let mut t = table();
    let id = t.accepted(1000, 65536);
    t.data(1000, &vec![1; ACCEPT_WINDOW as usize], 65536, 0);
    assert_eq!(t.driver.take(), []);
    // One byte beyond the window: the data is lost, so the connection goes.
    t.data(1000, &[2], 65536, 0);
    assert_eq!(t.driver.take(), [Sent::Rst(1000)]);
    assert!(!t.exists(id));
    assert_eq!(t.unread(), 0);
}

#[test]
fn serving_grows_the_window_once_and_tells_the_peer() {
    let mut t = table();
    let id = t.accepted(1000, 65536);
    t.serve(id);
    assert_eq!(
        t.driver.take(),
        [Sent::CreditUpdate {
            port: 1000,
            buf_alloc: CONNECTION_BUFFER_SIZE,
            fwd_cnt: 0
        }]
    );
    t.serve(id);
    assert_eq!(t.driver.take(), [], "the window grows only once");
    // The whole buffer fits, in packets of the largest size...
    for _ in 0..CONNECTION_BUFFER_SIZE as usize / RX_BUFFER_SIZE {
        t.data(1000, &vec![7; RX_BUFFER_SIZE], 65536, 0);
    }
    assert_eq!(t.unread(), CONNECTION_BUFFER_SIZE as usize);
    assert!(t.exists(id));
    // ... and the ring holds no more than the buffer.
    let ring = t.conns[0].rx.capacity();
    assert!(ring <= CONNECTION_BUFFER_SIZE as usize, "ring of {ring}");
    // One byte more is an overrun.
    t.data(1000, &[8], 65536, 0);
    assert_eq!(t.driver.take(), [Sent::Rst(1000)]);
    assert!(!t.exists(id));
}

#[test]
fn reading_a_quarter_of_the_buffer_sends_a_credit_update() {
    let mut t = table();
    let id = t.served(1000, 65536);
    let quarter = CONNECTION_BUFFER_SIZE as usize / 4;
    t.data(1000, &vec![1; RX_BUFFER_SIZE], 65536, 0);
    t.data(1000, &vec![2; RX_BUFFER_SIZE], 65536, 0);
    let mut buf = vec![0; 1000];
    let mut read = 0;
    while read + 1000 < quarter {
        assert_eq!(t.recv(id, &mut buf).unwrap(), Recv::Data(1000));
        read += 1000;
    }
    assert_eq!(t.driver.take(), [], "an update before a quarter was read");
    let rest = quarter - read;
    assert_eq!(t.recv(id, &mut buf[..rest]).unwrap(), Recv::Data(rest));
    assert_eq!(
        t.driver.take(),
        [Sent::CreditUpdate {
            port: 1000,
            buf_alloc: CONNECTION_BUFFER_SIZE,
            fwd_cnt: quarter as u32
        }]
    );
}

#[test]
fn a_credit_request_is_answered() {
    let mut t = table();
    let _id = t.served(1000, 65536);
    t.data(1000, b"abc", 65536, 0);
    t.control(1000, VsockEventType::CreditRequest, 65536, 0);
    assert_eq!(
        t.driver.take(),
        [Sent::CreditUpdate {
            port: 1000,
            buf_alloc: CONNECTION_BUFFER_SIZE,
            fwd_cnt: 0
        }]
    );
}

#[test]
fn sends_stop_at_the_peers_credit_and_go_on_after_its_update() {
    let mut t = table();
    let id = t.served(1000, 1000);
    let msg = pattern(2500);
    assert_eq!(t.send_some(id, &msg).unwrap(), 1000);
    // The rest did not fit: the driver asked for credit, once.
    assert_eq!(
        t.driver.take(),
        [
            Sent::Rw(1000, msg[..1000].to_vec()),
            Sent::CreditRequest(1000)
        ]
    );
    assert_eq!(t.send_some(id, &msg[1000..]).unwrap(), 0);
    assert_eq!(t.send_some(id, &msg[1000..]).unwrap(), 0);
    assert_eq!(t.driver.take(), []);
    // The peer read 600 bytes.
    t.control(1000, VsockEventType::CreditUpdate, 1000, 600);
    assert_eq!(t.send_some(id, &msg[1000..]).unwrap(), 600);
    t.control(1000, VsockEventType::CreditUpdate, 1000, 1600);
    assert_eq!(t.send_some(id, &msg[1600..]).unwrap(), 900);
    let (bytes, _) = rw(&t.driver.take(), 1000);
    assert_eq!(bytes, msg[1000..]);
    let c = t.credit(id);
    assert_eq!((c.tx_cnt, c.peer_fwd_cnt), (2500, 1600));
}

#[test]
fn a_huge_peer_buffer_still_gets_packets_of_at_most_max_packet() {
    let mut t = table();
    let id = t.served(1000, u32::MAX);
    let msg = pattern(3 * MAX_PACKET + 10);
    assert_eq!(t.send_some(id, &msg).unwrap(), msg.len());
    let (bytes, sizes) = rw(&t.driver.take(), 1000);
    assert_eq!(bytes, msg);
    assert_eq!(sizes, [MAX_PACKET, MAX_PACKET, MAX_PACKET, 10]);
}

#[test]
fn a_peer_with_no_buffer_gets_nothing() {
    let mut t = table();
    let id = t.served(1000, 0);
    assert_eq!(t.send_some(id, b"abc").unwrap(), 0);
    let sent = t.driver.take();
    assert_eq!(rw(&sent, 1000).0, b"");
    // The driver asked for credit; when it comes, the bytes go.
    assert!(sent.contains(&Sent::CreditRequest(1000)));
    t.control(1000, VsockEventType::CreditUpdate, 2, 0);
    assert_eq!(t.send_some(id, b"abc").unwrap(), 2);
    assert_eq!(rw(&t.driver.take(), 1000).0, b"ab");
}

#[test]
fn a_peer_that_shrinks_its_buffer_below_what_is_in_flight_gets_nothing() {
    // Nothing more goes, not even an empty packet (the driver's free space
    // wraps around), until the peer has read enough.
    let mut t = table();
    let id = t.served(1001, 4096);
    assert_eq!(t.send_some(id, &[0; 4096]).unwrap(), 4096);
    t.control(1001, VsockEventType::CreditUpdate, 100, 0);
    assert_eq!(t.send_some(id, &[0; 10]).unwrap(), 0);
    assert_eq!(rw(&t.driver.take(), 1001).1, [4096]);
    // Still 96 in flight: 4 free, too little for the 10 (see next_chunk).
    t.control(1001, VsockEventType::CreditUpdate, 100, 4000);
    assert_eq!(t.send_some(id, &[0; 10]).unwrap(), 0);
    // All read: the 10 go.
    t.control(1001, VsockEventType::CreditUpdate, 100, 4096);
    assert_eq!(t.send_some(id, &[0; 10]).unwrap(), 10);
    assert_eq!(rw(&t.driver.take(), 1001).1, [10]);
}

#[test]
fn a_forged_forward_count_in_a_request_only_stalls_its_own_connection() {
    // A REQUEST says the peer has forwarded bytes we never sent: nothing
    // can be sent (no empty packets either) until a packet of the peer
    // brings a count that can be real.
    let mut t = table();
    t.deliver(
        event(1000, VsockEventType::ConnectionRequest, 65536, 12345),
        &[],
    );
    let id = t.accept().unwrap();
    t.serve(id);
    t.driver.take();
    assert_eq!(t.send_some(id, b"answer").unwrap(), 0);
    assert_eq!(rw(&t.driver.take(), 1000).0, b"");
    t.control(1000, VsockEventType::CreditUpdate, 65536, 0);
    assert_eq!(t.stale_packets(), 0);
    assert_eq!(t.send_some(id, b"answer").unwrap(), 6);
    assert_eq!(rw(&t.driver.take(), 1000).0, b"answer");
}
