//! The heap budget: how much of the heap large requests may take, and so
//! the largest request a service accepts, from the heap's size, the
//! connection limit and the protocol's limits. A pure function, tested on
//! the host; `serve` applies it, so a service author never
//! computes a budget by hand.
//!
//! The heap holds the device's RX buffers, then per served connection
//! (`max_conns`) a receive ring (`buffer_size`) and the per-connection
//! allowance of the server core ([`CONNECTION_HEAP`]); per connection not
//! served yet (the refusals, the connections held over the limit and the
//! backlog the vsock layer allows) a ring of the small window it is
//! accepted with ([`guest::ACCEPT_WINDOW`]) and a small frame; and a margin
//! for fragmentation. The rest is the [`Budget`](vsock_transport::rpc::Budget)
//! for large requests, each of which holds
//! [`Limits::reserve_per_body_byte`] times its length. The largest request
//! accepted (the `max_body` of our `HELLO`) is what the budget can hold
//! once, at most the protocol's own limit; a request that does not fit the
//! budget when it arrives is dropped and answered with the protocol's
//! `out_of_memory`.

use svmc_comm::frame::DEFAULT_MAX_BODY;
use vsock_transport::guest;
use vsock_transport::rpc::many;
use vsock_transport::rpc::{CONNECTION_HEAP, RESERVE_PER_BODY_BYTE, SMALL_BODY};

/// The protocol's side of the sizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest request body the protocol needs; the `max_body`
    /// announced is at most this (less if the heap cannot hold it).
    pub max_body: u32,
    /// Heap bytes a large request holds per byte of its body:
    /// [`RESERVE_PER_BODY_BYTE`] (1) when the handler answers every large
    /// request in place (`Handler::handle_in_place`), twice that when it
    /// decodes them (the request and its answer exist at once).
    pub reserve_per_body_byte: usize,
}

impl Default for Limits {
    /// The frame format's limit ([`DEFAULT_MAX_BODY`], 16 MiB), for a
    /// handler that decodes its requests.
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            reserve_per_body_byte: 2 * RESERVE_PER_BODY_BYTE,
        }
    }
}

/// The heap's split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Bytes for large requests, shared by all connections.
    pub budget: usize,
    /// The largest request body accepted (our `HELLO`'s `max_body`).
    pub max_body: u32,
}

/// Heap kept out of the budget for fragmentation and everything else the
/// runtime allocates: 1/32 of the heap plus 128 KiB. (Large bodies are
/// the connections' receive buffers, kept and reused, so the heap does not
/// fragment with the traffic.)
pub fn margin(heap_size: usize) -> usize {
    heap_size / 32 + 128 * 1024
}

/// The heap's split for a heap of `heap_size` bytes, `max_conns`
/// connections with receive rings of `buffer_size` bytes, and `limits`.
/// Never fails: on a heap too small for the fixed part the budget is 0
/// and `max_body` the smallest a frame may announce (`SMALL_BODY`, or the
/// protocol's limit if that is less); such requests still fit the
/// per-connection allowance.
pub fn plan(heap_size: usize, max_conns: usize, buffer_size: u32, limits: &Limits) -> Plan {
    // Every connection in the table has a receive ring; the served ones
    // also the server core's allowance. Refusals, connections held over
    // the limit and the backlog are not served: their ring holds at most
    // the small window they were accepted with (`guest::ACCEPT_WINDOW`,
    // grown to `buffer_size` only when served), and they hold no more
    // than a small frame.
    let waiting = many::MAX_REFUSING + many::MAX_HELD + guest::DEFAULT_MAX_PENDING;
    let fixed = max_conns
        .max(1)
        .saturating_mul(buffer_size as usize + CONNECTION_HEAP)
        .saturating_add(guest::RX_QUEUE_BYTES)
        .saturating_add(waiting * (guest::ACCEPT_WINDOW as usize + 4096))
        .saturating_add(margin(heap_size));
    let budget = heap_size.saturating_sub(fixed);
    let fit = u32::try_from(budget / limits.reserve_per_body_byte.max(1)).unwrap_or(u32::MAX);
    let max_body = fit.max(SMALL_BODY).min(limits.max_body);
    Plan { budget, max_body }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn the_default_vm_accepts_the_frame_limit_in_place() {
        // 128 MiB of RAM (the launcher's default), 8 connections, the
        // guest's 256 KiB rings, the svmc service (answers in place).
        let svmc = Limits {
            reserve_per_body_byte: 1,
            ..Limits::default()
        };
        let p = plan(126 * MIB, 8, guest::CONNECTION_BUFFER_SIZE, &svmc);
        assert_eq!(p.max_body, DEFAULT_MAX_BODY);
        assert!(p.budget > 100 * MIB, "{p:?}");
    }

    #[test]
    fn a_decoding_handler_gets_half_the_largest_body() {
        let p = plan(
            16 * MIB,
            8,
            guest::CONNECTION_BUFFER_SIZE,
            &Limits::default(),
        );
        let q = plan(
            16 * MIB,
            8,
            guest::CONNECTION_BUFFER_SIZE,
            &Limits {
                reserve_per_body_byte: 1,
                ..Limits::default()
            },
        );
        assert_eq!(p.budget, q.budget);
        assert_eq!(p.max_body as usize, p.budget / 2);
        assert_eq!(q.max_body as usize, q.budget);
        assert!(q.max_body < DEFAULT_MAX_BODY);
    }

    #[test]
    fn more_connections_leave_less_budget() {
        let l = Limits::default();
        let few = plan(64 * MIB, 2, guest::CONNECTION_BUFFER_SIZE, &l);
        let many = plan(64 * MIB, 64, guest::CONNECTION_BUFFER_SIZE, &l);
        assert!(many.budget < few.budget);
    }

    #[test]
    fn the_protocol_limit_caps_max_body() {
        let l = Limits {
            max_body: 4096,
            ..Limits::default()
        };
        assert_eq!(plan(126 * MIB, 8, 1 << 18, &l).max_body, 4096);
    }

    #[test]
    fn hostile_sizes_neither_panic_nor_overflow() {
        let l = Limits::default();
        for heap in [0, 1, MIB, usize::MAX] {
            for conns in [0, 1, usize::MAX] {
                for buf in [0, u32::MAX] {
                    let p = plan(heap, conns, buf, &l);
                    assert!(p.budget <= heap);
                    assert!(p.max_body <= l.max_body);
                }
            }
        }
        let tiny = plan(MIB, 8, 1 << 18, &l);
        assert_eq!(
            tiny,
            Plan {
                budget: 0,
                max_body: SMALL_BODY
            }
        );
        let zero = Limits {
            max_body: 0,
            reserve_per_body_byte: 0,
        };
        assert_eq!(plan(usize::MAX, 1, 0, &zero).max_body, 0);
    }
}
