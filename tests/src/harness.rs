//! The one runner of the QEMU suites. Each suite's `main` is
//! `tests::harness::main(&SUITE)`; the runner reads the context from the
//! environment ([`crate::suites::vars`]), makes the log directory (and a
//! private `TMPDIR` if the suite asks for one), runs the cases that match
//! the filter one after the other, prints one line per case and a final
//! `<suite>-<arch>: N passed, M failed` line, keeps the logs of a failed
//! run, and exits non-zero if anything failed.
//!
//! Command line (what `cargo test -p tests --test <suite> -- ...` passes):
//! `[FILTER] [--exact] [--list]`; other `-`-options are ignored.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::suites::vars;
use crate::{Ctx, PrivateTmp};

/// A named test case.
pub type Case<C> = (&'static str, fn(&C) -> Result<(), String>);

/// What the runner hands to a suite's set-up.
pub struct Setup {
    /// The context from the environment.
    pub ctx: Ctx,
    /// The private `TMPDIR`, if [`Suite::private_tmp`].
    pub tmp: Option<PrivateTmp>,
    /// The log directory of the run (kept if it fails).
    pub logs: PathBuf,
}

/// A helper mode of a suite's binary: the suite runs its own binary with
/// [`vars::HELPER`] set to `name` (see [`helper_command`]), and `run` is
/// called instead of the cases; its return value is the exit status.
pub type Helper = (&'static str, fn(&Ctx) -> i32);

/// A QEMU suite.
pub struct Suite<C: 'static> {
    /// Its name (`e2e`, `faults`, ...), as in [`crate::suites::SUITES`].
    pub name: &'static str,
    /// Give the run a private `TMPDIR` (installed before any thread
    /// starts), so that leftover runtime directories can be counted.
    pub private_tmp: bool,
    /// Builds the suite's state from the runner's.
    pub setup: fn(Setup) -> Result<C, String>,
    /// The cases, run in order.
    pub cases: &'static [Case<C>],
    /// A case that always runs last, whatever the filter (e.g. powering off
    /// a VM shared by the cases).
    pub last: Option<Case<C>>,
    /// Helper modes of the binary.
    pub helpers: &'static [Helper],
}

/// The command line of a suite binary.
#[derive(Debug, Default)]
struct Args {
    filter: Option<String>,
    exact: bool,
    list: bool,
}

impl Args {
    fn parse() -> Self {
        let mut a = Self::default();
        for arg in std::env::args().skip(1) {
            match arg.as_str() {
                "--exact" => a.exact = true,
                "--list" => a.list = true,
                s if s.starts_with('-') => {}
                s => a.filter = Some(s.to_string()),
            }
        }
        a
    }

    fn matches(&self, name: &str) -> bool {
        match &self.filter {
            None => true,
            Some(f) if self.exact => name == f,
            Some(f) => name.contains(f.as_str()),
        }
    }
}

/// Runs `suite` (never returns).
pub fn main<C>(suite: &Suite<C>) -> ! {
    if let Ok(name) = std::env::var(vars::HELPER) {
        std::process::exit(run_helper(suite, &name));
    }
    let args = Args::parse();
    if args.list {
        for (name, _) in suite.cases.iter().chain(suite.last.iter()) {
            println!("{name}: test");
        }
        std::process::exit(0);
    }
    let tmp = suite.private_tmp.then(|| {
        // SAFETY: the first thing the binary does: no other thread runs.
        unsafe { PrivateTmp::install(suite.name) }
    });
    // Logs go next to the private TMPDIR, not into it (it must stay empty).
    let parent = if tmp.is_some() {
        std::env::temp_dir()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/tmp"))
    } else {
        std::env::temp_dir()
    };
    let logs = tempfile::Builder::new()
        .prefix(&format!("svmc-{}-logs-", suite.name))
        .tempdir_in(parent)
        .expect("creating the log directory");
    let ctx = match Ctx::from_env(logs.path().to_path_buf()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", suite.name);
            std::process::exit(2);
        }
    };
    let label = format!("{}-{}", suite.name, ctx.label());
    println!("{} on {ctx}", suite.name);
    let cases: Vec<Case<C>> = suite
        .cases
        .iter()
        .copied()
        .filter(|(n, _)| args.matches(n))
        .collect();
    let setup = Setup {
        ctx,
        tmp,
        logs: logs.path().to_path_buf(),
    };
    let state = match (suite.setup)(setup) {
        Ok(s) => s,
        Err(e) => {
            println!("{}: set-up failed: {e}", suite.name);
            println!(
                "{label}: 0 passed, {} failed",
                cases.len() + suite.last.iter().len()
            );
            println!("logs kept in {}", logs.keep().display());
            std::process::exit(1);
        }
    };
    let mut all = cases;
    all.extend(suite.last);
    let ok = run_cases(&label, &state, &all, None);
    // Leftovers were reported by the cases; the state (a private TMPDIR,
    // a shared VM) goes before the logs are kept or removed.
    drop(state);
    if !ok {
        println!("logs kept in {}", logs.keep().display());
        std::process::exit(1);
    }
    std::process::exit(0)
}

