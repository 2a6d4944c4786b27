//! The Linux test VM: Debian's cloud kernel with an initramfs whose `/init`
//! is `vsock-transport`'s `linux_service` example, serving the svmc
//! protocol over the kernel's AF_VSOCK; and a second initramfs that runs
//! the `host_vsock` tests of `vsock-transport` inside the VM, against the
//! kernel's `vsock_loopback`.
//!
//! Set-up (nothing of it is committed; all under `target/`):
//!
//! 1. `apt-cache depends linux-image-cloud-amd64` names the versioned
//!    package the meta package depends on; `apt-get download` fetches it
//!    into `target/linux/` and `dpkg -x` unpacks it there.
//! 2. The service and the test binary are built statically
//!    (`-C target-feature=+crt-static`, glibc) for
//!    `x86_64-unknown-linux-gnu` in their own target directory
//!    (`target/linux-service`), so the host build is not invalidated.
//! 3. The initramfs is an uncompressed `newc` cpio archive written here
//!    (the kernel takes it as is; no `cpio` tool needed), with `/init`, the
//!    kernel modules (this kernel's are not compressed) and their load
//!    order in `/etc/svmc-modules`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use svmc_host::{Arch, Vm, VmConfig};

use crate::util::{Result, cargo, output, run, show};

/// The Debian meta package of the kernel.
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// The Rust target of the programs in the VM.
const LINUX_TARGET: &str = "x86_64-unknown-linux-gnu";

/// Modules for virtio-vsock over PCI, in load order (each needs the ones
/// before it; `modules.dep` of the kernel package).
const VSOCK_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "virtio_pci",
    "vmw_vsock_virtio_transport",
];

/// The loopback transport (CID 1) the in-VM tests need.
const LOOPBACK_MODULE: &str = "vsock_loopback";

/// The kernel command-line word that makes `/init` run the tests.
const TESTS_MODE: &str = "svmc.mode=vsock-tests";

/// RAM of the test VM: the tests send 8 MiB messages over loopback.
const TESTS_MEMORY_MIB: u32 = 256;

/// The Linux test VM's files.
pub struct LinuxVm {
    /// The kernel (bzImage).
    pub kernel: PathBuf,
    /// The initramfs that serves the protocol.
    pub initrd: PathBuf,
    /// The initramfs that runs the AF_VSOCK tests.
    pub tests_initrd: PathBuf,
}

/// `target/linux`.
fn dir() -> PathBuf {
    crate::image::target_dir().join("linux")
}

/// Builds (or refreshes) the Linux test VM: kernel, service, tests,
/// both initramfs images.
pub fn build() -> Result<LinuxVm> {
    let (default_kernel, default_initrd) =
        svmc_host::tools::default_linux().ok_or("no workspace to put the Linux guest in")?;
    let tests_initrd =
        svmc_host::tools::linux_tests_initrd().ok_or("no workspace to put the Linux guest in")?;
    let out = dir();
    fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let unpacked = kernel_package(&out)?;

    let vmlinuz = find_file(&unpacked.join("boot"), |n| n.starts_with("vmlinuz-"))?;
    copy_if_changed(&vmlinuz, &default_kernel)?;
    let modules_root = unpacked.join("lib/modules");

    let service = build_service()?;
    let tests = build_tests()?;

    let mut files = base_files(&modules_root, VSOCK_MODULES)?;
    files.push(Entry::file(
        "init",
        fs::read(&service).map_err(read_err(&service))?,
        0o755,
    ));
    write_if_changed(&default_initrd, &newc(&files))?;

    let mut modules = VSOCK_MODULES.to_vec();
    modules.push(LOOPBACK_MODULE);
    let mut files = base_files(&modules_root, &modules)?;
    files.push(Entry::file(
        "init",
        fs::read(&service).map_err(read_err(&service))?,
        0o755,
    ));
    files.push(Entry::file(
        "bin/vsock-tests",
        fs::read(&tests).map_err(read_err(&tests))?,
        0o755,
    ));
    write_if_changed(&tests_initrd, &newc(&files))?;
    Ok(LinuxVm {
        kernel: default_kernel,
        initrd: default_initrd,
        tests_initrd,
    })
}

fn read_err(p: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("reading {}: {e}", p.display())
}

