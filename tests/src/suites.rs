//! What xtask, the QEMU suites and CI share, written once: the suites, the
//! machines they run on, the soak sizes and the environment variables.
//!
//! Adding a suite: its file in `tests/tests/` (or its directory with a
//! `main.rs`), a `[[test]]` entry in `tests/Cargo.toml` (a unit test below
//! checks that the three agree) and a line in [`SUITES`]. Adding a machine to the test matrix: a line in
//! [`MATRIX`] (and its row in `svmc_host::machine::MACHINES`).

use svmc_host::Arch;

/// The environment variables `cargo xtask run-e2e` sets for the suites
/// (the host library's own are in `svmc_host::env`).
pub mod vars {
    /// Guest architecture (`x86_64`, `aarch64`).
    pub const ARCH: &str = "SVMC_E2E_ARCH";
    /// QEMU machine type; unset for the architecture's default.
    pub const MACHINE: &str = "SVMC_E2E_MACHINE";
    /// What runs in the VM: `firmware` (default) or `linux`.
    pub const GUEST: &str = "SVMC_E2E_GUEST";
    /// The guest image (the kernel for a Linux guest).
    pub const IMAGE: &str = "SVMC_E2E_IMAGE";
    /// The initramfs of a Linux guest.
    pub const INITRD: &str = "SVMC_E2E_INITRD";
    /// The `host-cli` binary.
    pub const HOST_CLI: &str = "SVMC_E2E_HOST_CLI";
    /// The misbehaving firmware (the guest's `hostile` feature).
    pub const HOSTILE_IMAGE: &str = "SVMC_E2E_HOSTILE_IMAGE";
    /// How long `hostile_host`'s trickle case trickles, in seconds.
    pub const HOSTILE_TRICKLE_SECS: &str = "SVMC_HOSTILE_TRICKLE_SECS";
    /// Set by a suite that runs its own test binary as a helper process
    /// (e.g. a host process to `SIGKILL`): the helper's name.
    pub const HELPER: &str = "SVMC_TEST_HELPER";
    /// The log directory a helper process writes to.
    pub const HELPER_LOG_DIR: &str = "SVMC_TEST_HELPER_LOG_DIR";
}

/// One QEMU suite (`tests/tests/<name>.rs` or `tests/tests/<name>/main.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suite {
    /// The test target's name.
    pub name: &'static str,
    /// Why it does not run against the Linux test VM (`None`: it does).
    pub not_for_linux: Option<&'static str>,
}

impl Suite {
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            not_for_linux: None,
        }
    }

    const fn not_for_linux(self, why: &'static str) -> Self {
        Self {
            not_for_linux: Some(why),
            ..self
        }
    }
}

/// Every QEMU suite, in the order `cargo xtask run-e2e` runs them: the
/// end-to-end suite, then the robustness suites.
pub const SUITES: &[Suite] = &[
    Suite::new("e2e"),
    // WIRE.md v2's numbered rules, checked from raw bytes; it has its own
    // `main` because it can also check any peer behind a hybrid socket
    // (`SVMC_CONFORMANCE_UDS`), without the variables of `cargo xtask`.
    Suite::new("conformance"),
    Suite::new("faults").not_for_linux(
        "launcher faults with hand-made firmware images (hanging, crashing, wrong ELF); \
         host-side code, covered by the firmware run",
    ),
    // Against the Linux guest too. It failed once in 4 runs there: after
    // the burst of 20 abrupt closes, the next connection was reset. The
    // burst's newcomers over the limit were held (8) or refused (2 at
    // once, `rpc::many::MAX_REFUSING`), and one more was reset without a
    // word; now every held newcomer can be refused with `busy`, and a
    // served connection whose client has closed gives way at once
    // (`Endpoint::peer_closed`, which the Linux service now implements).
    // Its `close_before_ok` case is not run for Linux: it makes
    // vhost-device-vsock 0.3.0 panic there (see the case).
    Suite::new("hostile_host"),
    Suite::new("hostile_guest").not_for_linux("needs the misbehaving firmware variant"),
    Suite::new("cli_vm").not_for_linux(
        "host-cli start/list/stop and the VM registry are host-side and the same for both \
         guests; each case boots one to three VMs, about 3 s per Linux boot here",
    ),
    // Concurrent and pipelined traffic (WIRE.md §4.1), repeated
    // `LOAD_REPS` times.
    Suite::new("load"),
    // Deadlines, cancellation, request streams and traces (WIRE.md §10)
    // against the real guest; a stream of `STREAM_MIB` through a 16 MiB
    // VM.
    Suite::new("long"),
    Suite::new("soak").not_for_linux(
        "not run for Linux to keep CI time (launch cycles, 10,000 requests, several VMs at \
         once, a thread pool of VMs; about 3 s per Linux boot here); e2e covers every request \
         kind and both connection directions",
    ),
];

