//! Shared pieces of the workspace-level tests: the end-to-end context (which
//! image, which architecture), the one runner of the QEMU suites
//! ([`harness`]), what xtask and the suites share ([`suites`]), the
//! raw-frame client of the suites that speak bytes ([`raw`]), an svmc
//! server in this process for them ([`inproc`]), and helpers to look at processes and leftovers.

pub mod harness;
pub mod inproc;
pub mod raw;
pub mod suites;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use svmc_host::{Arch, Guest, Session, SessionConfig, Vm, VmConfig};
use vsock_transport::Timeouts;

pub use harness::Case;
use suites::vars;

/// What the end-to-end tests run against, from the environment that
/// `cargo xtask run-e2e` sets.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Guest architecture.
    pub arch: Arch,
    /// QEMU machine type (`None`: the architecture's default).
    pub machine: Option<String>,
    /// What runs in the VM.
    pub guest: Guest,
    /// Guest image (the kernel for a Linux guest).
    pub image: PathBuf,
    /// The initramfs of a Linux guest.
    pub initrd: Option<PathBuf>,
    /// The `host-cli` binary.
    pub host_cli: PathBuf,
    /// A directory for logs, kept for the run.
    pub log_dir: PathBuf,
}

impl Ctx {
    /// Reads the variables of [`suites::vars`] that `cargo xtask run-e2e`
    /// sets: architecture, image and `host-cli`; optionally the machine, and
    /// for a Linux guest the guest kind and its initramfs.
    pub fn from_env(log_dir: PathBuf) -> Result<Self, String> {
        let var = |k: &str| {
            std::env::var(k)
                .map_err(|_| format!("{k} is not set: run the suite with `cargo xtask run-e2e`"))
        };
        let guest: Guest = match std::env::var(vars::GUEST) {
            Ok(g) => g.parse()?,
            Err(_) => Guest::Firmware,
        };
        let initrd = match guest {
            Guest::Firmware => None,
            Guest::Linux => Some(var(vars::INITRD)?.into()),
        };
        Ok(Self {
            arch: var(vars::ARCH)?.parse()?,
            machine: std::env::var(vars::MACHINE).ok().filter(|m| !m.is_empty()),
            guest,
            image: var(vars::IMAGE)?.into(),
            initrd,
            host_cli: var(vars::HOST_CLI)?.into(),
            log_dir,
        })
    }

    /// `<arch>[-<machine>][-linux]`, for summary lines.
    pub fn label(&self) -> String {
        let mut l = self.arch.name().to_string();
        if let Some(m) = &self.machine {
            l.push('-');
            l.push_str(m);
        }
        if self.guest == Guest::Linux {
            l.push_str("-linux");
        }
        l
    }

    /// A VM configuration for this context.
    pub fn vm_config(&self) -> VmConfig {
        let mut c = match &self.initrd {
            Some(initrd) => VmConfig::linux(self.arch, &self.image, initrd),
            None => VmConfig::new(self.arch, &self.image),
        };
        c.log_dir = Some(self.log_dir.clone());
        if self.machine.is_some() {
            c.machine = self.machine.clone();
        }
        c
    }

    /// The name the guest gives in `GuestInfo::firmware`.
    pub fn firmware_name(&self) -> &'static str {
        match self.guest {
            Guest::Firmware => "svmc-guest",
            Guest::Linux => "svmc-linux-service",
        }
    }

    /// `host-cli` options that select this context's guest: `--guest`,
    /// `--image` and, for Linux, `--initrd`.
    pub fn host_cli_guest_args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec![
            "--guest".into(),
            self.guest.name().into(),
            "--image".into(),
            self.image.clone().into(),
        ];
        if let Some(m) = &self.machine {
            a.push("--machine".into());
            a.push(m.into());
        }
        if let Some(i) = &self.initrd {
            a.push("--initrd".into());
            a.push(i.clone().into());
        }
        a
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
        let mut s = SessionConfig::new(svmc_host::Attach::Launch(Box::new(config)));
        s.timeouts = self.timeouts();
        Session::open(&s).map_err(|e| format!("opening a session: {e}"))
    }

    /// Launches a VM without talking to it.
    pub fn launch(&self) -> Result<Vm, String> {
        Vm::launch(&self.vm_config()).map_err(|e| e.to_string())
    }
}

/// Powers off the VM of a suite's shared session (its `last` case), if
/// it is still there, and checks QEMU's exit status is 0.
pub fn power_off_shared(session: &std::sync::Mutex<Option<Session>>) -> Result<(), String> {
    let Some(s) = session.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return Ok(());
    };
    let status = s
        .power_off(Duration::from_secs(20))
        .map_err(|e| e.to_string())?
        .ok_or("no exit status")?;
    ensure(status.success(), || format!("QEMU exit status {status}"))
}

/// `Err` with a message unless `cond`.
pub fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

