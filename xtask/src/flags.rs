//! xtask's command line, declared once: every command and flag with its
//! help, from which clap generates `cargo xtask --help` and `cargo xtask
//! <command> --help`. The spellings are the ones `.ci/run`, the README,
//! BENCHMARKS.md and the tests use; `tests::spellings_in_use_parse` below
//! checks them.

use ::tests::suites::Qemu;
use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use svmc_host::{Arch, Guest};

/// `cargo xtask <command>`: project automation (set-up, guest images, the
/// QEMU suites, benchmarks, CI).
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    after_help = "Architectures: x86_64, aarch64 (all = both, where a command takes it).",
    // `--arch` and the other options may be repeated: the last one wins.
    args_override_self = true
)]
pub struct Xtask {
    /// What to do (none: this help).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install what is missing (the other commands call it)
    ///
    /// Bare-metal Rust targets (rustup), QEMU (apt-get), vhost-device-vsock
    /// 0.3.0 and the cddl 0.10.7 CLI (cargo install into .tools/), QEMU
    /// 10.0 from bookworm-backports (apt-get download, dpkg -x into
    /// .tools/).
    Setup,
    /// Build the release guest image and print its path
    ///
    /// With `--guest linux`, fetch Debian's cloud kernel and build the
    /// Linux test VM (kernel, initramfs with the linux_service example as
    /// /init) into target/linux.
    BuildImage(BuildImage),
    /// Set up, build, and run the QEMU suites at CI size
    ///
    /// The suites of `tests::suites::SUITES`, against real QEMU: the
    /// distribution's, or 10.0 unpacked into .tools/.
    RunE2e(RunE2e),
    /// Set up, build, and run the soak suite with the full counts
    ///
    /// 200 launch cycles, 100,000 requests on one connection, 4 VMs at
    /// once.
    Soak(Soak),
    /// Boot, round-trip, throughput, size and memory figures
    ///
    /// Next to their floors (QEMU alone, the guest's raw reverse and echo
    /// modes): a table on stdout, and SVG plots (boot to answer per
    /// machine, round trip against message size) in target/bench/; see
    /// BENCHMARKS.md.
    Bench(Bench),
    /// Where the guest spends its time under a repeated reverse
    ///
    /// Samples the guest's PC through QMP while the host repeats N-byte
    /// reverses, mapped to the symbols of an unstripped build (the N
    /// busiest functions and lines); see BENCHMARKS.md.
    Profile(Profile),
    /// Set up, build, and run `host-cli reverse abc` (the README's main job)
    Demo,
    /// Build and run the key store VM as an outside project
    ///
    /// The key store service VM (guest/examples/keystore), copied out of
    /// the workspace with path dependencies, built and run with its
    /// README's commands.
    Outside(Outside),
    /// host-cli's shell completions and man pages
    ///
    /// Bash, zsh, fish, elvish and PowerShell completions and man pages,
    /// from host-cli's clap definition.
    DistDocs(DistDocs),
    /// What CI checks before the tests
    ///
    /// fmt, clippy (every feature set and target, the QEMU suites, the
    /// guest), the guest's docs.
    Lint,
    /// The whole test suite (what `.ci/run` runs)
    ///
    /// Host unit/integration tests, bare-metal builds, docs, the QEMU
    /// suites on every machine of the test matrix (`tests::suites::MATRIX`),
    /// the Linux guest (e2e + in-VM AF_VSOCK tests) and the outside service
    /// VM.
    Test,
}

/// `--arch x86_64|aarch64|all`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archs(pub Vec<Arch>);

fn parse_archs(s: &str) -> Result<Archs, String> {
    if s == "all" {
        Ok(Archs(Arch::ALL.to_vec()))
    } else {
        Ok(Archs(vec![s.parse()?]))
    }
}

