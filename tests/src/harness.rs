//! The one runner of the QEMU suites. Each suite's `main` is
//! `tests::harness::main(&SUITE)`; the runner reads the context from the
//! environment ([`crate::suites::vars`]), makes the log directory (and a
//! private `TMPDIR` if the suite asks for one), builds the suite's state
//! once, and hands the cases to [`libtest_mimic`], which parses libtest's
//! command line (`FILTER`, `--exact`, `--skip`, `--list`, ...) and prints
//! libtest's lines. What it adds to libtest-mimic:
//!
//! - the state the cases share (a VM, a private `TMPDIR`), built before
//!   them and dropped after them, before the logs are kept or removed;
//!   a failed set-up fails every selected case with its message;
//! - one case at a time, in order, on the main thread (the cases count
//!   processes and files left over, so none may run beside another);
//! - [`Suite::last`], which runs whatever the filter (powering off the
//!   shared VM);
//! - the final `<suite>-<arch>: N passed, M failed` line the CI log is
//!   read by, and the log directory kept (and named) when anything failed;
//! - helper modes of the suite's binary ([`helper_command`]).
//!
//! `conformance` has its own `main` (it can check a peer that is not a VM
//! of `cargo xtask`) and runs its cases with [`run_cases`].
//!
//! Command line (what `cargo test -p tests --test <suite> -- ...` passes):
//! libtest's, as libtest-mimic reads it.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};

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

/// Runs `suite` (never returns).
pub fn main<C: Send + Sync + 'static>(suite: &Suite<C>) -> ! {
    if let Ok(name) = std::env::var(vars::HELPER) {
        std::process::exit(run_helper(suite, &name));
    }
    let mut args = Arguments::from_args();
    // The cases share a VM or a private TMPDIR and count what is left
    // over: one at a time, in order, on this thread.
    args.test_threads = Some(1);
    if args.list {
        let all = suite.cases.iter().chain(suite.last.iter());
        let trials = all.map(|(name, _)| Trial::test(*name, || Ok(()))).collect();
        libtest_mimic::run(&args, trials).exit();
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
    let setup = Setup {
        ctx,
        tmp,
        logs: logs.path().to_path_buf(),
    };
    // A failed set-up fails every selected case with its message.
    let state = (suite.setup)(setup).map(Arc::new);
    if let Err(e) = &state {
        println!("{}: set-up failed: {e}", suite.name);
    }
    let trial = |(name, f): Case<C>| {
        let state = state.clone();
        Trial::test(name, move || run_case(f, &state))
    };
    let mut trials: Vec<Trial> = suite.cases.iter().copied().map(trial).collect();
    // `last` runs whatever the filter: with the others if selected, else
    // after them.
    let last_apart = suite
        .last
        .filter(|(name, _)| args.is_filtered_out(&Trial::test(*name, || Ok(()))));
    if last_apart.is_none() {
        trials.extend(suite.last.map(trial));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    let (mut passed, mut failed) = (conclusion.num_passed, conclusion.num_failed);
    if let Some((name, f)) = last_apart {
        match std::panic::catch_unwind(AssertUnwindSafe(|| run_case(f, &state))) {
            Ok(Ok(())) => {
                println!("test {name} ... ok (runs last whatever the filter)");
                passed += 1;
            }
            Ok(Err(e)) => {
                println!("test {name} ... FAILED (runs last whatever the filter): {e:?}");
                failed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED (runs last whatever the filter): panicked");
                failed += 1;
            }
        }
    }
    println!("{label}: {passed} passed, {failed} failed");
    // Leftovers were reported by the cases; the state (a private TMPDIR,
    // a shared VM) goes before the logs are kept or removed.
    drop(state);
    if failed > 0 {
        println!("logs kept in {}", logs.keep().display());
        std::process::exit(1);
    }
    drop(logs);
    std::process::exit(0)
}

/// One case against the state, or the set-up's error.
fn run_case<C>(
    f: fn(&C) -> Result<(), String>,
    state: &Result<Arc<C>, String>,
) -> Result<(), Failed> {
    match state {
        Ok(s) => f(s).map_err(Failed::from),
        Err(e) => Err(format!("set-up failed: {e}").into()),
    }
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