/// Reads a size from the environment variable `var`, or `default`.
pub fn env_count(var: &str, default: u64) -> u64 {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Checks that `msg` is one line that mentions each of `needles`.
pub fn one_line_mentioning(msg: &str, needles: &[&str]) -> Result<(), String> {
    let msg = msg.trim_end();
    ensure(!msg.is_empty() && !msg.contains('\n'), || {
        format!("not a one-line message: {msg:?}")
    })?;
    for n in needles {
        ensure(msg.contains(n), || {
            format!("message does not mention {n:?}: {msg:?}")
        })?;
    }
    Ok(())
}

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let machine = self.machine.as_deref().unwrap_or("default machine");
        write!(
            f,
            "{} ({machine}, {} guest) with {}",
            self.arch,
            self.guest,
            self.image.display()
        )
    }
}

/// Looking at processes through `/proc`.
pub mod procs {
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// `(state, ppid)` of `pid` from `/proc/<pid>/stat`, or `None` if it is gone.
    pub fn stat(pid: u32) -> Option<(char, u32)> {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may contain anything.
        let rest = &s[s.rfind(')')? + 2..];
        let mut it = rest.split(' ');
        let state = it.next()?.chars().next()?;
        let ppid = it.next()?.parse().ok()?;
        Some((state, ppid))
    }

    /// Whether `pid` exists and is not a zombie.
    pub fn alive(pid: u32) -> bool {
        stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
    }

    fn all_pids() -> Vec<u32> {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Live (non-zombie) children of `parent`.
    pub fn children_of(parent: u32) -> Vec<u32> {
        all_pids()
            .into_iter()
            .filter(|&p| stat(p).is_some_and(|(st, pp)| pp == parent && st != 'Z'))
            .collect()
    }

    /// Live children of this process.
    pub fn our_children() -> Vec<u32> {
        children_of(std::process::id())
    }

    /// Live processes whose command line mentions `needle` (e.g. a runtime
    /// directory), other than this process.
    pub fn mentioning(needle: &str) -> Vec<u32> {
        let me = std::process::id();
        all_pids()
            .into_iter()
            .filter(|&p| p != me && alive(p))
            .filter(|&p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
            })
            .collect()
    }

    /// Live processes whose command line mentions `dir`.
    pub fn mentioning_dir(dir: &Path) -> Vec<u32> {
        mentioning(&dir.to_string_lossy())
    }