/// Fetches and unpacks the kernel package once; returns the unpacked tree.
fn kernel_package(out: &Path) -> Result<PathBuf> {
    let unpacked = out.join("kernel");
    if unpacked.join("boot").is_dir() && unpacked.join("lib/modules").is_dir() {
        return Ok(unpacked);
    }
    let hint = "the Linux test VM needs Debian's kernel package: run `apt-get update` \
                (as root) if apt does not know it";
    let depends = || output(Command::new("apt-cache").args(["depends", KERNEL_META_PACKAGE]));
    // A fresh machine may have no package lists yet: update them once (as
    // root) and ask again.
    let deps = match depends() {
        Some(d) => d,
        None if is_root() => {
            run(Command::new("apt-get")
                .arg("update")
                .env("DEBIAN_FRONTEND", "noninteractive"))?;
            depends().ok_or_else(|| {
                format!("`apt-cache depends {KERNEL_META_PACKAGE}` failed; {hint}")
            })?
        }
        None => {
            return Err(format!(
                "`apt-cache depends {KERNEL_META_PACKAGE}` failed; {hint}"
            ));
        }
    };
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-"))
        .ok_or_else(|| format!("{KERNEL_META_PACKAGE} depends on no linux-image-*; {hint}"))?
        .to_string();
    eprintln!("xtask: fetching {package} (for the Linux test VM)");
    let mut cmd = Command::new("apt-get");
    cmd.args(["download", &package]).current_dir(out);
    run(&mut cmd).map_err(|e| format!("{e}; {hint}"))?;
    let deb = find_file(out, |n| n.starts_with(&package) && n.ends_with(".deb"))?;
    let tmp = out.join("kernel.tmp");
    let _ = fs::remove_dir_all(&tmp);
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tmp))?;
    fs::rename(&tmp, &unpacked).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    Ok(unpacked)
}

/// Whether we run as root (the owner of `/proc/self` is the effective user).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn find_file(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_str().is_some_and(&pred))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| format!("nothing expected found in {}", dir.display()))
}

/// Finds `<name>.ko` under the modules tree.
fn find_module(root: &Path, name: &str) -> Result<PathBuf> {
    fn walk(dir: &Path, file: &str) -> Option<PathBuf> {
        for e in fs::read_dir(dir).ok()?.filter_map(|e| e.ok()) {
            let p = e.path();
            if p.is_dir() {
                if let Some(f) = walk(&p, file) {
                    return Some(f);
                }
            } else if e.file_name() == file {
                return Some(p);
            }
        }
        None
    }
    let file = format!("{name}.ko");
    walk(root, &file).ok_or_else(|| {
        format!(
            "{file} not found in {} (compressed modules are not supported)",
            root.display()
        )
    })
}

/// The static environment for cargo builds of programs for the VM.
fn static_build(cmd: &mut Command) {
    cmd.env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["--release", "--target", LINUX_TARGET, "--target-dir"])
        .arg(crate::image::target_dir().join("linux-service"));
}

fn build_service() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--example",
        "linux_service",
        "-p",
        "vsock-transport",
        "--features",
        "linux-endpoint",
    ]);
    static_build(&mut cmd);
    run(&mut cmd)?;
    Ok(crate::image::target_dir()
        .join("linux-service")
        .join(LINUX_TARGET)
        .join("release/examples/linux_service"))
}

/// Builds `vsock-transport`'s `host_vsock` test binary, the async
/// (`tokio`) AF_VSOCK tests included; returns its path.
fn build_tests() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json",
        "-p",
        "vsock-transport",
        "--features",
        // With the async API's AF_VSOCK tests (`async_vsock` in it).
        "host-vsock,tokio",
        "--test",
        "host_vsock",
    ]);
    static_build(&mut cmd);
    eprintln!("xtask: $ {}", show(&cmd));
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("`{}` failed with {}", show(&cmd), out.status));
    }
    // The `executable` of the compiler-artifact message of the test.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("\"name\":\"host_vsock\""))
        .find_map(|l| {
            let rest = &l[l.find("\"executable\":\"")? + 14..];
            Some(PathBuf::from(&rest[..rest.find('"')?]))
        })
        .ok_or_else(|| "cargo did not report the host_vsock test executable".into())
}

/// Directories, the console device node, the modules and their load order.
fn base_files(modules_root: &Path, modules: &[&str]) -> Result<Vec<Entry>> {
    let mut files: Vec<Entry> = ["bin", "dev", "etc", "lib", "lib/modules", "proc", "sys"]
        .into_iter()
        .map(Entry::dir)
        .collect();
    // /dev/console (5, 1): the kernel opens it as init's stdin/out/err.
    files.push(Entry {
        name: "dev/console".into(),
        mode: 0o020600,
        rdev: (5, 1),
        data: Vec::new(),
    });
    let mut order = String::new();
    for m in modules {
        let path = find_module(modules_root, m)?;
        let name = format!("lib/modules/{m}.ko");
        order.push_str(&format!("/{name}\n"));
        files.push(Entry::file(
            &name,
            fs::read(&path).map_err(read_err(&path))?,
            0o644,
        ));
    }
    files.push(Entry::file("etc/svmc-modules", order.into_bytes(), 0o644));
    Ok(files)
}

