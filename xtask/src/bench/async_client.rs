//! The async client's figure: tasks sharing one `async_host::Client` on
//! one connection, against the same calls from one task.

use std::path::Path;
use std::time::Instant;

use vsock_transport::Timeouts;

use super::stats::Pair;
use super::{STEP, payload};

/// Tasks sharing one async client in the async figure.
pub const TASKS: usize = 8;
/// Calls per repetition of the async figure, over all tasks.
const CALLS: usize = 400;
/// Payload of the async figure's calls.
const PAYLOAD: usize = 64 * 1024;

/// The async client on one connection: [`CALLS`] reverses of [`PAYLOAD`]
/// bytes from [`TASKS`] tasks sharing it, against the same calls from one
/// task, alternately; bytes/s each way.
pub fn tasks(uds: &Path, port: u32, reps: usize) -> std::result::Result<Pair, String> {
    use std::sync::Arc;
    use vsock_transport::async_host::{self, Client};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("async client: runtime: {e}"))?;
    rt.block_on(async {
        let t = Timeouts::uniform(STEP);
        let stream = async_host::hybrid::connect(uds, port, &t)
            .await
            .map_err(|e| format!("async client: connect: {e}"))?;
        let client = Arc::new(
            Client::<svmc::ServiceVm>::hello(stream, svmc_comm::frame::DEFAULT_MAX_BODY, &t)
                .await
                .map_err(|e| format!("async client: HELLO: {e}"))?,
        );
        let run = |tasks: usize| {
            let client = client.clone();
            async move {
                let start = Instant::now();
                let mut hs = Vec::new();
                for _ in 0..tasks {
                    let client = client.clone();
                    hs.push(tokio::spawn(async move {
                        let req = svmc::Request::Reverse(payload(PAYLOAD));
                        for _ in 0..CALLS / tasks {
                            match client.call(&req).await {
                                Ok(svmc::Response::Reverse(b)) if b.len() == PAYLOAD => {}
                                other => return Err(format!("async client: {other:?}")),
                            }
                        }
                        Ok(())
                    }));
                }
                for h in hs {
                    h.await.map_err(|e| e.to_string())??;
                }
                Ok::<f64, String>((CALLS * PAYLOAD) as f64 / start.elapsed().as_secs_f64())
            }
        };
        run(TASKS).await?;
        let (mut many, mut one) = (Vec::new(), Vec::new());
        for i in 0..reps {
            if i % 2 == 0 {
                many.push(run(TASKS).await?);
                one.push(run(1).await?);
            } else {
                one.push(run(1).await?);
                many.push(run(TASKS).await?);
            }
        }
        client.shutdown().await.map_err(|e| e.to_string())?;
        Ok(Pair::of(many, one))
    })
}