/// The suite `name`.
pub fn suite(name: &str) -> Option<&'static Suite> {
    SUITES.iter().find(|s| s.name == name)
}

/// Which QEMU a column of the test matrix runs. Users run their
/// distribution's QEMU (Debian 12: 7.2, Ubuntu 24.04: 8.2, Debian 13:
/// 10.0), so both ends are tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qemu {
    /// The one on `PATH` (Debian bookworm's 7.2, installed by `cargo xtask
    /// setup`).
    System,
    /// [`QEMU_BACKPORTS_VERSION`] from bookworm-backports, unpacked into
    /// `.tools/`[`QEMU_BACKPORTS`] by `cargo xtask setup`.
    Backports,
}

/// The directory in `.tools/` of the unpacked QEMU ([`Qemu::Backports`]).
pub const QEMU_BACKPORTS: &str = "qemu-10.0";

/// The Debian version of the unpacked QEMU.
pub const QEMU_BACKPORTS_VERSION: &str = "1:10.0.2+ds-2+deb13u1~bpo12+1";

/// One column of the test matrix: an architecture, a machine and a QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Guest architecture.
    pub arch: Arch,
    /// QEMU machine type (`None`: the architecture's default).
    pub machine: Option<&'static str>,
    /// The suites that run on it (`None`: all of [`SUITES`]).
    pub suites: Option<&'static [&'static str]>,
    /// The QEMU.
    pub qemu: Qemu,
}

/// What `cargo xtask test` runs the firmware suites on.
pub const MATRIX: &[Target] = &[
    Target {
        arch: Arch::X86_64,
        machine: None,
        suites: None,
        qemu: Qemu::System,
    },
    Target {
        arch: Arch::Aarch64,
        machine: None,
        suites: None,
        qemu: Qemu::System,
    },
    Target {
        arch: Arch::X86_64,
        machine: Some("q35"),
        suites: None,
        qemu: Qemu::System,
    },
    // QEMU 10.0: the end-to-end suite on every machine, and the VM tool
    // (detached children, found by their command lines) on the default
    // one; the robustness suites exercise host code that does not depend
    // on QEMU's version.
    Target {
        arch: Arch::X86_64,
        machine: None,
        suites: Some(&["e2e", "cli_vm"]),
        qemu: Qemu::Backports,
    },
    Target {
        arch: Arch::Aarch64,
        machine: None,
        suites: Some(&["e2e"]),
        qemu: Qemu::Backports,
    },
    Target {
        arch: Arch::X86_64,
        machine: Some("q35"),
        suites: Some(&["e2e"]),
        qemu: Qemu::Backports,
    },
];

/// A soak size: its variable, its CI value (`cargo xtask test`, and the
/// default when the variable is unset) and its full value (`cargo xtask
/// soak`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoakSize {
    /// The environment variable.
    pub var: &'static str,
    /// At CI size.
    pub ci: u64,
    /// At full size.
    pub full: u64,
}

/// Launch/request/power-off cycles in a row.
pub const SOAK_CYCLES: SoakSize = SoakSize {
    var: "SVMC_SOAK_CYCLES",
    ci: 20,
    full: 200,
};
/// Requests over one connection.
pub const SOAK_REQUESTS: SoakSize = SoakSize {
    var: "SVMC_SOAK_REQUESTS",
    ci: 10_000,
    full: 100_000,
};
/// VMs served at once by one process.
pub const SOAK_VMS: SoakSize = SoakSize {
    var: "SVMC_SOAK_VMS",
    ci: 3,
    full: 4,
};
/// Requests per VM of those.
pub const SOAK_VM_REQUESTS: SoakSize = SoakSize {
    var: "SVMC_SOAK_VM_REQUESTS",
    ci: 500,
    full: 5000,
};
/// VMs launched by the thread pool (8 threads) in all.
pub const SOAK_POOL_VMS: SoakSize = SoakSize {
    var: "SVMC_SOAK_POOL_VMS",
    ci: 16,
    full: 96,
};
/// Requests per VM of the thread pool.
pub const SOAK_POOL_REQUESTS: SoakSize = SoakSize {
    var: "SVMC_SOAK_POOL_REQUESTS",
    ci: 20,
    full: 200,
};

