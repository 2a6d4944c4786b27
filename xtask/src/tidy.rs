//! Repository hygiene checks, as ordinary `#[test]`s (rust-analyzer's
//! `tidy.rs`): the lists the docs give are checked against the sources
//! they copy, so that a suite, an xtask command or a cargo feature added
//! in one place and not in the other fails `cargo test -p xtask`.
//!
//! - the README's suites (the `tests` row of the crate table, and the
//!   Development section) against `tests::suites::SUITES`;
//! - the README's xtask commands (the `xtask` row) against
//!   [`crate::flags::Command`];
//! - vsock-transport's README feature table against the `[features]` of
//!   its Cargo.toml;
//! - no comment or doc points at an issue number of this project's
//!   tracker, which a reader cannot open (an upstream one, `owner/repo
//!   issue N`, is fine; BENCHMARKS.md's headings are history).

use std::collections::BTreeSet;

use clap::CommandFactory;

fn read(path: &str) -> String {
    let p = crate::util::root().join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The README's crate-table row of `krate` (`| [`krate`](...) | ... |`).
fn row<'a>(readme: &'a str, krate: &str) -> &'a str {
    let start = format!("| [`{krate}`]");
    readme
        .lines()
        .find(|l| l.starts_with(&start))
        .unwrap_or_else(|| panic!("README.md: no crate-table row for {krate}"))
}

/// The backticked words of `text` outside parentheses, in order.
fn top_level_code(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut code) = (0usize, None::<String>);
    for c in text.chars() {
        match (c, code.as_mut()) {
            ('`', Some(_)) => {
                let word = code.take().unwrap();
                if depth == 0 {
                    out.push(word);
                }
            }
            (c, Some(w)) => w.push(c),
            ('`', None) => code = Some(String::new()),
            ('(', None) => depth += 1,
            (')', None) => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    out
}

/// The text of `s` between `from` and the next `to`.
fn between<'a>(s: &'a str, from: &str, to: &str) -> &'a str {
    let start = s.find(from).unwrap_or_else(|| panic!("{from:?} not found")) + from.len();
    let len = s[start..]
        .find(to)
        .unwrap_or_else(|| panic!("{to:?} not found after {from:?}"));
    &s[start..start + len]
}

fn sorted<I: IntoIterator<Item = S>, S: Into<String>>(i: I) -> BTreeSet<String> {
    i.into_iter().map(Into::into).collect()
}

fn suites() -> BTreeSet<String> {
    sorted(tests::suites::SUITES.iter().map(|s| s.name))
}

/// Checks the suite lists of `readme` (the text of README.md).
fn check_suites(readme: &str) -> Result<(), String> {
    let want = suites();
    let tests_row = between(row(readme, "tests"), "real device daemon:", "One runner");
    let in_row = sorted(top_level_code(tests_row));
    let dev = between(readme, "runs the QEMU suites (", " at CI sizes");
    let in_dev = sorted(top_level_code(dev));
    for (what, got) in [
        ("the `tests` row of the crate table", in_row),
        ("the Development section's run-e2e", in_dev),
    ] {
        if got != want {
            return Err(format!(
                "README.md, {what}: suites {got:?}, tests::suites::SUITES has {want:?}"
            ));
        }
    }
    Ok(())
}

/// Checks the xtask commands of `readme`'s `xtask` row.
fn check_commands(readme: &str) -> Result<(), String> {
    let want: Vec<String> = crate::flags::Xtask::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    let listed = between(row(readme, "xtask"), "`cargo xtask ", "`");
    let got: Vec<String> = listed.split("\\|").map(|c| c.trim().to_string()).collect();
    if sorted(got.clone()) != sorted(want.clone()) {
        return Err(format!(
            "README.md, the `xtask` row: commands {got:?}, flags.rs declares {want:?}"
        ));
    }
    Ok(())
}

/// The features of vsock-transport's Cargo.toml (without `default`).
fn transport_features(manifest: &str) -> BTreeSet<String> {
    let section = between(manifest, "\n[features]\n", "\n[");
    section
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim().to_string()))
        .filter(|k| k != "default")
        .collect()
}

