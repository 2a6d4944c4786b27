//! Shared pieces of the workspace-level tests: the end-to-end context (which
//! image, which architecture) and a small test runner that prints a
//! `N passed, M failed` summary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use host_cli::{Arch, Session, SessionConfig, Vm, VmConfig};
use vsock_transport::Timeouts;

/// What the end-to-end tests run against, from the environment that
/// `cargo xtask run-e2e` sets.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Guest architecture.
    pub arch: Arch,
    /// Guest image.
    pub image: PathBuf,
    /// The `host-cli` binary.
    pub host_cli: PathBuf,
    /// A directory for logs, kept for the run.
    pub log_dir: PathBuf,
}

impl Ctx {
    /// Reads `SVMC_E2E_ARCH`, `SVMC_E2E_IMAGE`, `SVMC_E2E_HOST_CLI`.
    pub fn from_env(log_dir: PathBuf) -> Result<Self, String> {
        let var = |k: &str| {
            std::env::var(k)
                .map_err(|_| format!("{k} is not set: run the suite with `cargo xtask run-e2e`"))
        };
        Ok(Self {
            arch: var("SVMC_E2E_ARCH")?.parse()?,
            image: var("SVMC_E2E_IMAGE")?.into(),
            host_cli: var("SVMC_E2E_HOST_CLI")?.into(),
            log_dir,
        })
    }

    /// A VM configuration for this context.
    pub fn vm_config(&self) -> VmConfig {
        let mut c = VmConfig::new(self.arch, &self.image);
        c.log_dir = Some(self.log_dir.clone());
        c
    }

    /// Short timeouts for tests (TCG is slow, but not this slow).
    pub fn timeouts(&self) -> Timeouts {
        Timeouts::uniform(Duration::from_secs(30))
    }

    /// Launches a VM and waits for its boot connection.
    pub fn session(&self) -> Result<Session, String> {
        self.session_with(self.vm_config())
    }

    /// Launches a VM with `config` and waits for its boot connection.
    pub fn session_with(&self, config: VmConfig) -> Result<Session, String> {
        let mut s = SessionConfig::new(host_cli::Attach::Launch(Box::new(config)));
        s.timeouts = self.timeouts();
        Session::open(&s).map_err(|e| format!("opening a session: {e}"))
    }

    /// Launches a VM without talking to it.
    pub fn launch(&self) -> Result<Vm, String> {
        Vm::launch(&self.vm_config()).map_err(|e| e.to_string())
    }
}

/// A named test case.
pub type Case<C> = (&'static str, fn(&C) -> Result<(), String>);

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

/// `Err` with a message unless `cond`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}
