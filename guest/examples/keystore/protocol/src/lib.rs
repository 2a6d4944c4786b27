//! The key store's protocol: Ed25519 keys are made and kept in the VM;
//! only public keys and signatures leave it.
#![no_std]
extern crate alloc;

use alloc::{string::String, vec::Vec};

use serde::{Deserialize, Serialize};

/// The protocol, named in both sides' `HELLO`.
pub struct KeyStore;

impl svmc_comm::Protocol for KeyStore {
    const NAME: &'static str = "example.keystore";
    const VERSION: u32 = 1;
    type Request = Request;
    type Response = Response;
}

/// What the host asks, about keys it names. Answers: `Generate` and
/// `PublicKey` → `Response::PublicKey`, `Sign(name, message)` →
/// `Signature`, `Delete` → `Deleted`, `PowerOff` → `PoweringOff` (and the
/// keys die with the VM); a request that cannot be done → `Err`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Generate(String),
    PublicKey(String),
    Sign(String, #[serde(with = "serde_bytes")] Vec<u8>),
    Delete(String),
    PowerOff,
}

/// What the VM answers: a 32-byte Ed25519 public key, a 64-byte signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    PublicKey(#[serde(with = "serde_bytes")] Vec<u8>),
    Signature(#[serde(with = "serde_bytes")] Vec<u8>),
    Deleted,
    PoweringOff,
    Err(KeyError),
}

/// Why a request could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyError {
    NoSuchKey,
    KeyExists,
    TooManyKeys,
}
