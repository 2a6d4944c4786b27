//! `cargo xtask <command>`: project automation in the manner of
//! rust-analyzer's xtask: the commands and flags declared in [`flags`]
//! (clap), one module per command, processes run through [`util`].

mod bench;
mod ci;
mod docs;
mod e2e;
mod flags;
mod image;
mod linux;
mod outside;
mod profile;
mod qmp;
mod setup;
#[cfg(test)]
mod tidy;
mod util;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use svmc_host::Arch;

use flags::Command;

fn main() -> ExitCode {
    let xtask = flags::Xtask::parse();
    let result = match xtask.command {
        Some(Command::Setup) => setup::setup(),
        Some(Command::BuildImage(f)) => build_image(&f),
        Some(Command::RunE2e(f)) => run_e2e(&f),
        Some(Command::Soak(f)) => soak(&f),
        Some(Command::Bench(f)) => bench::run(&f.to_args()),
        Some(Command::Profile(f)) => profile::run(&f),
        Some(Command::Demo) => demo(),
        Some(Command::Outside(f)) => outside(&f),
        Some(Command::Test) => test(),
        Some(Command::Lint) => ci::lint(),
        Some(Command::DistDocs(f)) => docs::dist_docs(f.out),
        None => {
            println!("{}", flags::Xtask::command().render_long_help());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Splits `--arch A` out of `args`; `all` means every architecture. For
/// `bench`, which parses the arguments [`flags::Bench`] hands it.
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

fn outside(f: &flags::Outside) -> util::Result<()> {
    setup::setup()?;
    outside::run_outside(&f.arch.0)
}

fn build_image(f: &flags::BuildImage) -> util::Result<()> {
    if f.guest == svmc_host::Guest::Linux {
        let vm = linux::build()?;
        println!("{}\n{}", vm.kernel.display(), vm.initrd.display());
        return Ok(());
    }
    setup::setup()?;
    for arch in f.arch.or(&[Arch::X86_64]) {
        let path = if f.verbose {
            image::build_verbose(arch)?
        } else {
            image::build(arch, &[])?
        };
        println!("{}", path.display());
    }
    Ok(())
}

fn run_e2e(f: &flags::RunE2e) -> util::Result<()> {
    let filter = f.filter.as_deref();
    setup::setup()?;
    if f.guest == svmc_host::Guest::Linux {
        return e2e::run_linux(&f.suites, filter);
    }
    for arch in f.arch.or(&[Arch::X86_64]) {
        let machine = match &f.machine {
            Some(m) => Some(
                svmc_host::machine::find(arch, Some(m))
                    .map_err(|e| e.to_string())?
                    .name,
            ),
            None => None,
        };
        let target = tests::suites::Target {
            arch,
            machine,
            suites: None,
            qemu: f.qemu,
        };
        e2e::run(&target, &f.suites, filter)?;
    }
    Ok(())
}

fn soak(f: &flags::Soak) -> util::Result<()> {
    setup::setup()?;
    for arch in f.arch.or(&[Arch::X86_64]) {
        e2e::soak(arch, f.filter.as_deref())?;
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
        util::run(
            util::cargo()
                .args(["build", "-p", ci::SVMC_PACKAGE, "--features"])
                .arg(ci::SVMC_SERVER_FEATURE)
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
