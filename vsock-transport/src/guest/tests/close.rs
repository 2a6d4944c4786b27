//! Closes: the peer's `SHUTDOWN` and `RST`, ours and its bounded wait, and
//! calls on connections that are gone.

use super::*;

#[test]
fn after_the_peers_shutdown_data_is_read_to_the_end_and_answers_still_go() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.data(1000, b"last request", 65536, 0);
    t.control(1000, shutdown(), 65536, 0);
    assert!(t.peer_closed(id));
    assert_eq!(t.read_all(id), b"last request");
    assert_eq!(t.recv(id, &mut [0; 4]).unwrap(), Recv::Eof);
    assert_eq!(t.send_some(id, b"answer").unwrap(), 6);
    // Our SHUTDOWN, then the peer's RST ends it without one from us.
    t.close(id).unwrap();
    let sent = t.driver.take();
    assert_eq!(sent.last(), Some(&Sent::Shutdown(1000)));
    assert!(t.exists(id) && !t.is_open(id));
    t.control(1000, rst(), 65536, 6);
    assert_eq!(t.driver.take(), []);
    assert!(!t.exists(id));
}

#[test]
fn after_the_peers_reset_sends_fail_and_close_sends_nothing() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.data(1000, b"abc", 65536, 0);
    t.control(1000, rst(), 65536, 0);
    assert!(matches!(t.send_some(id, b"x"), Err(Error::Reset)));
    // What arrived before the reset is still read, then the end.
    assert_eq!(t.read_all(id), b"abc");
    assert_eq!(t.recv(id, &mut [0; 4]).unwrap(), Recv::Eof);
    // A second RST, out of order, changes nothing.
    t.control(1000, rst(), 65536, 0);
    t.close(id).unwrap();
    assert_eq!(t.driver.take(), []);
    assert!(!t.exists(id));
}

#[test]
fn reads_and_writes_on_a_closed_or_unknown_connection_fail() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.data(1000, b"unread", 65536, 0);
    t.close(id).unwrap();
    assert_eq!(t.driver.take(), [Sent::Shutdown(1000)]);
    assert_eq!(t.unread(), 0, "closing keeps the unread bytes");
    assert!(matches!(t.recv(id, &mut [0; 4]), Err(Error::ShutDown)));
    assert!(matches!(t.send_some(id, b"x"), Err(Error::ShutDown)));
    // Data after our SHUTDOWN is dropped: nobody reads it, and it would
    // hold heap and count as unread until the connection goes.
    t.data(1000, b"late", 65536, 0);
    t.data(1000, &vec![0; RX_BUFFER_SIZE], 65536, 0);
    assert_eq!(t.unread(), 0);
    assert!(matches!(t.recv(id, &mut [0; 4]), Err(Error::ShutDown)));
    t.close(id).unwrap();
    assert_eq!(t.driver.take(), [], "a second SHUTDOWN");
    // The peer answers with its own SHUTDOWN instead of RST: we reset.
    t.control(1000, shutdown(), 65536, 0);
    assert_eq!(t.driver.take(), [Sent::Rst(1000)]);
    assert!(!t.exists(id));
    // A handle that names nothing.
    assert!(matches!(t.recv(id, &mut [0; 4]), Err(Error::ShutDown)));
    assert!(matches!(t.send_some(id, b"x"), Err(Error::ShutDown)));
    t.close(id).unwrap();
    t.reset(id);
    t.serve(id);
    t.probe(id);
    assert_eq!(t.driver.take(), []);
}

#[test]
fn a_shutdown_without_answer_is_reset_after_the_limit() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.close(id).unwrap();
    t.driver.take();
    advance(Limits::default().shutdown_us - 1);
    t.tick();
    assert!(t.exists(id));
    assert_eq!(t.driver.take(), []);
    advance(1);
    t.tick();
    assert_eq!(t.driver.take(), [Sent::Rst(1000)]);
    assert!(!t.exists(id));
}

#[test]
fn a_device_error_on_shutdown_forgets_the_connection() {
    let mut t = table();
    let id = t.served(1000, 65536);
    t.driver.fail = Some(virtio_drivers::Error::QueueFull);
    assert!(t.close(id).is_err());
    assert!(!t.exists(id));
    // A send on a broken queue is an error, not a short write.
    let mut t = table();
    let id = t.served(1000, 65536);
    t.driver.fail = Some(virtio_drivers::Error::QueueFull);
    assert!(matches!(
        t.send_some(id, b"abc"),
        Err(Error::Virtio(virtio_drivers::Error::QueueFull))
    ));
}