/// One member of a cpio archive.
struct Entry {
    name: String,
    /// `st_mode`: file type and permissions.
    mode: u32,
    /// Device number of a device node.
    rdev: (u32, u32),
    data: Vec<u8>,
}

impl Entry {
    fn dir(name: &str) -> Self {
        Self {
            name: name.into(),
            mode: 0o040755,
            rdev: (0, 0),
            data: Vec::new(),
        }
    }

    fn file(name: &str, data: Vec<u8>, perm: u32) -> Self {
        Self {
            name: name.into(),
            mode: 0o100000 | perm,
            rdev: (0, 0),
            data,
        }
    }
}

/// A `newc` cpio archive (the "new ASCII" format the kernel unpacks,
/// Linux `Documentation/driver-api/early-userspace/buffer-format.rst`):
/// per member a 110-byte header of `070701` and 13 eight-digit hex fields,
/// the NUL-terminated name, the data, each padded to 4 bytes; it ends with
/// the member `TRAILER!!!`.
fn newc(entries: &[Entry]) -> Vec<u8> {
    fn pad(v: &mut Vec<u8>) {
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
    }
    let mut v = Vec::new();
    let trailer = Entry {
        name: "TRAILER!!!".into(),
        mode: 0,
        rdev: (0, 0),
        data: Vec::new(),
    };
    for (ino, e) in entries.iter().chain([&trailer]).enumerate() {
        let nlink = if e.mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            ino as u32 + 1,
            e.mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            e.data.len() as u32,
            0, // devmajor
            0, // devminor
            e.rdev.0,
            e.rdev.1,
            e.name.len() as u32 + 1,
            0, // check
        ];
        v.extend_from_slice(b"070701");
        for f in fields {
            v.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        v.extend_from_slice(e.name.as_bytes());
        v.push(0);
        pad(&mut v);
        v.extend_from_slice(&e.data);
        pad(&mut v);
    }
    v
}

fn write_if_changed(path: &Path, data: &[u8]) -> Result<()> {
    if fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    fs::write(path, data).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn copy_if_changed(from: &Path, to: &Path) -> Result<()> {
    write_if_changed(to, &fs::read(from).map_err(read_err(from))?)
}

/// Boots the test VM with the `host_vsock` tests as its `/init` workload,
/// prints their output (from the serial console) and fails unless they all
/// passed.
pub fn run_vsock_tests(vm: &LinuxVm) -> Result<()> {
    let mut config = VmConfig::linux(Arch::X86_64, &vm.kernel, &vm.tests_initrd);
    config.cmdline.push(TESTS_MODE.into());
    config.memory_mib = TESTS_MEMORY_MIB;
    config.log_dir = Some(dir().join("logs"));
    eprintln!("xtask: running vsock-transport's host_vsock tests in the Linux VM");
    let start = Instant::now();
    let mut vm = Vm::launch(&config).map_err(|e| e.to_string())?;
    let status = vm.wait_exit(Duration::from_secs(600));
    let took = start.elapsed();
    let log = fs::read_to_string(vm.serial_log()).unwrap_or_default();
    let serial = vm.serial_log().display().to_string();
    let status = status.map_err(|e| e.to_string())?;
    // The test harness's own lines: one per test and the summary.
    for line in log.lines().filter(|l| {
        l.starts_with("test ")
            || l.starts_with("running ")
            || l.starts_with("test result:")
            || l.starts_with("host_vsock:")
            || l.starts_with("svmc-vsock-tests:")
    }) {
        println!("vm: {line}");
    }
    let passed = log.lines().any(|l| l == "svmc-vsock-tests: exit status 0")
        && log.lines().any(|l| l.starts_with("test result: ok."))
        && !log.contains("skipped: no usable vsock loopback");
    if passed && status.success() {
        println!(
            "host_vsock in the Linux VM: passed ({:.1} s with boot); serial log {serial}",
            took.as_secs_f64()
        );
        Ok(())
    } else {
        Err(format!(
            "host_vsock tests in the Linux VM failed (QEMU {status}); serial log {serial}"
        ))
    }
}
