//! Feeds arbitrary bytes to the `HELLO` decoder as a peer's first frame
//! would reach it: `frame::decode` of a `HELLO` frame, then
//! `Hello::check` against the service protocol. Nothing may panic; a
//! decoded `HELLO` re-encodes to a frame that decodes to the same value;
//! `check` accepts exactly our protocol name and version.
#![no_main]

use svmc_comm::frame::{self, FrameKind};
use svmc::ServiceVm;
use svmc_comm::{Hello, Protocol};
use libfuzzer_sys::fuzz_target;

/// Small maximum so that the size checks are reached too.
const MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    if let Ok(hello) = frame::decode::<Hello>(data, FrameKind::Hello, MAX) {
        let ours = hello.protocol == <ServiceVm as Protocol>::NAME
            && hello.version == <ServiceVm as Protocol>::VERSION;
        assert_eq!(hello.check::<ServiceVm>().is_ok(), ours, "{hello:?}");
        let again = frame::encode(FrameKind::Hello, &hello, MAX).expect("re-encodes");
        assert_eq!(
            frame::decode::<Hello>(&again, FrameKind::Hello, MAX).expect("re-decodes"),
            hello
        );
    }
});
