//! The CDDL schema (`comm/svmc.cddl`) checked by an independent validator,
//! the `cddl` crate's CLI: every example body of `comm/WIRE.md` validates
//! against the root rule of its frame kind, and bodies that break the
//! schema do not (so a validator that passes everything is caught).
//! Frames captured from real end-to-end runs are checked by the
//! conformance suite (`conformance/`).

use svmc_comm::frame::{FrameKind, HEADER_LEN, Header};
use tests::cddl;

const WIRE: &str = include_str!("../../comm/WIRE.md");

/// `(name, frame bytes)` of every example in WIRE.md §7.
fn examples() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lines = WIRE.lines();
    while let Some(line) = lines.next() {
        let Some((name, _)) = line
            .strip_prefix("Example ")
            .and_then(|r| r.split_once(':'))
        else {
            continue;
        };
        assert_eq!(lines.next(), Some("```hex"), "example {name}");
        let mut bytes = Vec::new();
        for l in lines.by_ref().take_while(|l| *l != "```") {
            for pair in l.split('#').next().unwrap().split_whitespace() {
                bytes.push(u8::from_str_radix(pair, 16).unwrap());
            }
        }
        out.push((name.to_string(), bytes));
    }
    out
}

#[test]
fn every_example_body_validates_against_its_root_rule() {
    let tool = cddl::tool().unwrap();
    let examples = examples();
    assert!(examples.len() >= 12, "{} examples", examples.len());
    let mut checked = 0;
    for (name, frame) in examples {
        let header = Header::parse(frame[..HEADER_LEN].try_into().unwrap(), u32::MAX).unwrap();
        let Some(rule) = cddl::rule_for(header.kind) else {
            assert_eq!(header.kind, FrameKind::Goodbye);
            continue;
        };
        let body = frame[HEADER_LEN..].to_vec();
        let failed = cddl::validate(&tool, rule, &[(name.clone(), body.clone())]).unwrap();
        assert!(
            failed.is_empty(),
            "example {name} against {rule}: {failed:?}"
        );
        // And against the union, the schema's own first rule.
        let failed = cddl::validate(&tool, "frame-body", &[(name.clone(), body)]).unwrap();
        assert!(
            failed.is_empty(),
            "example {name} against frame-body: {failed:?}"
        );
        checked += 1;
    }
    assert!(checked >= 11);
}

#[test]
fn the_validator_refuses_bodies_that_break_the_schema() {
    let tool = cddl::tool().unwrap();
    let bad: &[(&str, &str, &[u8])] = &[
        ("request-body", "v1 request without id", b"\x64info"),
        ("request-body", "unknown variant", b"\x82\x01\x63sum"),
        (
            "request-body",
            "id over u32",
            b"\x82\x1b\x00\x00\x00\x01\x00\x00\x00\x00\x64info",
        ),
        ("request-body", "negative id", b"\x82\x20\x64info"),
        ("request-body", "three items", b"\x83\x01\x64info\x00"),
        (
            "request-body",
            "payload as text",
            b"\x82\x01\xa1\x63rev\x61a",
        ),
        ("response-body", "a request's variant", b"\x82\x01\x64info"),
        (
            "hello-body",
            "version as text",
            b"\xa3\x68protocol\x64svmc\x67version\x61x\x68max_body\x01",
        ),
        (
            "hello-body",
            "no max_body",
            b"\xa2\x68protocol\x64svmc\x67version\x02",
        ),
        (
            "error-body",
            "fatal as a number",
            b"\xa3\x64code\x07\x65fatal\x01\x66detail\x61x",
        ),
        (
            "error-body",
            "id as text",
            b"\xa4\x64code\x07\x65fatal\xf5\x66detail\x61x\x62id\x61x",
        ),
        (
            "hello-body",
            "ext as a number",
            b"\xa4\x68protocol\x64svmc\x67version\x02\x68max_body\x01\x63ext\x05",
        ),
        ("request-body", "meta not a map", b"\x83\x01\x05\x64info"),
        (
            "request-body",
            "deadline over u32",
            b"\x83\x01\xa1\x6bdeadline_ms\x1b\x00\x00\x00\x01\x00\x00\x00\x00\x64info",
        ),
        ("cancel-body", "id as text", b"\xa1\x62id\x61x"),
        ("chunk-body", "no data", b"\x81\x09"),
        ("chunk-body", "data as text", b"\x82\x09\x61x"),
    ];
    // R-ERR-7: a detail of 513 bytes; 512 is fine.
    let error_with_detail = |n: usize| {
        let mut b = b"\xa3\x64code\x07\x65fatal\xf5\x66detail\x79".to_vec();
        b.extend_from_slice(&(n as u16).to_be_bytes());
        b.extend(std::iter::repeat_n(b'x', n));
        b
    };
    let long = error_with_detail(513);
    let bad: Vec<(&str, &str, &[u8])> = bad
        .iter()
        .copied()
        .chain([("error-body", "detail over 512 bytes", &long[..])])
        .collect();
    let longest = error_with_detail(512);
    let failed = cddl::validate(&tool, "error-body", &[("512".into(), longest)]).unwrap();
    assert!(failed.is_empty(), "a 512-byte detail: {failed:?}");
    for (rule, what, body) in bad {
        let failed = cddl::validate(&tool, rule, &[(what.to_string(), body.to_vec())]).unwrap();
        assert_eq!(
            failed.len(),
            1,
            "{what}: the validator accepted it against {rule}"
        );
    }
    // The same tool run accepts a good body of each rule (so the refusals
    // above are about the bodies, not the set-up).
    let good: &[(&str, &[u8])] = &[
        ("request-body", b"\x82\x01\x64info"),
        ("response-body", b"\x82\x01\x63off"),
        (
            "hello-body",
            b"\xa3\x68protocol\x64svmc\x67version\x02\x68max_body\x01",
        ),
        (
            "error-body",
            b"\xa4\x64code\x07\x65fatal\xf5\x66detail\x61x\x62id\x05",
        ),
        ("request-body", b"\x83\x01\xa1\x66timing\xf5\x64info"),
        ("cancel-body", b"\xa1\x62id\x05"),
        ("chunk-body", b"\x82\x05\xf6"),
    ];
    for (rule, body) in good {
        let failed = cddl::validate(&tool, rule, &[("good".into(), body.to_vec())]).unwrap();
        assert!(failed.is_empty(), "{rule}: {failed:?}");
    }
}

#[test]
fn xtask_installs_the_version_the_tests_expect() {
    let setup = include_str!("../../xtask/src/setup.rs");
    let line = format!("CDDL_VERSION: &str = \"{}\";", cddl::VERSION);
    assert!(setup.contains(&line), "xtask/src/setup.rs must have {line}");
}
