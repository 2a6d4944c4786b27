//! `comm/WIRE.md` §9 maps the specification's rules to the conformance
//! suite's cases: every case it names is in the suite, and every case of
//! the suite is named there, so the table cannot promise a check that
//! does not run.

use std::collections::BTreeSet;

const WIRE: &str = include_str!("../../comm/WIRE.md");
const SUITE: &str = include_str!("conformance/main.rs");

#[test]
fn section_9_names_exactly_the_suites_cases() {
    let s9 = &WIRE[WIRE.find("## 9. Conformance").expect("§9")..];
    let s9 = &s9[..s9[1..].find("\n## ").map_or(s9.len(), |i| i + 1)];
    let named: BTreeSet<&str> = s9
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.starts_with("r_") || w.starts_with("cddl_"))
        .collect();
    let list = &SUITE[SUITE.find("const CASES").expect("CASES")..];
    let list = &list[..list.find("];").expect("end of CASES")];
    let cases: BTreeSet<&str> = list
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("r_") || w.starts_with("cddl_"))
        .collect();
    assert!(cases.len() > 60, "{} cases found", cases.len());
    let missing: Vec<_> = named.difference(&cases).collect();
    assert!(missing.is_empty(), "named in §9, not in CASES: {missing:?}");
    let unlisted: Vec<_> = cases.difference(&named).collect();
    assert!(
        unlisted.is_empty(),
        "in CASES, not named in §9: {unlisted:?}"
    );
}
