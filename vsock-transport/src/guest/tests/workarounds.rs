//! The defences against device back-ends that misbehave (vhost-device-vsock
//! 0.3.0, see the module docs of `guest`): stale and malformed packets,
//! packets with operation 0, probes of silent peers and nudges of starved
//! senders.

use super::*;

#[test]
fn a_credit_count_that_goes_back_or_ahead_is_a_stale_packet() {
    let mut t = table();
    let id = t.served(1000, 4096);
    assert_eq!(t.send_some(id, &[0; 3000]).unwrap(), 3000);
    t.control(1000, VsockEventType::CreditUpdate, 4096, 2000);
    t.driver.take();
    // Back from 2000 to 1000: an old header.
    t.control(1000, VsockEventType::CreditUpdate, 4096, 1000);
    // More forwarded than we ever sent.
    t.data(1000, b"forged", 4096, 3001);
    t.control(1000, rst(), 4096, u32::MAX);
    assert_eq!(t.stale_packets(), 3);
    let c = t.credit(id);
    assert_eq!(
        (c.peer_buf_alloc, c.peer_fwd_cnt, c.tx_cnt),
        (4096, 2000, 3000)
    );
    assert_eq!(t.unread(), 0, "a stale packet's data was kept");
    assert!(t.is_open(id), "a stale RST closed the connection");
    // The credit is still that of the last real packet: 3096 free.
    assert_eq!(t.send_some(id, &[0; 4000]).unwrap(), 3096);
    // A count equal to the last one, or between it and what we sent, is real.
    t.data(1000, b"ok", 4096, 2000);
    t.control(1000, VsockEventType::CreditUpdate, 4096, 6096);
    assert_eq!(t.stale_packets(), 3);
    assert_eq!(t.read_all(id), b"ok");
}

#[test]
fn a_silent_peer_is_probed_once_per_period() {
    let mut t = table();
    let id = t.served(1000, 65536);
    advance(PROBE_US - 1);
    t.tick();
    assert_eq!(t.driver.take(), []);
    advance(1);
    t.tick();
    t.tick();
    let update = || Sent::CreditUpdate {
        port: 1000,
        buf_alloc: CONNECTION_BUFFER_SIZE,
        fwd_cnt: 0,
    };
    assert_eq!(t.driver.take(), [update()]);
    // Hearing from the peer restarts the period.
    advance(PROBE_US / 2);
    t.control(1000, VsockEventType::CreditUpdate, 65536, 0);
    advance(PROBE_US / 2);
    t.tick();
    assert_eq!(t.driver.take(), []);
    // So does a probe of that connection.
    t.probe(id);
    assert_eq!(t.driver.take(), [update()]);
    advance(PROBE_US - 1);
    t.tick();
    assert_eq!(t.driver.take(), []);
}

#[test]
fn a_starved_sender_nudges_the_peer_every_nudge_period() {
    let mut t = table();
    let id = t.served(1000, 100);
    assert_eq!(t.send_some(id, &[0; 100]).unwrap(), 100);
    assert_eq!(t.send_some(id, &[0; 10]).unwrap(), 0);
    t.driver.take();
    advance(NUDGE_US - 1);
    t.tick();
    assert_eq!(t.driver.take(), [], "nudged before NUDGE_US");
    advance(1);
    t.tick();
    let nudge = || Sent::CreditUpdate {
        port: 1000,
        buf_alloc: CONNECTION_BUFFER_SIZE,
        fwd_cnt: 0,
    };
    assert_eq!(t.driver.take(), [nudge()]);
    t.tick();
    assert_eq!(t.driver.take(), [], "nudged twice in one period");
    advance(NUDGE_US);
    t.tick();
    assert_eq!(t.driver.take(), [nudge()]);
    // Credit comes, the bytes go: no more nudges.
    t.control(1000, VsockEventType::CreditUpdate, 100, 100);
    assert_eq!(t.send_some(id, &[0; 10]).unwrap(), 10);
    t.driver.take();
    advance(NUDGE_US);
    t.tick();
    assert_eq!(t.driver.take(), []);
}

#[test]
fn operation_0_probes_every_connected_connection() {
    let mut t = table();
    let a = t.served(1000, 65536);
    let b = t.served(1001, 65536);
    let c = t.served(1002, 65536);
    t.close(c).unwrap();
    t.driver.take();
    t.driver
        .events
        .push_back(Err(SocketError::InvalidOperation.into()));
    assert!(t.poll().unwrap());
    let ports: Vec<u32> = t
        .driver
        .take()
        .iter()
        .map(|s| match s {
            Sent::CreditUpdate { port, .. } => *port,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(ports, [1000, 1001]);
    assert!(t.is_open(a) && t.is_open(b));
}

#[test]
fn malformed_packets_are_dropped_and_other_device_errors_returned() {
    let mut t = table();
    let id = t.served(1000, 65536);
    for e in [
        SocketError::BufferTooShort,
        SocketError::InvalidNumber,
        SocketError::UnknownOperation(42),
        SocketError::UnexpectedDataInPacket,
    ] {
        t.driver.events.push_back(Err(e.into()));
        assert!(t.poll().unwrap());
    }
    assert_eq!(t.malformed_packets, 4);
    t.driver
        .events
        .push_back(Err(virtio_drivers::Error::NotReady));
    assert!(matches!(
        t.poll(),
        Err(Error::Virtio(virtio_drivers::Error::NotReady))
    ));
    assert!(!t.poll().unwrap(), "an event out of nothing");
    assert!(t.is_open(id));
    assert_eq!(t.driver.take(), []);
}
