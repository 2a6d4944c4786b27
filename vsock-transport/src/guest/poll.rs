//! What the device delivers: [`VsockTable::poll`] takes one packet,
//! queues its data in the ring of its connection, and records what its
//! header says (a new connection, an answer, a close, the peer's credit),
//! with the defences against the device back-ends' known misbehaviour
//! (stale RX buffers, packets with operation 0, repeated `REQUEST`s) that
//! the module docs of `guest` describe.

use core::hint::spin_loop;

use log::{debug, trace, warn};
use virtio_drivers::device::socket::{DisconnectReason, SocketError, VsockEventType};

use super::conn::{Key, Phase};
use super::device::{Device, virtio};
use super::table::{ACCEPT_WINDOW, VsockTable};
use crate::Result;

/// A `REQUEST` for a connection we know that comes within this many
/// microseconds of the first is the same request again, and is ignored
/// (seen behind vhost-device-vsock 0.3.0, which never reuses a host port
/// while it knows the connection, so a repeat cannot be a new one). A
/// later one is a new connection on a reused port (the Linux host
/// allocates ephemeral ports again): the old connection is gone.
pub(super) const DUPLICATE_REQUEST_US: u64 = 1_000_000;

impl<D: Device> VsockTable<D> {
    /// Processes at most one event from the device; `Ok(false)` if there
    /// was none.
    ///
    /// A malformed packet (bad header or length, unknown operation) is
    /// dropped with a warning: it concerns that packet only, and the driver
    /// has recycled its buffer. Other device errors are returned.
    pub fn poll(&mut self) -> Result<bool> {
        self.polls += 1;
        let now = self.now();
        let guest_cid = self.driver.guest_cid();
        let conns = &mut self.conns;
        let mut stale = None;
        let result = self.driver.poll(|event, body| {
            let e = D::event(&event);
            if e.destination.cid == guest_cid
                && let Some(c) = conns
                    .iter_mut()
                    .find(|c| c.info.dst == e.source && c.info.src_port == e.destination.port)
            {
                if !c.credit.plausible(e.fwd_cnt) {
                    // An RX buffer the device did not write (see
                    // `Credit::plausible`): an old packet, not news.
                    stale = Some((c.id, e.fwd_cnt));
                    return Ok(None);
                }
                D::update_for_event(&mut c.info, &event);
                c.last_seen = now;
                c.credit.peer_status(e.buf_alloc, e.fwd_cnt);
                // After our SHUTDOWN nobody reads the connection any more
                // (`close`): its data would only hold heap, and count as
                // unread, until the peer's RST.
                if let VsockEventType::Received { .. } = e.kind
                    && !matches!(c.phase, Phase::Closing(_))
                    && !c.rx.push(&c.credit, body)
                {
                    c.overrun = true;
                }
            }
            Ok(Some(event))
        });
        if let Some((id, fwd_cnt)) = stale {
            debug!("vsock {id}: dropped a stale packet (fwd_cnt {fwd_cnt} goes back)");
            self.stale_packets = self.stale_packets.wrapping_add(1);
            return Ok(true);
        }
        match result {
            Ok(Some(event)) => {
                self.record(&event, guest_cid);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(virtio_drivers::Error::SocketDeviceError(SocketError::InvalidOperation)) => {
                // Operation 0: vhost-device-vsock's report of a failed read
                // of some host socket, with the header zeroed.
                self.probe_all();
                Ok(true)
            }
            Err(virtio_drivers::Error::SocketDeviceError(
                e @ (SocketError::BufferTooShort
                | SocketError::InvalidNumber
                | SocketError::UnknownOperation(_)
                | SocketError::UnexpectedDataInPacket),
            )) => {
                // vhost-device-vsock 0.3.0 hands back RX buffers it did
                // not write (see `Credit::plausible`): an old RW header
                // whose length the used length does not cover.
                self.malformed_packets = self.malformed_packets.wrapping_add(1);
                if self.malformed_packets.is_power_of_two() {
                    warn!(
                        "vsock: dropped a malformed packet: {e} ({} so far)",
                        self.malformed_packets
                    );
                }
                Ok(true)
            }
            Err(e) => Err(virtio(e)),
        }
    }

    /// After a packet with operation 0 (see the module docs): a credit
    /// update on every connected connection. vhost-device-vsock re-arms its
    /// read of the host's socket on a credit update, and the second read of
    /// a socket that failed returns the end of the stream, which it reports
    /// as `SHUTDOWN`: so the connection that the zeroed packet was about
    /// learns that it is closed, instead of staying silent for ever. For the
    /// others it is a harmless repetition of our credit.
    pub(super) fn probe_all(&mut self) {
        self.op0_packets = self.op0_packets.wrapping_add(1);
        if self.op0_packets.is_power_of_two() {
            warn!(
                "vsock: a packet with operation 0 (a failed host socket, connection unknown; \
                 {} so far); probing {} connections",
                self.op0_packets,
                self.conns.len()
            );
        }
        for s in &self.conns {
            if s.phase == Phase::Connected {
                let _ = self.driver.credit_update(&s.info);
            }
        }
    }

    /// [`GuestVsock::poll`](super::GuestVsock::poll), and a spin-loop hint if there was nothing.
    pub fn poll_or_spin(&mut self) -> Result<()> {
        if !self.poll()? {
            spin_loop();
        }
        Ok(())
    }

    /// Records what `event` says about its connection: a new one to
    /// accept (or refuse), an answer to our `REQUEST`, a close, a credit
    /// request.
    fn record(&mut self, event: &D::Event, guest_cid: u64) {
        trace!("vsock: {event:?}");
        let e = D::event(event);
        if e.destination.cid != guest_cid {
            return;
        }
        let key = Key {
            peer: e.source,
            local_port: e.destination.port,
        };
        let found = self.conns.iter().position(|s| s.key() == key);
        if e.kind == VsockEventType::ConnectionRequest {
            if let Some(i) = found {
                let old = &self.conns[i];
                let age = self.now().wrapping_sub(old.accepted_at);
                if age < DUPLICATE_REQUEST_US {
                    // The same connection again: answering it twice makes
                    // vhost-device-vsock 0.3.0 write a second `OK` line
                    // into the host's stream, and forgetting the first
                    // loses what it holds.
                    warn!(
                        "vsock {}: a second REQUEST from {}:{} {} us after the first: ignored",
                        old.id, key.peer.cid, key.peer.port, age
                    );
                    return;
                }
                // Later, a request for a connection we still know is a
                // new connection on a reused port: the old one is gone.
                let old = old.id;
                self.forget(old);
            }
            let mut info = self.new_info(key, ACCEPT_WINDOW.min(self.buffer_size));
            D::update_for_event(&mut info, event);
            if !self.listening.contains(&key.local_port) {
                let _ = self.driver.force_close(&info);
                return;
            }
            if self.backlog.len() >= self.max_pending {
                warn!(
                    "vsock: {} connections already wait to be served; resetting {}:{}",
                    self.backlog.len(),
                    key.peer.cid,
                    key.peer.port
                );
                let _ = self.driver.force_close(&info);
                return;
            }
            if let Err(e) = self.driver.accept(&info) {
                warn!("vsock: accepting {}:{}: {e}", key.peer.cid, key.peer.port);
                return;
            }
            let id = self.insert(info, Phase::Connected);
            if let Some(s) = self.state(id) {
                s.credit.peer_status(e.buf_alloc, e.fwd_cnt);
            }
            self.backlog.push_back(id);
            return;
        }
        let Some(i) = found else {
            return;
        };
        let state = &mut self.conns[i];
        let id = state.id;
        if state.overrun {
            warn!("vsock {id}: the peer sent more than our credit allowed; resetting");
            self.finish(id, true);
            return;
        }
        match e.kind {
            VsockEventType::Connected if state.phase == Phase::Connecting => {
                state.phase = Phase::Connected;
            }
            VsockEventType::Disconnected { reason } => match state.phase {
                // The answer to our SHUTDOWN (or the peer's own): done.
                Phase::Closing(_) => self.finish(id, reason == DisconnectReason::Shutdown),
                _ => state.phase = Phase::PeerClosed(reason),
            },
            VsockEventType::CreditRequest => {
                if let Err(e) = self.driver.credit_update(&state.info) {
                    warn!("vsock {id}: credit update: {e}");
                }
            }
            _ => {}
        }
    }
}
