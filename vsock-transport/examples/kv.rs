//! A key-value store with its own protocol (not svmc's) on the hybrid
//! vsock backend: what another project writes to adopt these crates.
//!
//! One process plays all three parts over real Unix sockets: the VM's
//! vsock device (answers `CONNECT <port>` with `OK <port>`, as Firecracker
//! or vhost-device-vsock do), the service behind it (`rpc::serve` with a
//! [`Handler`]) and the host's client (`hybrid::connect`, then
//! `Client::hello`, calls and a pipelined batch).
//!
//! ```text
//! cargo run -p vsock-transport --features host-hybrid --example kv
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::thread;

use serde::{Deserialize, Serialize};
use vsock_transport::comm::Protocol;
use vsock_transport::comm::frame::DEFAULT_MAX_BODY;
use vsock_transport::host_stream::{HostStream, Peer};
use vsock_transport::rpc::{self, Client, Ended, Handler, ServeConfig, Then};
use vsock_transport::{Timeouts, hybrid};

/// The protocol: its name and version go into `HELLO`, so a client of
/// another protocol (or version) on the same port is refused at once.
struct Kv;

impl Protocol for Kv {
    const NAME: &'static str = "example.kv";
    const VERSION: u32 = 1;
    type Request = KvRequest;
    type Response = KvResponse;
}

#[derive(Debug, Serialize, Deserialize)]
enum KvRequest {
    Put { key: String, value: Vec<u8> },
    Get { key: String },
    Delete { key: String },
    Len,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum KvResponse {
    /// The previous value (`Put`, `Delete`) or the value (`Get`).
    Value(Option<Vec<u8>>),
    Len(u64),
}

/// The service: a map.
#[derive(Default)]
struct Store(BTreeMap<String, Vec<u8>>);

impl Handler<Kv> for Store {
    fn handle(&mut self, request: KvRequest) -> (KvResponse, Then) {
        let answer = match request {
            KvRequest::Put { key, value } => KvResponse::Value(self.0.insert(key, value)),
            KvRequest::Get { key } => KvResponse::Value(self.0.get(&key).cloned()),
            KvRequest::Delete { key } => KvResponse::Value(self.0.remove(&key)),
            KvRequest::Len => KvResponse::Len(self.0.len() as u64),
        };
        // A handler could also end the connection with `Then::Stop`.
        (answer, Then::Continue)
    }
}

/// The VM's side: a vsock device on `uds` whose guest serves [`Store`] on
/// `port`. Returns how the served connection ended.
fn vm(
    uds: &Path,
    port: u32,
) -> std::io::Result<thread::JoinHandle<vsock_transport::Result<Ended>>> {
    let listener = UnixListener::bind(uds)?;
    Ok(thread::spawn(move || {
        let (socket, _) = listener
            .accept()
            .map_err(|e| vsock_transport::Error::io("accept", e))?;
        // The device's half of the hybrid vsock set-up.
        let mut line = String::new();
        BufReader::new(&socket)
            .read_line(&mut line)
            .map_err(|e| vsock_transport::Error::io("reading CONNECT", e))?;
        assert_eq!(line, format!("{}{port}\n", hybrid::CONNECT));
        (&socket)
            .write_all(format!("{}{port}\n", hybrid::OK).as_bytes())
            .map_err(|e| vsock_transport::Error::io("writing OK", e))?;
        // The guest's service on the connection.
        let mut conn = HostStream::new(socket, Peer::Other("kv guest".into()), Timeouts::default());
        rpc::serve::<Kv, _, _>(&mut conn, &mut Store::default(), ServeConfig::default())
    }))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let uds = dir.path().join("vm.vsock");
    let port = 5000;
    let vm = vm(&uds, port)?;

    // The host: CONNECT through the device, HELLO, then requests.
    let conn = hybrid::connect(&uds, port, &Timeouts::default())?;
    let mut kv = Client::<_, Kv>::hello(conn, DEFAULT_MAX_BODY)?;
    let put = |key: &str, value: &str| KvRequest::Put {
        key: key.into(),
        value: value.into(),
    };
    assert_eq!(kv.call(&put("colour", "blue"))?, KvResponse::Value(None));
    assert_eq!(
        kv.call(&put("colour", "green"))?,
        KvResponse::Value(Some(b"blue".to_vec()))
    );

    // Pipelined: up to 8 requests in flight, answers in request order.
    let batch: Vec<_> = (0..100)
        .map(|i| put(&format!("key{i}"), &format!("value {i}")))
        .collect();
    for answer in kv.call_many(&batch, 8)? {
        assert_eq!(answer?, KvResponse::Value(None));
    }
    assert_eq!(kv.call(&KvRequest::Len)?, KvResponse::Len(101));
    let got = kv.call(&KvRequest::Get {
        key: "key42".into(),
    })?;
    assert_eq!(got, KvResponse::Value(Some(b"value 42".to_vec())));
    let gone = kv.call(&KvRequest::Delete {
        key: "colour".into(),
    })?;
    assert_eq!(gone, KvResponse::Value(Some(b"green".to_vec())));
    println!("kv: 100 keys stored in one batch; {kv:?}");

    // GOODBYE: the service ends cleanly.
    kv.close()?;
    let ended = vm.join().expect("the VM thread panicked")?;
    assert_eq!(ended, Ended::Goodbye);
    println!("kv: ok, the service ended with {ended:?}");
    Ok(())
}
