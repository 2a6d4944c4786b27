//! The key store service VM: Ed25519 keys made and kept in the VM.
#![no_std]
#![no_main]
extern crate alloc;

use alloc::{collections::BTreeMap, string::String};

use ed25519_compact::{KeyPair, Seed};
use keystore_protocol::{KeyError, KeyStore, Request as Q, Response as A};
use vsock_transport::rpc::{Handler, Then};

svmc_runtime::main!(main);

fn main(env: &mut svmc_runtime::Env) -> Result<(), svmc_runtime::Error> {
    svmc_runtime::serve::<KeyStore, _>(env, &mut Keys::default(), &Default::default())
}

const MAX_KEYS: usize = 64;

#[derive(Default)]
struct Keys {
    keys: BTreeMap<String, KeyPair>,
    state: u64,
}

impl Keys {
    /// A seed stirred from the clock (splitmix64). An example only: a real
    /// key store takes entropy from virtio-rng or the CPU (RDRAND, RNDR).
    fn seed(&mut self) -> Seed {
        let mut seed = [0u8; 32];
        for chunk in seed.chunks_mut(8) {
            self.state = (self.state ^ svmc_runtime::now_us()).wrapping_add(0x9e37_79b9_7f4a_7c15);
            let z = (self.state ^ (self.state >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        Seed::new(seed)
    }

    fn key(&self, name: &str) -> Result<&KeyPair, KeyError> {
        self.keys.get(name).ok_or(KeyError::NoSuchKey)
    }
}

impl Handler<KeyStore> for Keys {
    fn handle(&mut self, request: Q) -> (A, Then) {
        let answer = match request {
            Q::Generate(name) if self.keys.contains_key(&name) => Err(KeyError::KeyExists),
            Q::Generate(_) if self.keys.len() >= MAX_KEYS => Err(KeyError::TooManyKeys),
            Q::Generate(name) => {
                let pair = KeyPair::from_seed(self.seed());
                let public = pair.pk.to_vec();
                self.keys.insert(name, pair);
                Ok(A::PublicKey(public))
            }
            Q::PublicKey(name) => self.key(&name).map(|k| A::PublicKey(k.pk.to_vec())),
            Q::Sign(name, msg) => self
                .key(&name)
                .map(|k| A::Signature(k.sk.sign(&msg, None).to_vec())),
            Q::Delete(name) => self
                .keys
                .remove(&name)
                .map(|_| A::Deleted)
                .ok_or(KeyError::NoSuchKey),
            Q::PowerOff => return (A::PoweringOff, Then::Stop),
        };
        (answer.unwrap_or_else(A::Err), Then::Continue)
    }
}
