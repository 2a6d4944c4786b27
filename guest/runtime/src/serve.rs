//! [`serve`]: a service's requests over every connection, with the heap
//! budget sized by the runtime ([`crate::budget`]).

use log::{debug, info, warn};
use svmc_comm::Protocol;
use vsock_transport::guest::ConnId;
use vsock_transport::rpc::many::{self, Event, ManyConfig};
use vsock_transport::rpc::{Budget, Handler, ServeConfig};

use crate::budget::{self, Limits, Plan};
use crate::entry::{Env, Error};
use crate::heap;

impl Env {
    /// How [`serve`] splits the heap for a protocol with `limits`: the
    /// budget for large requests and the largest request accepted (to
    /// report before serving, e.g. in an `Info` answer).
    pub fn plan(&self, limits: &Limits) -> Plan {
        budget::plan(
            self.heap_size(),
            self.config.max_conns,
            self.vsock.buffer_size(),
            limits,
        )
    }
}

/// Connects to the host ([`Env::connect_host`]), then serves protocol `P`
/// with `handler` on that connection and every one the host opens on the
/// service port, in one event loop, until the handler answers with
/// `Then::Stop`: up to `svmc.max_conns` connections at once, an idle one
/// closed for a newcomer after `svmc.idle_timeout_ms`, the rest refused
/// as busy (`vsock_transport::rpc::many::serve_many`). The heap budget
/// for large requests is sized from the heap, the connection limit and
/// `limits` ([`Env::plan`]). Returns when the handler stopped (the VM
/// then powers off when `main` returns), or on a device error.
pub fn serve<P, H>(env: &mut Env, handler: &mut H, limits: &Limits) -> Result<(), Error>
where
    P: Protocol,
    H: Handler<P> + ?Sized,
{
    let Plan { budget, max_body } = env.plan(limits);
    let boot = env.connect_host()?;
    info!(
        "serving up to {} connections at once; {} KiB for large requests, max_body {max_body}",
        env.config.max_conns,
        budget / 1024
    );
    let config = ManyConfig {
        serve: ServeConfig {
            max_body,
            now_us: crate::now_us,
            ..ServeConfig::default()
        },
        max_conns: env.config.max_conns,
        idle_timeout_us: env.config.idle_timeout_ms.saturating_mul(1000),
        budget: Budget::new(budget),
    };
    many::serve_many::<P, _, _>(&mut env.vsock, boot, handler, &config, log_event)
        .map_err(|e| Error::Vsock("serving", e))?;
    debug!("heap: {:?}", heap::stats());
    Ok(())
}

fn log_event(event: Event<'_, ConnId>) {
    match event {
        Event::Accepted(id) => debug!("connection {id}: serving"),
        Event::Held(id) => debug!("connection {id}: table full, held while probing for closes"),
        Event::Busy(id) => warn!("connection {id}: over the limit, refused as busy"),
        Event::Dropped(id) => warn!("connection {id}: over the limit, reset"),
        Event::Evicted(id) => info!("connection {id}: idle, closed for a new one"),
        Event::Ended(id, Ok(ended)) => {
            debug!("connection {id} ended: {ended:?}; heap {:?}", heap::stats())
        }
        Event::Ended(id, Err(e)) => warn!("connection {id} ended with an error: {e}"),
        _ => {}
    }
}
