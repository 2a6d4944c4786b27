//! The connection table on the host, over a fake device (`fake.rs`): the
//! tests feed it the events virtio-drivers' `VirtIOSocket::poll` would
//! deliver (including ones no well-behaved peer sends) and check the
//! packets it answers with. One file per topic.

extern crate std;

use alloc::vec::Vec;
use std::{format, vec};

use virtio_drivers::device::socket::{SocketError, VsockEventType};

use super::fake::*;
use super::poll::DUPLICATE_REQUEST_US;
use super::table::TABLE_CAPACITY;
use super::*;
use crate::endpoint::Endpoint;
use crate::{Error, Step};

mod accept;
mod close;
mod credit;
mod random;
mod workarounds;