/// `--arch` of the commands that take `all`.
#[derive(Debug, Args)]
pub struct ArchOpt {
    /// Guest architecture: x86_64, aarch64 or all.
    #[arg(long, value_name = "A", value_parser = parse_archs)]
    pub arch: Option<Archs>,
}

impl ArchOpt {
    /// The architectures chosen, or `default`.
    pub fn or(&self, default: &[Arch]) -> Vec<Arch> {
        self.arch
            .as_ref()
            .map_or_else(|| default.to_vec(), |a| a.0.clone())
    }
}

/// `--arch` of the commands that run one architecture at a time.
#[derive(Debug, Args)]
pub struct OneArch {
    /// Guest architecture: x86_64 or aarch64.
    #[arg(long, value_name = "A", default_value = "x86_64")]
    pub arch: Arch,
}

/// `cargo xtask build-image`.
#[derive(Debug, Args)]
pub struct BuildImage {
    #[command(flatten)]
    pub arch: ArchOpt,
    /// With debug and trace logs compiled in (`svmc.log=debug`), as
    /// guest-verbose next to the release image.
    #[arg(long)]
    pub verbose: bool,
    /// What to build: the svmc firmware, or the Linux test VM (x86_64).
    #[arg(long, value_name = "firmware|linux", default_value = "firmware")]
    pub guest: Guest,
}

/// `cargo xtask run-e2e`.
#[derive(Debug, Args)]
pub struct RunE2e {
    #[command(flatten)]
    pub arch: ArchOpt,
    /// QEMU machine type (default: the architecture's).
    #[arg(long, value_name = "M")]
    pub machine: Option<String>,
    /// Which QEMU: the one on PATH, or 10.0 unpacked into .tools/.
    #[arg(long, value_name = "system|10.0", value_parser = parse_qemu, default_value = "system")]
    pub qemu: Qemu,
    /// Run only this suite (repeatable; default: every suite of the
    /// target).
    #[arg(
        long = "suite",
        value_name = "S",
        action = clap::ArgAction::Append,
        value_parser = PossibleValuesParser::new(::tests::suites::SUITES.iter().map(|s| s.name)),
    )]
    pub suites: Vec<String>,
    /// Run against the Linux test VM (x86_64): the suites that apply to it,
    /// then vsock-transport's AF_VSOCK tests inside it (vsock_loopback).
    #[arg(long, value_name = "firmware|linux", default_value = "firmware")]
    pub guest: Guest,
    /// Run only the cases whose names contain FILTER.
    pub filter: Option<String>,
}

fn parse_qemu(s: &str) -> Result<Qemu, String> {
    match s {
        "system" => Ok(Qemu::System),
        "10.0" => Ok(Qemu::Backports),
        v => Err(format!("--qemu {v}: use system or 10.0")),
    }
}

/// `cargo xtask soak`.
#[derive(Debug, Args)]
pub struct Soak {
    #[command(flatten)]
    pub arch: ArchOpt,
    /// Run only the cases whose names contain FILTER.
    pub filter: Option<String>,
}

/// `cargo xtask bench`: `--boot-only` for the boot-to-answer rows alone,
/// `--boots N` for the boot series alone.
#[derive(Debug, Args)]
pub struct Bench {
    #[command(flatten)]
    pub arch: OneArch,
    /// Repetitions of each figure.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub reps: Option<u32>,
    /// The boot series alone: N boots, their distribution per machine
    /// (printed, and plotted in target/bench/boots-ARCH.svg).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub boots: Option<u32>,
    /// The boot-to-answer rows alone.
    #[arg(long)]
    pub boot_only: bool,
    /// The cost of the extensions' envelope on 16-byte round trips alone.
    #[arg(long)]
    pub envelope_only: bool,
    /// Leave out the codec figures.
    #[arg(long)]
    pub no_codec: bool,
    /// Leave out the microvm machine (x86_64).
    #[arg(long)]
    pub no_microvm: bool,
    /// Leave out the memory figures.
    #[arg(long)]
    pub no_mem: bool,
}

