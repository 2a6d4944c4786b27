//! Random events and calls, hostile values included, against the table's
//! invariants.

use super::*;

/// A small deterministic generator (xorshift64*), so that a failing run
/// can be repeated from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A count as a hostile peer might announce it: small, at the edges,
    /// or anything.
    fn count(&mut self, around: u32) -> u32 {
        match self.below(6) {
            0 => 0,
            1 => u32::MAX,
            2 => around,
            3 => around.wrapping_add(self.below(3) as u32).wrapping_sub(1),
            4 => self.below(70_000) as u32,
            _ => self.next() as u32,
        }
    }
}

/// Random events and calls, hostile values included: the table never
/// panics, never sends an empty packet or more than the peer's credit (the
/// fake checks both), never buffers more than it advertised, and keeps no
/// more waiting connections than its backlog allows.
#[test]
fn random_events_and_calls_keep_the_tables_invariants() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut t = table();
        let mut ids: Vec<ConnId> = Vec::new();
        for step in 0..2_000 {
            let port = 1000 + rng.below(6) as u32;
            // The peer's view of a connection: what we sent, for
            // plausible forward counts.
            let sent = t
                .conns
                .iter()
                .find(|c| c.info.dst.port == port)
                .map_or(0, |c| c.credit.tx_cnt);
            let buf_alloc = rng.count(65536);
            let fwd_cnt = rng.count(sent);
            match rng.below(16) {
                0 | 1 => t.request(port, buf_alloc),
                2..=4 => {
                    let n = match rng.below(4) {
                        0 => 0,
                        1 => RX_BUFFER_SIZE,
                        _ => rng.below(5000) as usize,
                    };
                    t.data(port, &vec![step as u8; n], buf_alloc, fwd_cnt);
                }
                5 => {
                    let kind = match rng.below(5) {
                        0 => VsockEventType::Connected,
                        1 => shutdown(),
                        2 => rst(),
                        3 => VsockEventType::CreditRequest,
                        _ => VsockEventType::ConnectionRequest,
                    };
                    t.control(port, kind, buf_alloc, fwd_cnt);
                }
                6 => t.control(port, VsockEventType::CreditUpdate, buf_alloc, fwd_cnt),
                7 => {
                    let e = match rng.below(3) {
                        0 => SocketError::InvalidOperation,
                        1 => SocketError::BufferTooShort,
                        _ => SocketError::UnknownOperation(rng.next() as u16),
                    };
                    t.driver.events.push_back(Err(e.into()));
                    assert!(t.poll().unwrap());
                }
                8 => {
                    if let Some(id) = t.accept() {
                        if rng.below(2) == 0 {
                            t.serve(id);
                        }
                        ids.push(id);
                    }
                }
                9 | 10 => {
                    if let Some(&id) = ids.get(rng.below(ids.len() as u64 + 1) as usize) {
                        let mut buf = vec![0; rng.below(70_000) as usize];
                        let _ = t.recv(id, &mut buf);
                    }
                }
                11 | 12 => {
                    if let Some(&id) = ids.get(rng.below(ids.len() as u64 + 1) as usize) {
                        let _ = t.send_some(id, &vec![1; rng.below(200_000) as usize]);
                    }
                }
                13 => {
                    if let Some(&id) = ids.get(rng.below(ids.len() as u64 + 1) as usize) {
                        match rng.below(3) {
                            0 => drop(t.close(id)),
                            1 => t.reset(id),
                            _ => t.probe(id),
                        }
                    }
                }
                _ => {
                    advance(rng.below(2 * PROBE_US));
                    t.tick();
                }
            }
            t.driver.take();
            for c in &t.conns {
                assert!(
                    c.rx.len() <= c.credit.buffer_size as usize,
                    "seed {seed} step {step}: {} buffered of {}",
                    c.rx.len(),
                    c.credit.buffer_size
                );
                assert!(c.rx.capacity() <= (c.credit.buffer_size as usize).max(1) * 2);
            }
            assert!(
                t.backlog_len() <= DEFAULT_MAX_PENDING,
                "seed {seed} step {step}"
            );
            ids.retain(|&id| t.exists(id));
        }
    }
}
