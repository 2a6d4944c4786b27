//! Feeds arbitrary bytes to the hybrid vsock `OK <port>\n` reply parser
//! (`hybrid::parse_reply`). Nothing may panic; it accepts exactly
//! `OK ` + one or more ASCII digits whose value fits a `u32` + `\n`, and
//! returns that value; a rejection's message shows the bytes escaped (one
//! line, printable ASCII only).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vsock_transport::hybrid::parse_reply;

fn expected(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"OK ")?.strip_suffix(b"\n")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: u64 = 0;
    for d in digits {
        v = v * 10 + u64::from(d - b'0');
        if v > u64::from(u32::MAX) {
            return None;
        }
    }
    Some(v as u32)
}

fuzz_target!(|data: &[u8]| {
    match (parse_reply(data), expected(data)) {
        (Ok(n), Some(m)) => assert_eq!(n, m),
        (Err(e), None) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg:?}");
            assert!(msg.bytes().all(|b| b.is_ascii() && !b.is_ascii_control()), "{msg:?}");
        }
        (got, want) => panic!("parse_reply({data:?}) = {got:?}, expected {want:?}"),
    }
});
