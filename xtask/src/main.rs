//! `cargo xtask <command>`: project automation (rust-analyzer style: plain
//! std, one module per command).

mod bench;
mod ci;
mod docs;
mod e2e;
mod image;
mod linux;
mod outside;
mod profile;
mod qmp;
mod setup;
mod util;

use std::process::ExitCode;

use host::Arch;

const HELP: &str = "\
cargo xtask <command> [options]

Commands:
  setup                        install what is missing: bare-metal Rust targets (rustup),
                               QEMU (apt-get), vhost-device-vsock 0.3.0 and the cddl 0.10.7
                               CLI (cargo install into .tools/), QEMU 10.0 from
                               bookworm-backports (apt-get download, dpkg -x into .tools/)
  build-image [--arch A]       build the release guest image and print its path (default x86_64)
  build-image --verbose        the same with debug and trace logs compiled in (`svmc.log=debug`),
                               as guest-verbose next to it
  build-image --guest linux    fetch Debian's cloud kernel, build the Linux test VM (kernel,
                               initramfs with the linux_service example as /init) into target/linux
  run-e2e [--arch A|all] [--machine M] [--qemu system|10.0] [--suite S]... [FILTER]
                               set up, build, and run the QEMU suites (e2e, conformance, faults,
                               hostile_host, hostile_guest, cli_vm, load, soak at CI size; --suite
                               picks some) against real QEMU (the distribution's, or 10.0 unpacked
                               into .tools/)
  run-e2e --guest linux [FILTER]
                               the same suite against the Linux test VM (x86_64), then
                               vsock-transport's AF_VSOCK tests inside it (vsock_loopback)
  soak [--arch A] [FILTER]     set up, build, and run the soak suite with the full counts
                               (200 launch cycles, 100,000 requests on one connection, 4 VMs at once)
  bench [--arch A] [--reps N] [--no-codec] [--no-microvm] [--no-mem]
                               boot, round-trip, throughput, size and memory figures next to
                               their floors (QEMU alone, the guest's raw reverse and echo modes);
                               see BENCHMARKS.md
  profile [--arch A] [--mode service|raw-reverse] [--size N] [--samples N] [--interval-ms M]
          [--top N]            sample the guest's PC through QMP while the host repeats N-byte
                               reverses, mapped to the symbols of an unstripped build (the N
                               busiest functions and lines); see BENCHMARKS.md
  demo                         set up, build, and run `host-cli reverse abc` (the README's main job)
  outside [--arch A|all]       the key store service VM (guest/examples/keystore) as an outside project:
                               copied out of the workspace with path dependencies, built and run
                               with its README's commands (default: both architectures)
  dist-docs [--out DIR]        host-cli's shell completions (bash, zsh, fish, elvish, PowerShell)
                               and man pages, from its clap definition, into target/dist
  lint                         what CI checks before the tests: fmt, clippy (every feature set
                               and target, the QEMU suites, the guest), the guest's docs
  test                         the whole test suite: host unit/integration tests, bare-metal
                               builds, docs, the end-to-end suite on every architecture, and
                               the Linux guest (e2e + in-VM AF_VSOCK tests); the QEMU suites run on
                               every machine of the test matrix (tests::suites::MATRIX)
  help                         this text

Architectures: x86_64, aarch64 (all = both).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::setup(),
        Some("build-image") => build_image(&args[1..]),
        Some("run-e2e") => run_e2e(&args[1..]),
        Some("soak") => soak(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("profile") => profile::run(&args[1..]),
        Some("demo") => demo(),
        Some("outside") => outside(&args[1..]),
        Some("test") => test(),
        Some("lint") => ci::lint(),
        Some("dist-docs") => docs::dist_docs(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            println!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other:?}\n\n{HELP}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Splits `--arch A` out of `args`; `all` means every architecture.
fn archs(args: &[String], default: &[Arch]) -> util::Result<(Vec<Arch>, Vec<String>)> {
    let mut archs = default.to_vec();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if a == "--arch" {
            Some(it.next().ok_or("--arch needs a value")?.clone())
        } else {
            a.strip_prefix("--arch=").map(str::to_string)
        };
        match value {
            Some(v) if v == "all" => archs = Arch::ALL.to_vec(),
            Some(v) => archs = vec![v.parse()?],
            None => rest.push(a.clone()),
        }
    }
    Ok((archs, rest))
}

/// Splits `--guest firmware|linux` out of `args`.
fn guest(args: &[String]) -> util::Result<(host::Guest, Vec<String>)> {
    let mut guest = host::Guest::Firmware;
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if a == "--guest" {
            Some(it.next().ok_or("--guest needs a value")?.clone())
        } else {
            a.strip_prefix("--guest=").map(str::to_string)
        };
        match value {
            Some(v) => guest = v.parse()?,
            None => rest.push(a.clone()),
        }
    }
    Ok((guest, rest))
}

fn outside(args: &[String]) -> util::Result<()> {
    let (archs, rest) = archs(args, &Arch::ALL)?;
    if let Some(extra) = rest.first() {
        return Err(format!("unexpected argument {extra:?}"));
    }
    setup::setup()?;
    outside::run_outside(&archs)
}

fn build_image(args: &[String]) -> util::Result<()> {
    let (guest, args) = guest(args)?;
    if guest == host::Guest::Linux {
        let vm = linux::build()?;
        println!("{}\n{}", vm.kernel.display(), vm.initrd.display());
        return Ok(());
    }
    let (archs, rest) = archs(&args, &[Arch::X86_64])?;
    let verbose = rest.iter().any(|a| a == "--verbose");
    if let Some(extra) = rest.iter().find(|a| *a != "--verbose") {
        return Err(format!("unexpected argument {extra:?}"));
    }
    setup::setup()?;
    for arch in archs {
        let path = if verbose {
            image::build_verbose(arch)?
        } else {
            image::build(arch, &[])?
        };
        println!("{}", path.display());
    }
    Ok(())
}

/// Splits every `--NAME V` / `--NAME=V` out of `args`.
fn option(args: &[String], name: &str) -> util::Result<(Vec<String>, Vec<String>)> {
    let flag = format!("--{name}");
    let mut values = Vec::new();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if *a == flag {
            values.push(it.next().ok_or(format!("{flag} needs a value"))?.clone());
        } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            values.push(v.to_string());
        } else {
            rest.push(a.clone());
        }
    }
    Ok((values, rest))
}