impl Bench {
    /// The arguments of `bench::run`, which parses its own.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec!["--arch".to_string(), self.arch.arch.name().to_string()];
        if let Some(n) = self.reps {
            a.extend(["--reps".into(), n.to_string()]);
        }
        if let Some(n) = self.boots {
            a.extend(["--boots".into(), n.to_string()]);
        }
        for (set, flag) in [
            (self.boot_only, "--boot-only"),
            (self.envelope_only, "--envelope-only"),
            (self.no_codec, "--no-codec"),
            (self.no_microvm, "--no-microvm"),
            (self.no_mem, "--no-mem"),
        ] {
            if set {
                a.push(flag.into());
            }
        }
        a
    }
}

/// `cargo xtask profile`.
#[derive(Debug, Args)]
pub struct Profile {
    #[command(flatten)]
    pub arch: OneArch,
    /// What the guest runs: the svmc service, or the raw reverse floor.
    #[arg(long, value_name = "service|raw-reverse", default_value = "service",
          value_parser = ["service", "raw-reverse"])]
    pub mode: String,
    /// Bytes per reverse: 16, 4K, 4KiB, 1M, 1MiB.
    #[arg(long, value_name = "N", default_value = "1M", value_parser = parse_size)]
    pub size: usize,
    /// How many PC samples.
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub samples: usize,
    /// Between samples, in milliseconds (fractions allowed).
    #[arg(long, value_name = "M", default_value = "1", value_parser = parse_ms)]
    pub interval_ms: std::time::Duration,
    /// How many functions and lines to show.
    #[arg(long, value_name = "N", default_value_t = 25)]
    pub top: usize,
}

fn parse_size(s: &str) -> Result<usize, String> {
    crate::profile::parse_size(s).ok_or(format!("bad size {s:?} (16, 4K, 4KiB, 1M, 1MiB)"))
}

fn parse_ms(s: &str) -> Result<std::time::Duration, String> {
    let ms: f64 = s.parse().map_err(|_| format!("bad milliseconds {s:?}"))?;
    std::time::Duration::try_from_secs_f64(ms / 1e3).map_err(|_| format!("{s:?}: not a duration"))
}

/// `cargo xtask outside`.
#[derive(Debug, Args)]
pub struct Outside {
    /// Guest architecture: x86_64, aarch64 or all (the default).
    #[arg(long, value_name = "A", value_parser = parse_archs, default_value = "all")]
    pub arch: Archs,
}

/// `cargo xtask dist-docs`.
#[derive(Debug, Args)]
pub struct DistDocs {
    /// Where to write them (default: target/dist).
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(line: &str) -> Result<Xtask, clap::Error> {
        Xtask::try_parse_from(std::iter::once("cargo xtask").chain(line.split_whitespace()))
    }

    #[test]
    fn definition_is_consistent() {
        Xtask::command().debug_assert();
    }