    /// Open file descriptors of this process.
    pub fn fd_count() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count().saturating_sub(1)) // the directory's own fd
            .unwrap_or(0)
    }

    /// Waits up to `timeout` for all of `pids` to be gone (or zombies);
    /// returns the ones still alive.
    pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
        let start = Instant::now();
        loop {
            let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
            if left.is_empty() || start.elapsed() > timeout {
                return left;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls `f` every 5 ms until it returns `Some`, at most `timeout`.
    pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
        let start = Instant::now();
        loop {
            if let Some(t) = f() {
                return Some(t);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// A private temporary directory made the process's `TMPDIR`, so that every
/// VM runtime directory (`$TMPDIR/svmc-*`) created by this process or by the
/// `host-cli` processes it starts lands in it and leftovers can be counted
/// without interference from other runs on the machine.
pub struct PrivateTmp {
    dir: tempfile::TempDir,
}

impl PrivateTmp {
    /// Creates the directory and sets `TMPDIR` to it.
    ///
    /// # Safety
    ///
    /// Must be called before any other thread is started (it changes the
    /// environment).
    pub unsafe fn install(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("svmc-{label}-tmp-"))
            .tempdir()
            .expect("creating a private TMPDIR");
        // SAFETY: the caller guarantees that no other thread runs yet, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var("TMPDIR", dir.path()) };
        Self { dir }
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Entries in it now (runtime directories, stray sockets).
    pub fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .map(|d| {
                d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Fails unless the directory is empty and no process mentions it on
    /// its command line (QEMU and the daemon name their sockets there)
    /// after up to `grace`.
    pub fn check_clean(&self, grace: Duration) -> Result<(), String> {
        let left = procs::poll(grace, || {
            let p = procs::mentioning_dir(self.path());
            p.is_empty().then_some(())
        });
        ensure(left.is_some(), || {
            format!(
                "processes still running with {} on their command line: {:?}",
                self.path().display(),
                procs::mentioning_dir(self.path())
            )
        })?;
        let ok = procs::poll(grace, || self.entries().is_empty().then_some(()));
        ensure(ok.is_some(), || {
            format!(
                "left behind in {}: {:?}",
                self.path().display(),
                self.entries()
            )
        })
    }

    /// Removes everything in the directory (after a case that is expected
    /// to leave something behind, e.g. a `SIGKILL`ed `host-cli`).
    pub fn clear(&self) {
        for e in self.entries() {
            let p = self.path().join(e);
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
}

/// What a test case must not leak: child processes of this process, and
/// anything in the private `TMPDIR`.
pub struct LeakCheck<'a> {
    tmp: &'a PrivateTmp,
    children: Vec<u32>,
}

impl<'a> LeakCheck<'a> {
    /// Notes the children alive now.
    pub fn start(tmp: &'a PrivateTmp) -> Self {
        Self {
            tmp,
            children: procs::our_children(),
        }
    }

    /// Fails if a child started since [`LeakCheck::start`] is still alive
    /// after `grace`, or the private `TMPDIR` is not clean.
    pub fn finish(self, grace: Duration) -> Result<(), String> {
        let extra = || -> Vec<u32> {
            procs::our_children()
                .into_iter()
                .filter(|p| !self.children.contains(p))
                .collect()
        };
        let none = procs::poll(grace, || extra().is_empty().then_some(()));
        ensure(none.is_some(), || {
            format!("child processes left running: {:?}", extra())
        })?;
        self.tmp.check_clean(grace)
    }
}

/// Firmware images made by hand for the fault tests.
pub mod images {
    use svmc_host::Arch;
    use svmc_host::image::{a64, elf};

    /// Like [`svmc_host::image::tiny_elf`], but the code waits for interrupts
    /// forever (with interrupts off on x86_64, so no CPU is burnt under
    /// TCG) and never exits: a guest that hangs early in boot.
    pub fn hanging_elf(arch: Arch) -> Vec<u8> {
        let code = match arch {
            // cli; hlt; jmp $-3 (back to the hlt).
            Arch::X86_64 => vec![0xfa, 0xf4, 0xeb, 0xfd],
            // wfi; b .-4 (back to the wfi).
            Arch::Aarch64 => a64(&[0xd503_207f, 0x17ff_ffff]),
        };
        elf(arch, &code)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn hanging_images_are_valid_elfs_for_their_arch() {
            let dir = tempfile::tempdir().unwrap();
            for arch in Arch::ALL {
                let p = dir.path().join(format!("hang-{arch}.elf"));
                std::fs::write(&p, hanging_elf(arch)).unwrap();
                svmc_host::image::check_image(&p, arch).unwrap();
                for other in Arch::ALL.into_iter().filter(|a| *a != arch) {
                    assert!(svmc_host::image::check_image(&p, other).is_err());
                }
            }
        }
    }
}

/// The independent CDDL validator: the `cddl` crate's CLI (0.10.7,
/// installed into `.tools/bin` by `cargo xtask setup`), run on CBOR bodies
/// against `comm/svmc.cddl`.
pub mod cddl {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use svmc_comm::frame::FrameKind;

    /// The version `cargo xtask setup` installs.
    pub const VERSION: &str = "0.10.7";

    /// The schema.
    pub const SCHEMA: &str = include_str!("../../comm/svmc.cddl");

    /// The root rule of the body of a frame of `kind` (`None` for
    /// `GOODBYE`, which has no body).
    pub fn rule_for(kind: FrameKind) -> Option<&'static str> {
        match kind {
            FrameKind::Hello => Some("hello-body"),
            FrameKind::Request => Some("request-body"),
            FrameKind::Response => Some("response-body"),
            FrameKind::Error => Some("error-body"),
            FrameKind::Cancel => Some("cancel-body"),
            FrameKind::Chunk => Some("chunk-body"),
            FrameKind::Goodbye => None,
        }
    }

    /// The `cddl` binary: `$SVMC_CDDL`, else `.tools/bin/cddl` of the
    /// workspace, checked to be version [`VERSION`].
    pub fn tool() -> Result<PathBuf, String> {
        let path = match std::env::var_os("SVMC_CDDL") {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../.tools/bin/cddl")
                .to_path_buf(),
        };
        let out = Command::new(&path).arg("--version").output().map_err(|e| {
            format!(
                "cannot run {}: {e}; run `cargo xtask setup` to install cddl {VERSION}",
                path.display()
            )
        })?;
        let v = String::from_utf8_lossy(&out.stdout);
        if !v.contains(VERSION) {
            return Err(format!(
                "{} is {v:?}, not cddl {VERSION}; run `cargo xtask setup`",
                path.display()
            ));
        }
        Ok(path)
    }

    /// Validates each of `bodies` (a name for messages, the CBOR bytes)
    /// against `rule` of [`SCHEMA`] with `cddl --ci validate` (the rule is
    /// made the schema's first, which is the one the tool validates
    /// against). Returns the names of the bodies that failed, with the
    /// tool's reason.
    pub fn validate(
        tool: &Path,
        rule: &str,
        bodies: &[(String, Vec<u8>)],
    ) -> Result<Vec<(String, String)>, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let schema = dir.path().join("root.cddl");
        std::fs::write(&schema, format!("root = {rule}\n\n{SCHEMA}")).map_err(|e| e.to_string())?;
        let mut failed = Vec::new();
        for (i, (name, body)) in bodies.iter().enumerate() {
            let file = dir.path().join(format!("{i}.cbor"));
            std::fs::write(&file, body).map_err(|e| e.to_string())?;
            let out = Command::new(tool)
                .args(["--ci", "validate", "--cddl"])
                .arg(&schema)
                .arg("--cbor")
                .arg(&file)
                .output()
                .map_err(|e| format!("running {}: {e}", tool.display()))?;
            if !out.status.success() {
                let why = String::from_utf8_lossy(&out.stderr);
                let why = why.lines().find(|l| l.contains("failed")).unwrap_or("");
                failed.push((name.clone(), why.trim().to_string()));
            }
        }
        Ok(failed)
    }
}
