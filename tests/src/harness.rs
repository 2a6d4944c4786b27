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
//! of `cargo xtask`) and runs its cases with [`run_trials`], as [`main`]
//! does. libtest-mimic prints no time per case; a case that measures
//! prints its own figures.
//!
//! Command line (what `cargo test -p tests --test <suite> -- ...` passes):
//! libtest's, as libtest-mimic reads it.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    let args = arguments();
    let cases: Vec<Case<C>> = suite
        .cases
        .iter()
        .chain(suite.last.iter())
        .copied()
        .collect();
    if args.list {
        list(&args, &cases);
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
    let always = suite.last.map(|(name, _)| name);
    let (passed, failed) = run_trials(&args, state.clone(), &cases, always);
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

/// The command line of a suite binary (libtest's), with one case at a time:
/// the cases share a VM or a private TMPDIR and count what is left over,
/// so they run in order on this thread.
pub fn arguments() -> Arguments {
    let mut args = Arguments::from_args();
    args.test_threads = Some(1);
    args
}

/// Prints `cases`' names as `--list` does and exits.
pub fn list<C>(args: &Arguments, cases: &[Case<C>]) -> ! {
    let trials = cases.iter().map(|(name, _)| Trial::test(*name, || Ok(())));
    libtest_mimic::run(args, trials.collect()).exit()
}

/// Runs the `cases` that `args` selects against `state` (or fails them
/// with the set-up's error), in order; the case named `always` runs even
/// if the filter leaves it out, after the others. Returns how many passed
/// and failed.
pub fn run_trials<C: Send + Sync + 'static>(
    args: &Arguments,
    state: Result<Arc<C>, String>,
    cases: &[Case<C>],
    always: Option<&str>,
) -> (u64, u64) {
    let apart = always.and_then(|name| {
        let case = *cases.iter().find(|(n, _)| *n == name)?;
        args.is_filtered_out(&Trial::test(name, || Ok(())))
            .then_some(case)
    });
    let trials = cases
        .iter()
        .filter(|(n, _)| apart.is_none_or(|(a, _)| a != *n))
        .map(|&(name, f)| {
            let state = state.clone();
            Trial::test(name, move || run_case(f, &state))
        })
        .collect();
    let conclusion = libtest_mimic::run(args, trials);
    let (mut passed, mut failed) = (conclusion.num_passed, conclusion.num_failed);
    if let Some((name, f)) = apart {
        let why = "runs last whatever the filter";
        match std::panic::catch_unwind(AssertUnwindSafe(|| run_case(f, &state))) {
            Ok(Ok(())) => {
                println!("test {name} ... ok ({why})");
                passed += 1;
            }
            Ok(Err(e)) => {
                let e = e.message().unwrap_or("failed");
                println!("test {name} ... FAILED ({why}): {e}");
                failed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED ({why}): panicked");
                failed += 1;
            }
        }
    }
    (passed, failed)
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

    /// libtest-mimic's lines go to a file, so that this test's output has
    /// no `FAILED` in it when it passes.
    fn args(filter: Option<&str>) -> Arguments {
        static LOG: std::sync::LazyLock<tempfile::TempDir> =
            std::sync::LazyLock::new(|| tempfile::tempdir().unwrap());
        Arguments {
            filter: filter.map(str::to_string),
            test_threads: Some(1),
            logfile: Some(
                LOG.path()
                    .join(format!("{:?}.log", std::thread::current().id()))
                    .display()
                    .to_string(),
            ),
            ..Arguments::default()
        }
    }

    #[test]
    fn failures_and_panics_count() {
        let all = args(None);
        assert_eq!(
            run_trials(&all, Ok(Arc::new(())), &[("a", ok), ("b", ok)], None),
            (2, 0)
        );
        assert_eq!(
            run_trials(&all, Ok(Arc::new(())), &[("a", ok), ("b", fails)], None),
            (1, 1)
        );
        assert_eq!(
            run_trials(&all, Ok(Arc::new(())), &[("p", panics)], None),
            (0, 1)
        );
        let only_a = args(Some("a"));
        assert_eq!(
            run_trials(&only_a, Ok(Arc::new(())), &[("a", ok), ("b", fails)], None),
            (1, 0)
        );
    }

    #[test]
    fn the_always_case_runs_whatever_the_filter() {
        let cases: &[Case<()>] = &[("a", ok), ("end", fails), ("c", ok)];
        assert_eq!(
            run_trials(&args(Some("c")), Ok(Arc::new(())), cases, Some("end")),
            (1, 1)
        );
        assert_eq!(
            run_trials(&args(Some("end")), Ok(Arc::new(())), cases, Some("end")),
            (0, 1)
        );
        assert_eq!(
            run_trials(&args(None), Ok(Arc::new(())), cases, Some("end")),
            (2, 1)
        );
    }

    #[test]
    fn a_failed_set_up_fails_the_selected_cases() {
        let cases: &[Case<()>] = &[("a", ok), ("b", ok)];
        assert_eq!(
            run_trials(&args(Some("b")), Err("no VM".into()), cases, Some("a")),
            (0, 2)
        );
    }
}