fn run_helper<C>(suite: &Suite<C>, name: &str) -> i32 {
    let Some((_, run)) = suite.helpers.iter().find(|(n, _)| *n == name) else {
        eprintln!("{}: no helper {name:?}", suite.name);
        return 2;
    };
    let logs = std::env::var_os(vars::HELPER_LOG_DIR)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    match Ctx::from_env(logs) {
        Ok(ctx) => run(&ctx),
        Err(e) => {
            eprintln!("{}: helper {name}: {e}", suite.name);
            2
        }
    }
}

/// This suite binary run as its helper `name`, with the context of
/// `ctx` (logs in its log directory).
pub fn helper_command(ctx: &Ctx, name: &str) -> std::process::Command {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut c = std::process::Command::new(exe);
    c.env(vars::HELPER, name)
        .env(vars::HELPER_LOG_DIR, &ctx.log_dir);
    c
}

/// Runs `cases` whose names contain `filter`, printing one line per test and
/// a final `<label>: N passed, M failed` line. Returns whether all passed.
pub fn run_cases<C>(label: &str, ctx: &C, cases: &[Case<C>], filter: Option<&str>) -> bool {
    let mut passed = 0;
    let mut failed = Vec::new();
    for (name, f) in cases {
        if filter.is_some_and(|flt| !name.contains(flt)) {
            continue;
        }
        let start = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(ctx)));
        let ms = start.elapsed().as_millis();
        match result {
            Ok(Ok(())) => {
                passed += 1;
                println!("test {name} ... ok ({ms} ms)");
            }
            Ok(Err(e)) => {
                println!("test {name} ... FAILED ({ms} ms): {e}");
                failed.push(*name);
            }
            Err(_) => {
                println!("test {name} ... FAILED ({ms} ms): panicked");
                failed.push(*name);
            }
        }
    }
    if !failed.is_empty() {
        println!("failed: {}", failed.join(", "));
    }
    println!("{label}: {passed} passed, {} failed", failed.len());
    failed.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let a = Args {
            filter: Some("cli".into()),
            ..Args::default()
        };
        assert!(a.matches("cli_ctrl_c") && a.matches("a_cli") && !a.matches("qemu"));
        let e = Args {
            filter: Some("cli".into()),
            exact: true,
            ..Args::default()
        };
        assert!(e.matches("cli") && !e.matches("cli_ctrl_c"));
        assert!(Args::default().matches("anything"));
    }

    fn ok(_: &()) -> Result<(), String> {
        Ok(())
    }
    fn fails(_: &()) -> Result<(), String> {
        Err("no".into())
    }
    fn panics(_: &()) -> Result<(), String> {
        panic!("on purpose")
    }

    #[test]
    fn failures_and_panics_count() {
        assert!(run_cases("t", &(), &[("a", ok), ("b", ok)], None));
        assert!(!run_cases("t", &(), &[("a", ok), ("b", fails)], None));
        assert!(!run_cases("t", &(), &[("p", panics)], None));
        assert!(run_cases("t", &(), &[("a", ok), ("b", fails)], Some("a")));
    }
}
