use alloc::vec::Vec;

use super::*;

/// `[id, meta, "info"]` with the meta's bytes as given.
fn body(id: &[u8], meta: &[u8]) -> Vec<u8> {
    let mut b = alloc::vec![0x83];
    b.extend_from_slice(id);
    b.extend_from_slice(meta);
    b.extend_from_slice(b"\x64info");
    b
}

#[test]
fn the_request_meta_fast_encoder_writes_what_serde_writes() {
    for ms in [0, 23, 24, 255, 256, 65_535, 65_536, u32::MAX] {
        let meta = RequestMeta {
            deadline_ms: Some(ms),
            ..RequestMeta::default()
        };
        let mut frame = Vec::new();
        crate::envelope::encode_request_into(RequestId(9), &"info", 1 << 20, &mut frame).unwrap();
        let (mut a, mut b) = (frame.clone(), frame);
        insert_request_meta(&mut a, 0, 0, &meta, 1 << 20).unwrap();
        insert_meta(&mut b, 0, 0, &meta, 1 << 20).unwrap();
        assert_eq!(a, b, "{ms}");
    }
}

#[test]
fn the_response_meta_fast_encoder_writes_what_serde_writes() {
    for (q, h) in [(0, 0), (23, 24), (300, 70_000), (u64::MAX, 1 << 33)] {
        let meta = ResponseMeta {
            queued_us: Some(q),
            handled_us: Some(h),
            stats: None,
        };
        let mut frame = Vec::new();
        crate::envelope::encode_response_into(RequestId(9), &"ok", 1 << 20, &mut frame).unwrap();
        let (mut a, mut b) = (frame.clone(), frame);
        insert_response_meta(&mut a, 0, 0, &meta, 1 << 20).unwrap();
        insert_meta(&mut b, 0, 0, &meta, 1 << 20).unwrap();
        assert_eq!(a, b, "{q} {h}");
    }
}

#[test]
fn the_request_meta_fast_path_agrees_with_serde() {
    let deadline = |n: &[u8]| {
        let mut m = b"\xa1\x6bdeadline_ms".to_vec();
        m.extend_from_slice(n);
        m
    };
    let cases = [
        body(b"\x07", &deadline(b"\x18\x64")),
        body(b"\x1a\x00\x01\x00\x00", &deadline(b"\x19\x75\x30")),
        body(b"\x00", &deadline(b"\x00")),
        // Not the fast shape: through serde.
        body(b"\x07", b"\xa2\x6bdeadline_ms\x01\x66timing\xf5"),
        body(b"\x07", b"\xa0"),
        // Too large for the field, the key alone, no message after it.
        body(b"\x07", &deadline(b"\x1b\x00\x00\x00\x01\x00\x00\x00\x00")),
        body(b"\x07", b"\xa1\x6bdeadline_ms"),
        {
            let mut b = body(b"\x07", &deadline(b"\x01"));
            b.truncate(b.len() - 5);
            b
        },
    ];
    for c in cases {
        let (mut a, mut b) = (c.clone(), c.clone());
        let fast = split_request_meta(&mut a);
        let slow = split_meta::<RequestMeta>(&mut b);
        assert_eq!(fast, slow, "{c:x?}");
        if let Ok((start, _)) = fast {
            assert_eq!(a[start..], b[start..], "{c:x?}");
        }
    }
}