/// Repetitions of each case of the `load` suite (`SVMC_LOAD_REPS`; the
/// full size is for a manual run with the variable set).
pub const LOAD_REPS: SoakSize = SoakSize {
    var: "SVMC_LOAD_REPS",
    ci: 3,
    full: 20,
};

/// MiB streamed through a 16 MiB VM by the `long` suite's digest case
/// (`SVMC_STREAM_MIB`): a GiB in CI, as `host-cli digest` promises.
pub const STREAM_MIB: SoakSize = SoakSize {
    var: "SVMC_STREAM_MIB",
    ci: 1024,
    full: 4096,
};

/// VMs booting at once while other threads keep every core busy.
pub const SOAK_LOAD_VMS: SoakSize = SoakSize {
    var: "SVMC_SOAK_LOAD_VMS",
    ci: 16,
    full: 16,
};

/// Every soak size.
pub const SOAK: &[SoakSize] = &[
    SOAK_CYCLES,
    SOAK_REQUESTS,
    SOAK_VMS,
    SOAK_VM_REQUESTS,
    SOAK_POOL_VMS,
    SOAK_POOL_REQUESTS,
    SOAK_LOAD_VMS,
];

impl SoakSize {
    /// The value in the environment, or the CI size.
    pub fn get(&self) -> u64 {
        crate::env_count(self.var, self.ci)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files of `tests/tests/` that are ordinary `cargo test` targets (no
    /// QEMU), not suites.
    const ORDINARY_TESTS: &[&str] = &["cddl", "wire_cases"];

    /// The `[[test]]` targets of `tests/Cargo.toml` with `harness = false`.
    fn cargo_suites() -> Vec<String> {
        let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .expect("tests/Cargo.toml");
        manifest
            .split("[[test]]")
            .skip(1)
            .filter_map(|t| {
                let name = t.lines().find_map(|l| l.trim().strip_prefix("name = "))?;
                Some(name.trim_matches('"').to_string())
            })
            .collect()
    }

    #[test]
    fn suite_list_matches_cargo_toml_and_files() {
        let listed: Vec<String> = SUITES.iter().map(|s| s.name.to_string()).collect();
        let mut in_cargo = cargo_suites();
        let mut files: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests"))
                .unwrap()
                .filter_map(|e| {
                    let e = e.ok()?;
                    let name = e.file_name().into_string().ok()?;
                    // `<name>.rs`, or `<name>/main.rs` for a suite in modules.
                    match name.strip_suffix(".rs") {
                        Some(n) => Some(n.to_string()),
                        None => e.path().join("main.rs").is_file().then_some(name),
                    }
                })
                .filter(|n| !ORDINARY_TESTS.contains(&n.as_str()))
                .collect();
        let mut sorted = listed.clone();
        sorted.sort();
        in_cargo.sort();
        files.sort();
        assert_eq!(
            sorted, in_cargo,
            "SUITES vs [[test]] entries of tests/Cargo.toml"
        );
        assert_eq!(sorted, files, "SUITES vs tests/tests/*.rs and */main.rs");
    }

    #[test]
    fn matrix_names_known_machines_and_suites() {
        for t in MATRIX {
            svmc_host::machine::find(t.arch, t.machine).unwrap();
            for s in t.suites.unwrap_or_default() {
                assert!(suite(s).is_some(), "{s}");
            }
        }
        for arch in Arch::ALL {
            assert!(
                MATRIX.iter().any(|t| t.arch == arch),
                "{arch} is not in the matrix"
            );
        }
    }

    #[test]
    fn soak_sizes_are_distinct_and_ci_is_smaller() {
        for (i, s) in SOAK.iter().enumerate() {
            assert!(s.ci <= s.full, "{}", s.var);
            assert!(!SOAK[i + 1..].iter().any(|o| o.var == s.var), "{}", s.var);
        }
    }
}