/// Checks vsock-transport's README feature table against `manifest`.
fn check_features(transport_readme: &str, manifest: &str) -> Result<(), String> {
    let want = transport_features(manifest);
    let table = transport_readme
        .lines()
        .skip_while(|l| !l.starts_with("| feature"))
        .skip(2)
        .take_while(|l| l.starts_with('|'));
    let got = sorted(table.filter_map(|l| {
        let cell = l.split('|').nth(1)?.trim();
        Some(cell.trim_matches('`').to_string())
    }));
    if got != want {
        return Err(format!(
            "vsock-transport/README.md feature table: {got:?}, its Cargo.toml [features]: {want:?}"
        ));
    }
    Ok(())
}

#[test]
fn readme_lists_suites() {
    check_suites(&read("README.md")).unwrap();
}

#[test]
fn readme_lists_xtask_commands() {
    check_commands(&read("README.md")).unwrap();
}

#[test]
fn transport_readme_lists_features() {
    check_features(
        &read("vsock-transport/README.md"),
        &read("vsock-transport/Cargo.toml"),
    )
    .unwrap();
}

/// The checks fail when a list drifts.
#[test]
fn drift_is_caught() {
    let readme = read("README.md");
    let without = readme.replacen("`cli_vm` (", "`cli-vm` (", 1);
    assert!(check_suites(&without).is_err());
    let without = readme.replacen(" \\| lint", "", 1);
    assert!(check_commands(&without).is_err());
    let manifest = read("vsock-transport/Cargo.toml");
    let more = manifest.replacen("\n[features]\n", "\n[features]\nnew-one = []\n", 1);
    assert!(check_features(&read("vsock-transport/README.md"), &more).is_err());
}

/// Whether `line` names an issue of this project by number: `issue 5`,
/// `issues 5`, `Issue #5`, not after an `owner/repo` of another project.
fn points_at_an_issue(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    lower.match_indices("issue").any(|(at, _)| {
        let rest = lower[at + 5..].trim_start_matches('s');
        let rest = rest.strip_prefix(' ').unwrap_or(rest);
        let rest = rest.strip_prefix('#').unwrap_or(rest);
        let before = lower[..at].trim_end();
        let word = before.rsplit(' ').next().unwrap_or("");
        let upstream = word.contains('/') && !word.starts_with('/');
        rest.starts_with(|c: char| c.is_ascii_digit()) && !upstream
    })
}

#[test]
fn no_comment_points_at_an_issue_number() {
    let root = crate::util::root();
    let mut dirs = vec![root.clone()];
    let mut pointing = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name != ".ci" || name == "target" {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
                continue;
            }
            let rel = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let text_file = [".rs", ".toml", ".md", ".s", ".cddl", ".ld", ".sh"]
                .iter()
                .any(|x| name.ends_with(x))
                || rel == ".ci/run";
            // This file names the pattern it looks for.
            if !text_file || rel == "xtask/src/tidy.rs" {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            if let Some((n, line)) = text
                .lines()
                .enumerate()
                .find(|(_, l)| points_at_an_issue(l))
            {
                pointing.push((rel, format!("{}: {}", n + 1, line.trim())));
            }
        }
    }
    assert!(
        pointing.is_empty(),
        "say what the issue stood for instead of its number: {pointing:#?}"
    );
}

#[test]
fn issue_numbers_and_upstream_references() {
    assert!(points_at_an_issue("// the targets (issue 15)"));
    assert!(points_at_an_issue("/// Issue #3: boot"));
    assert!(points_at_an_issue("issues 5 and 13"));
    assert!(!points_at_an_issue("(rust-vmm/vhost issue 247, fixed"));
    assert!(!points_at_an_issue("a known issue with QEMU"));
}

#[test]
fn code_outside_parentheses() {
    assert_eq!(
        top_level_code("`a`, `b` (`x` and (`y`)), `c`"),
        ["a", "b", "c"]
    );
}