    /// The command lines of `.ci/run`, the README, BENCHMARKS.md, DESIGN
    /// notes and the suites' messages.
    #[test]
    fn spellings_in_use_parse() {
        for line in [
            "",
            "setup",
            "lint",
            "test",
            "demo",
            "build-image",
            "build-image --verbose",
            "build-image --arch aarch64",
            "build-image --arch all",
            "build-image --arch=aarch64 --verbose",
            "build-image --guest linux",
            "run-e2e",
            "run-e2e --arch aarch64",
            "run-e2e --arch all --machine q35",
            "run-e2e --machine q35",
            "run-e2e --qemu 10.0 --suite e2e",
            "run-e2e --suite load",
            "run-e2e --suite e2e --suite=conformance cli",
            "run-e2e --suite profile_does_not_exist_but_is_not_a_suite",
            "run-e2e --guest linux",
            "run-e2e --guest linux host_vsock",
            "run-e2e --arch x86_64 reverse",
            "soak",
            "soak --arch aarch64 cycles",
            "bench",
            "bench --arch aarch64",
            "bench --arch x86_64 --reps 9 --no-codec",
            "bench --no-codec --no-microvm",
            "bench --no-codec --no-mem",
            "bench --boots 500",
            "bench --no-microvm --boots 500",
            "bench --boot-only",
            "profile",
            "profile --size 1M --samples 3000",
            "profile --arch aarch64 --mode raw-reverse --size 4KiB --samples 10 --interval-ms 0.5 --top 5",
            "outside",
            "outside --arch all",
            "outside --arch x86_64",
            "dist-docs",
            "dist-docs --out /tmp/x",
            "help",
            "help bench",
        ] {
            let r = parse(line);
            let bad_suite = line.contains("profile_does_not_exist");
            match r {
                Ok(_) => assert!(!bad_suite, "{line:?} parsed"),
                // `help` prints and exits: clap reports it as an "error".
                Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {}
                Err(e) => assert!(bad_suite, "{line:?}: {e}"),
            }
        }
    }

    /// The `cargo xtask` lines of `.ci/run` and of the code blocks of the
    /// workspace's Markdown files (not the usage synopses, with `[`/`|`).
    #[test]
    fn command_lines_of_ci_and_docs_parse() {
        let root = crate::util::root();
        let mut files = vec![root.join(".ci/run")];
        let mut dirs = vec![root.clone()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if p.is_dir() && !name.starts_with('.') && name != "target" {
                    dirs.push(p);
                } else if name.ends_with(".md") {
                    files.push(p);
                }
            }
        }
        let mut seen = 0;
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let script = f.ends_with(".ci/run");
            let mut in_block = false;
            for line in text.lines() {
                if line.trim_start().starts_with("```") {
                    in_block = !in_block;
                    continue;
                }
                let line = line.split('#').next().unwrap().trim();
                let Some(args) = line.strip_prefix("cargo xtask") else {
                    continue;
                };
                if !(in_block || script) || line.contains(['[', '|']) {
                    continue;
                }
                seen += 1;
                if let Err(e) = parse(args) {
                    panic!("{}: {line:?}: {e}", f.display());
                }
            }
        }
        assert!(seen >= 10, "only {seen} command lines found");
    }

    #[test]
    fn values_and_errors() {
        let Some(Command::RunE2e(r)) =
            parse("run-e2e --arch all --suite e2e --suite load --qemu 10.0 x")
                .unwrap()
                .command
        else {
            panic!()
        };
        assert_eq!(r.arch.or(&[]), Arch::ALL.to_vec());
        assert_eq!(r.suites, ["e2e", "load"]);
        assert_eq!(r.qemu, Qemu::Backports);
        assert_eq!(r.filter.as_deref(), Some("x"));
        // The last --arch wins.
        let Some(Command::Soak(s)) = parse("soak --arch all --arch aarch64").unwrap().command
        else {
            panic!()
        };
        assert_eq!(s.arch.or(&[]), [Arch::Aarch64]);
        let Some(Command::Bench(b)) = parse("bench --boots 5 --no-mem").unwrap().command else {
            panic!()
        };
        assert_eq!(
            b.to_args(),
            ["--arch", "x86_64", "--boots", "5", "--no-mem"]
        );
        let Some(Command::Profile(p)) = parse("profile --size 4K --interval-ms 0.5")
            .unwrap()
            .command
        else {
            panic!()
        };
        assert_eq!(p.size, 4096);
        assert_eq!(p.interval_ms, std::time::Duration::from_micros(500));
        for bad in [
            "nonsense",
            "bench --reps 0",
            "bench --boots 0",
            "bench --arch all",
            "profile --mode fast",
            "run-e2e --qemu 9.0",
            "run-e2e a b",
            "build-image --guest windows",
            "dist-docs extra",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