fn run_e2e(args: &[String]) -> util::Result<()> {
    let (guest, args) = guest(args)?;
    let (only, args) = option(&args, "suite")?;
    e2e::check_names(&only)?;
    let (machine, args) = option(&args, "machine")?;
    let (qemu, args) = option(&args, "qemu")?;
    let qemu = match qemu.last().map(String::as_str) {
        None | Some("system") => tests::suites::Qemu::System,
        Some("10.0") => tests::suites::Qemu::Backports,
        Some(v) => return Err(format!("--qemu {v}: use system or 10.0")),
    };
    let (archs, rest) = archs(&args, &[Arch::X86_64])?;
    if rest.len() > 1 {
        return Err(format!("unexpected argument {:?}", rest[1]));
    }
    let filter = rest.first().map(String::as_str);
    setup::setup()?;
    if guest == host::Guest::Linux {
        return e2e::run_linux(&only, filter);
    }
    for arch in archs {
        let machine = match machine.last() {
            Some(m) => Some(
                host::machine::find(arch, Some(m))
                    .map_err(|e| e.to_string())?
                    .name,
            ),
            None => None,
        };
        let target = tests::suites::Target {
            arch,
            machine,
            suites: None,
            qemu,
        };
        e2e::run(&target, &only, filter)?;
    }
    Ok(())
}

fn soak(args: &[String]) -> util::Result<()> {
    let (archs, rest) = archs(args, &[Arch::X86_64])?;
    setup::setup()?;
    for arch in archs {
        e2e::soak(arch, rest.first().map(String::as_str))?;
    }
    Ok(())
}

fn demo() -> util::Result<()> {
    setup::setup()?;
    let image = image::build(Arch::X86_64, &[])?;
    util::run(
        util::cargo()
            .args([
                "run",
                "--quiet",
                "--release",
                "-p",
                "host-cli",
                "--",
                "--image",
            ])
            .arg(image)
            .args(["reverse", "abc"]),
    )
}

fn test() -> util::Result<()> {
    setup::setup()?;
    // Host crates: unit, integration and doc tests.
    util::run(util::cargo().args(["test"]))?;
    // The published crates with every feature (the features are additive;
    // this includes vsock-transport's test doubles and comm's `std`).
    util::run(
        util::cargo()
            .arg("test")
            .args(ci::library_packages())
            .arg("--all-features"),
    )?;
    // The example program of another protocol (a key-value store) on
    // hybrid vsock: built and run.
    util::run(util::cargo().args([
        "run",
        "--quiet",
        "-p",
        "vsock-transport",
        "--features",
        "host-hybrid",
        "--example",
        "kv",
    ]))?;
    // The no_std crates on the bare-metal targets.
    for arch in Arch::ALL {
        util::run(util::cargo().args([
            "build",
            "-p",
            ci::COMM_PACKAGE,
            "--target",
            arch.target_triple(),
        ]))?;
        util::run(
            util::cargo()
                .args(["build", "-p", "vsock-transport", "--features"])
                .arg(ci::TRANSPORT_GUEST_FEATURE)
                .args(["--target", arch.target_triple()]),
        )?;
    }
    // Docs build clean.
    util::run(
        util::cargo()
            .args(["doc", "--no-deps", "--quiet"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    // The end-to-end and robustness suites on every architecture, then the
    // Linux test VM (the same e2e suite, and AF_VSOCK in a real kernel). All
    // of them run and report even if an earlier one failed.
    let mut failed = Vec::new();
    for target in tests::suites::MATRIX {
        if let Err(e) = e2e::run(target, &[], None) {
            let machine = target.machine.unwrap_or("default machine");
            failed.push(format!(
                "suites on {} ({machine}, {:?} QEMU): {e}",
                target.arch, target.qemu
            ));
        }
    }
    if let Err(e) = e2e::run_linux(&[], None) {
        failed.push(format!("Linux guest: {e}"));
    }
    if let Err(e) = outside::run_outside(&Arch::ALL) {
        failed.push(format!(
            "the outside service VM (guest/examples/keystore): {e}"
        ));
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed:\n  {}", failed.join("\n  ")))
    }
}
