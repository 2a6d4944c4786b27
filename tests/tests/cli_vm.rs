//! `host-cli` as a VM tool: `start`, `list`, `--vm NAME`,
//! `stop`, `prune`, binary payloads through files, stdin and stdout, and
//! the failures (unknown name, dead VM, payload too large, name in use).
//!
//! Every `host-cli` here runs with a private `XDG_RUNTIME_DIR`, so the VM
//! registry (`$XDG_RUNTIME_DIR/svmc/vms`) is this run's alone: each case
//! checks that no process mentions it on its command line (QEMU and the
//! daemon name their sockets there) and that the registry is empty again
//! when it is done, as they were when it began.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use tests::harness::{Case, Setup, Suite};
use tests::{Ctx, PrivateTmp, ensure, one_line_mentioning, procs};

type R = Result<(), String>;

/// How long leftovers may take to go.
const GRACE: Duration = Duration::from_secs(10);

struct CliVm {
    ctx: Ctx,
    tmp: PrivateTmp,
    xdg: tempfile::TempDir,
    scratch: tempfile::TempDir,
}

impl CliVm {
    fn registry(&self) -> PathBuf {
        self.xdg.path().join("svmc").join("vms")
    }

    /// VM directories in the registry (not its lock file).
    fn vm_dirs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.registry())
            .map(|d| {
                d.filter_map(|e| {
                    let e = e.ok()?;
                    e.path()
                        .is_dir()
                        .then(|| e.file_name().to_string_lossy().into_owned())
                })
                .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Live processes that mention the private runtime directory.
    fn vm_procs(&self) -> Vec<u32> {
        procs::mentioning_dir(self.xdg.path())
    }

    /// `host-cli` with the suite's guest, log directory and registry.
    fn cli(&self) -> Command {
        let mut c = Command::new(&self.ctx.host_cli);
        c.env("XDG_RUNTIME_DIR", self.xdg.path())
            .arg("--arch")
            .arg(self.ctx.arch.name())
            .args(self.ctx.host_cli_guest_args())
            .arg("--log-dir")
            .arg(&self.ctx.log_dir)
            .arg("--timeout")
            .arg("30");
        c
    }

    fn run(&self, args: &[&str]) -> Result<Output, String> {
        self.cli()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running host-cli {args:?}: {e}"))
    }

    /// Runs `host-cli args`, which must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> Result<String, String> {
        let out = self.run(args)?;
        ensure(out.status.success(), || {
            format!(
                "host-cli {args:?}: status {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `host-cli args`, which must fail with one line on stderr that
    /// mentions each of `needles`.
    fn fails(&self, args: &[&str], needles: &[&str]) -> R {
        let out = self.run(args)?;
        ensure(!out.status.success(), || {
            format!("host-cli {args:?} succeeded")
        })?;
        one_line_mentioning(&String::from_utf8_lossy(&out.stderr), needles)
            .map_err(|e| format!("host-cli {args:?}: {e}"))
    }

    /// `start --json [--name name]`: the VM's name and its `list` entry.
    fn start(&self, name: Option<&str>) -> Result<Started, String> {
        let mut args = vec!["--json", "start"];
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        let v = json(&self.ok(&args)?)?;
        let started = Started::from_json(&v)?;
        if let Some(n) = name {
            ensure(started.name == n, || format!("started {v}"))?;
        }
        ensure(Path::new(&started.socket).exists(), || {
            format!("no socket {}", started.socket)
        })?;
        ensure(
            procs::alive(started.qemu) && procs::alive(started.daemon),
            || format!("QEMU or the daemon is not running: {v}"),
        )?;
        Ok(started)
    }

    /// `list --json` as (name, state) pairs.
    fn list(&self) -> Result<Vec<(String, String)>, String> {
        let v = json(&self.ok(&["--json", "list"])?)?;
        let arr = v.as_array().ok_or_else(|| format!("list: {v}"))?;
        Ok(arr
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_string(),
                    e["state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect())
    }

    /// Runs `f` and then checks that no VM process and no registry entry
    /// is left (there were none before: checked too).
    fn checked(&self, f: impl FnOnce() -> R) -> R {
        ensure(
            self.vm_procs().is_empty() && self.vm_dirs().is_empty(),
            || {
                format!(
                    "not clean before the case: processes {:?}, VMs {:?}",
                    self.vm_procs(),
                    self.vm_dirs()
                )
            },
        )?;
        let r = f();
        if r.is_err() {
            // Do not leave VMs running for the next cases.
            let _ = self.run(&["prune"]);
            for n in self.vm_dirs() {
                let _ = self.run(&["stop", &n]);
            }
        }
        let gone = procs::poll(GRACE, || self.vm_procs().is_empty().then_some(()));
        let l = ensure(gone.is_some(), || {
            format!("VM processes left running: {:?}", self.vm_procs())
        })
        .and_then(|()| {
            ensure(self.vm_dirs().is_empty(), || {
                format!("VMs left in the registry: {:?}", self.vm_dirs())
            })
        })
        .and_then(|()| self.tmp.check_clean(GRACE));
        r.and(l)
    }
}

struct Started {
    name: String,
    socket: String,
    cid: u64,
    qemu: u32,
    daemon: u32,
}

impl Started {
    fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let s = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("no {k} in {v}"))
        };
        let n = |k: &str| v[k].as_u64().ok_or_else(|| format!("no {k} in {v}"));
        ensure(v["state"] == "running", || format!("not running: {v}"))?;
        Ok(Self {
            name: s("name")?,
            socket: s("socket")?,
            cid: n("cid")?,
            qemu: n("qemu_pid")? as u32,
            daemon: n("daemon_pid")? as u32,
        })
    }
}

fn json(s: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(s.trim()).map_err(|e| format!("not JSON ({e}): {s:?}"))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect()
}

fn start_list_reverse_stop(t: &CliVm) -> R {
    t.checked(|| {
        let vm = t.start(Some("svc"))?;
        ensure(t.list()? == [("svc".into(), "running".into())], || {
            "list does not show svc running".into()
        })?;
        let table = t.ok(&["list"])?;
        ensure(
            table.contains("svc") && table.contains("running") && table.contains(t.ctx.arch.name()),
            || format!("list: {table}"),
        )?;
        let out = t.ok(&["--vm", "svc", "reverse", "abc"])?;
        ensure(out == "cba\n", || format!("reverse: {out:?}"))?;
        let info = json(&t.ok(&["--vm", "svc", "--json", "info"])?)?;
        ensure(info["arch"] == t.ctx.arch.name(), || {
            format!("info: {info}")
        })?;
        // The VM outlived every host-cli so far; stop ends it.
        let out = t.ok(&["stop", "svc"])?;
        ensure(out.contains("powered off"), || format!("stop: {out:?}"))?;
        let left = procs::wait_gone(&[vm.qemu, vm.daemon], GRACE);
        ensure(left.is_empty(), || format!("still running: {left:?}"))?;
        ensure(!Path::new(&vm.socket).exists(), || "socket left".into())?;
        t.fails(&["--vm", "svc", "info"], &["svc", "no such VM"])
    })
}

fn two_starts_never_share(t: &CliVm) -> R {
    t.checked(|| {
        // Two at once, with generated names.
        let a = std::thread::scope(|s| {
            let one = s.spawn(|| t.start(None));
            let two = t.start(None);
            one.join()
                .map_err(|_| "panicked".to_string())?
                .and_then(|o| Ok((o, two?)))
        });
        let (a, b) = a?;
        ensure(
            a.name != b.name && a.socket != b.socket && a.cid != b.cid,
            || {
                format!(
                    "shared: {} {} {} / {} {} {}",
                    a.name, a.socket, a.cid, b.name, b.socket, b.cid
                )
            },
        )?;
        // A name in use is refused, and nothing is left of the attempt.
        t.fails(&["start", "--name", &a.name], &[&a.name, "already in use"])?;
        ensure(t.vm_dirs().len() == 2, || format!("{:?}", t.vm_dirs()))?;
        t.fails(&["start", "--name", "no/slash"], &["no/slash"])?;
        t.ok(&["stop", &a.name])?;
        t.ok(&["stop", &b.name])?;
        Ok(())
    })
}

fn several_clients_at_once(t: &CliVm) -> R {
    t.checked(|| {
        t.start(Some("busy"))?;
        let results: Vec<R> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    s.spawn(move || {
                        let text = format!("client {i} {}", "y".repeat(i * 100));
                        let out = t.ok(&["--vm", "busy", "reverse", &text])?;
                        let want: String = text.chars().rev().collect();
                        ensure(out == format!("{want}\n"), || {
                            format!("client {i}: {out:?}")
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
                .collect()
        });
        let stop = t.ok(&["stop", "busy"]).map(|_| ());
        results.into_iter().collect::<R>().and(stop)
    })
}

fn binary_payloads(t: &CliVm) -> R {
    t.checked(|| {
        t.start(Some("bin"))?;
        let r = (|| {
            // Several MiB through stdin and stdout.
            let data = pattern(6 << 20);
            let mut child = t
                .cli()
                .args(["--vm", "bin", "reverse", "--file", "-", "--output", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| e.to_string())?;
            let mut stdin = child.stdin.take().ok_or("no stdin")?;
            let input = data.clone();
            let writer = std::thread::spawn(move || stdin.write_all(&input));
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            writer
                .join()
                .map_err(|_| "writer panicked")?
                .map_err(|e| e.to_string())?;
            ensure(out.status.success(), || {
                String::from_utf8_lossy(&out.stderr).into_owned()
            })?;
            ensure(out.stderr.is_empty(), || {
                format!("stderr not quiet: {}", String::from_utf8_lossy(&out.stderr))
            })?;
            let mut want = data.clone();
            want.reverse();
            ensure(out.stdout.len() == want.len(), || {
                format!("{} bytes back, not {}", out.stdout.len(), want.len())
            })?;
            ensure(out.stdout == want, || {
                "stdout is not the reversed input".into()
            })?;

            // A file to a file.
            let input = t.scratch.path().join("in.bin");
            let output = t.scratch.path().join("out.bin");
            std::fs::write(&input, pattern(3 << 20)).map_err(|e| e.to_string())?;
            let (i, o) = (input.to_string_lossy(), output.to_string_lossy());
            t.ok(&["--vm", "bin", "reverse", "--file", &i, "--output", &o])?;
            let mut want = pattern(3 << 20);
            want.reverse();
            ensure(
                std::fs::read(&output).map_err(|e| e.to_string())? == want,
                || "output file is not the reversed input".into(),
            )?;

            // Larger than the guest's max_body: refused, nothing sent, no
            // output written.
            let info = json(&t.ok(&["--vm", "bin", "--json", "info"])?)?;
            let max = info["max_body"].as_u64().ok_or("no max_body")?;
            let big = t.scratch.path().join("big.bin");
            let f = std::fs::File::create(&big).map_err(|e| e.to_string())?;
            f.set_len(max + 1).map_err(|e| e.to_string())?;
            let never = t.scratch.path().join("never.bin");
            let (b, n) = (big.to_string_lossy(), never.to_string_lossy());
            t.fails(
                &["--vm", "bin", "reverse", "--file", &b, "--output", &n],
                &["more than the guest accepts", "nothing was sent"],
            )?;
            ensure(!never.exists(), || {
                "output written for a refused payload".into()
            })?;
            let missing = t.scratch.path().join("missing.bin");
            t.fails(
                &[
                    "--vm",
                    "bin",
                    "reverse",
                    "--file",
                    &missing.to_string_lossy(),
                ],
                &["missing.bin"],
            )?;
            // The VM still serves.
            let out = t.ok(&["--vm", "bin", "reverse", "ok"])?;
            ensure(out == "ko\n", || format!("after the refusals: {out:?}"))
        })();
        let stop = t.ok(&["stop", "bin"]).map(|_| ());
        r.and(stop)
    })
}

fn progress_on_a_terminal(t: &CliVm) -> R {
    t.checked(|| {
        t.start(Some("tty"))?;
        let r = (|| {
            let input = t.scratch.path().join("tty-in.bin");
            let output = t.scratch.path().join("tty-out.bin");
            std::fs::write(&input, pattern(4 << 20)).map_err(|e| e.to_string())?;
            // `script` (util-linux) runs host-cli on a pseudo-terminal.
            let mut cli: Vec<String> = vec![t.ctx.host_cli.to_string_lossy().into_owned()];
            cli.extend([
                "--log-dir".into(),
                t.ctx.log_dir.to_string_lossy().into_owned(),
            ]);
            cli.extend(["--vm", "tty", "reverse", "--file"].map(String::from));
            cli.push(input.to_string_lossy().into_owned());
            cli.push("--output".into());
            cli.push(output.to_string_lossy().into_owned());
            let out = Command::new("script")
                .env("XDG_RUNTIME_DIR", t.xdg.path())
                .args(["-qec", &cli.join(" "), "/dev/null"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("running script: {e}"))?;
            let tty = String::from_utf8_lossy(&out.stdout);
            ensure(out.status.success(), || format!("{}: {tty}", out.status))?;
            ensure(tty.contains("4.0 MiB to the guest and back"), || {
                format!("no progress line on the terminal: {tty:?}")
            })?;
            let mut want = pattern(4 << 20);
            want.reverse();
            ensure(
                std::fs::read(&output).map_err(|e| e.to_string())? == want,
                || "output file is not the reversed input".into(),
            )
        })();
        let stop = t.ok(&["stop", "tty"]).map(|_| ());
        r.and(stop)
    })
}

fn killed_qemu_is_dead_then_stopped(t: &CliVm) -> R {
    t.checked(|| {
        let vm = t.start(Some("victim"))?;
        nix_kill(vm.qemu)?;
        let dead = procs::poll(GRACE, || {
            let l = t.list().ok()?;
            (l == [("victim".into(), "dead".into())]).then_some(())
        });
        ensure(dead.is_some(), || {
            format!("list after kill -9: {:?}", t.list())
        })?;
        t.fails(&["--vm", "victim", "reverse", "x"], &["victim", "dead"])?;
        // The daemon outlives QEMU; stop ends it and removes the entry.
        ensure(procs::alive(vm.daemon), || {
            "the daemon died with QEMU".into()
        })?;
        let out = t.ok(&["stop", "victim"])?;
        ensure(out.contains("dead"), || format!("stop: {out:?}"))?;
        let left = procs::wait_gone(&[vm.daemon], GRACE);
        ensure(left.is_empty(), || "the daemon was not stopped".into())
    })
}

fn prune_removes_dead_vms(t: &CliVm) -> R {
    t.checked(|| {
        let dead = t.start(Some("gone"))?;
        t.start(Some("alive"))?;
        nix_kill(dead.qemu)?;
        procs::wait_gone(&[dead.qemu], GRACE);
        let out = t.ok(&["prune"])?;
        ensure(out.contains("gone") && !out.contains("alive"), || {
            format!("prune: {out:?}")
        })?;
        ensure(t.list()? == [("alive".into(), "running".into())], || {
            format!("{:?}", t.list())
        })?;
        t.ok(&["--vm", "alive", "power-off"])?;
        Ok(())
    })
}

fn unknown_names_fail_cleanly(t: &CliVm) -> R {
    t.checked(|| {
        t.fails(&["--vm", "nosuch", "info"], &["nosuch", "no such VM"])?;
        t.fails(&["stop", "nosuch"], &["nosuch", "no such VM"])?;
        t.fails(&["--vm", "nosuch", "start"], &["--vm"])?;
        // A start that cannot boot leaves no entry (checked() looks).
        let missing = t.scratch.path().join("no-such-image.elf");
        let out = Command::new(&t.ctx.host_cli)
            .env("XDG_RUNTIME_DIR", t.xdg.path())
            .args(["--arch", t.ctx.arch.name(), "--image"])
            .arg(&missing)
            .args(["start", "--name", "broken"])
            .output()
            .map_err(|e| e.to_string())?;
        ensure(!out.status.success(), || {
            "start with no image succeeded".into()
        })?;
        one_line_mentioning(
            &String::from_utf8_lossy(&out.stderr),
            &["no-such-image.elf"],
        )?;
        let out = t.ok(&["list"])?;
        ensure(out.lines().count() == 1, || format!("list: {out:?}"))
    })
}

fn ctrl_c_during_start_leaves_nothing(t: &CliVm) -> R {
    t.checked(|| {
        // A guest that never answers keeps `start` waiting.
        let image = t.scratch.path().join("hang.elf");
        std::fs::write(&image, tests::images::hanging_elf(t.ctx.arch))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&t.ctx.host_cli)
            .env("XDG_RUNTIME_DIR", t.xdg.path())
            .args([
                "--arch",
                t.ctx.arch.name(),
                "--accel",
                "tcg",
                "--boot-timeout",
                "60",
            ])
            .arg("--image")
            .arg(&image)
            .arg("--log-dir")
            .arg(&t.ctx.log_dir)
            .args(["start", "--name", "interrupted"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let booting = procs::poll(GRACE, || (t.vm_procs().len() >= 2).then_some(()));
        let sent = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        ensure(booting.is_some(), || {
            "QEMU and the daemon never started".into()
        })?;
        ensure(sent.success(), || "kill -INT failed".into())?;
        ensure(out.status.code() == Some(130), || {
            format!(
                "status {} after Ctrl-C: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        ensure(t.vm_dirs().is_empty(), || {
            format!("left in the registry: {:?}", t.vm_dirs())
        })
    })
}

/// `host-cli start` killed with `SIGKILL` at several moments of its boot:
/// whatever it had started is shown by `list` (orphaned, with its pids),
/// refused by `--vm` with the reason, and ended by `prune` (`checked`
/// then finds no process and no entry left).
fn kill_9_during_start_leaves_nothing_unseen(t: &CliVm) -> R {
    let image = t.scratch.path().join("hang-k9.elf");
    std::fs::write(&image, tests::images::hanging_elf(t.ctx.arch)).map_err(|e| e.to_string())?;
    // None: once QEMU and the daemon both run.
    for delay_ms in [Some(0), Some(30), Some(100), Some(250), None] {
        t.checked(|| {
            let mut child = Command::new(&t.ctx.host_cli)
                .env("XDG_RUNTIME_DIR", t.xdg.path())
                .args([
                    "--arch",
                    t.ctx.arch.name(),
                    "--accel",
                    "tcg",
                    "--boot-timeout",
                    "60",
                ])
                .arg("--image")
                .arg(&image)
                .arg("--log-dir")
                .arg(&t.ctx.log_dir)
                .args(["start", "--name", "k9"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())?;
            match delay_ms {
                Some(ms) => std::thread::sleep(Duration::from_millis(ms)),
                None => {
                    procs::poll(GRACE, || (t.vm_procs().len() >= 2).then_some(()));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
            let running = t.vm_procs();
            let listed = json(&t.ok(&["--json", "list"])?)?;
            let label = format!("kill -9 after {delay_ms:?} ms");
            if !running.is_empty() {
                // Something runs: list shows it with its pids, and --vm
                // does not pretend that QEMU is gone.
                let e = &listed[0];
                ensure(e["state"] == "orphaned", || format!("{label}: {listed}"))?;
                let pids: Vec<u64> = ["qemu_pid", "daemon_pid"]
                    .iter()
                    .filter_map(|k| e[*k].as_u64())
                    .collect();
                ensure(
                    running.iter().all(|p| pids.contains(&u64::from(*p))),
                    || format!("{label}: running {running:?}, listed {listed}"),
                )?;
                t.fails(&["--vm", "k9", "info"], &["k9", "orphaned", "interrupted"])?;
            }
            let out = t.ok(&["prune"])?;
            println!(
                "    {label}: {} processes left, listed as {}, pruned: {}",
                running.len(),
                listed[0]["state"],
                out.contains("k9")
            );
            // `checked` then looks for processes and entries left.
            ensure(t.vm_dirs().is_empty(), || {
                format!("{label}: left {:?} after prune: {out:?}", t.vm_dirs())
            })
        })?;
    }
    Ok(())
}

/// Runs `host-cli args` and fails if it takes more than `limit`.
fn run_within(t: &CliVm, args: &[&str], limit: Duration) -> Result<Output, String> {
    let mut child = t
        .cli()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let done = procs::poll(limit, || child.try_wait().ok().flatten());
    if done.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("host-cli {args:?} took more than {limit:?}"));
    }
    child.wait_with_output().map_err(|e| e.to_string())
}

/// A running VM whose record is damaged (invalid JSON, then a FIFO) is
/// listed as damaged with its pids, not pruned, and stopped by `stop`.
fn damaged_record_is_shown_and_stopped(t: &CliVm) -> R {
    t.checked(|| {
        let vm = t.start(Some("dmg"))?;
        let record = t.registry().join("dmg").join("vm.json");
        std::fs::write(&record, b"{\"name\": \"dmg\", trunc").map_err(|e| e.to_string())?;
        let listed = json(&t.ok(&["--json", "list"])?)?;
        let e = &listed[0];
        ensure(
            e["state"] == "damaged"
                && e["qemu_pid"].as_u64() == Some(vm.qemu.into())
                && e["daemon_pid"].as_u64() == Some(vm.daemon.into()),
            || format!("list: {listed}"),
        )?;
        ensure(e["cid"].is_null() && e["uptime_secs"].is_null(), || {
            format!("made-up values: {e}")
        })?;
        t.fails(
            &["--vm", "dmg", "info"],
            &["dmg", "damaged", "not a valid record"],
        )?;
        let out = t.ok(&["prune"])?;
        ensure(!out.contains("dmg"), || format!("prune: {out:?}"))?;
        ensure(procs::alive(vm.qemu), || "prune ended a running VM".into())?;
        // A FIFO in place of the record: list answers at once.
        std::fs::remove_file(&record).map_err(|e| e.to_string())?;
        nix::unistd::mkfifo(&record, nix::sys::stat::Mode::S_IRWXU).map_err(|e| e.to_string())?;
        let out = run_within(t, &["list"], GRACE)?;
        let table = String::from_utf8_lossy(&out.stdout);
        ensure(out.status.success() && table.contains("damaged"), || {
            format!("list: {table}")
        })?;
        let out = t.ok(&["stop", "dmg"])?;
        ensure(out.contains("damaged"), || format!("stop: {out:?}"))?;
        let left = procs::wait_gone(&[vm.qemu, vm.daemon], GRACE);
        ensure(left.is_empty(), || format!("still running: {left:?}"))
    })
}

/// `kill -9` of the device daemon: `list` says dead and why, and `stop`
/// does not wait out its timeout for a power-off that cannot arrive.
fn killed_daemon_is_noticed(t: &CliVm) -> R {
    t.checked(|| {
        let vm = t.start(Some("nodaemon"))?;
        nix_kill(vm.daemon)?;
        let dead = procs::poll(GRACE, || {
            let l = t.list().ok()?;
            (l == [("nodaemon".into(), "dead".into())]).then_some(())
        });
        ensure(dead.is_some(), || {
            format!("list after kill -9 of the daemon: {:?}", t.list())
        })?;
        t.fails(
            &["--vm", "nodaemon", "info"],
            &["nodaemon", "daemon is gone"],
        )?;
        // `cli()` gives --timeout 30.
        let started = std::time::Instant::now();
        let out = run_within(t, &["stop", "nodaemon"], Duration::from_secs(15))?;
        ensure(out.status.success(), || {
            String::from_utf8_lossy(&out.stderr).into_owned()
        })?;
        let took = started.elapsed();
        ensure(took < Duration::from_secs(10), || {
            format!("stop took {took:?}")
        })?;
        let left = procs::wait_gone(&[vm.qemu], GRACE);
        ensure(left.is_empty(), || "QEMU was not stopped".into())
    })
}

/// `kill -9 pid`.
fn nix_kill(pid: u32) -> R {
    let st = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .map_err(|e| e.to_string())?;
    ensure(st.success(), || format!("kill -9 {pid}: {st}"))
}

const CASES: &[Case<CliVm>] = &[
    ("start_list_reverse_stop", start_list_reverse_stop),
    ("two_starts_never_share", two_starts_never_share),
    ("several_clients_at_once", several_clients_at_once),
    ("binary_payloads", binary_payloads),
    ("progress_on_a_terminal", progress_on_a_terminal),
    (
        "killed_qemu_is_dead_then_stopped",
        killed_qemu_is_dead_then_stopped,
    ),
    ("prune_removes_dead_vms", prune_removes_dead_vms),
    ("unknown_names_fail_cleanly", unknown_names_fail_cleanly),
    (
        "ctrl_c_during_start_leaves_nothing",
        ctrl_c_during_start_leaves_nothing,
    ),
    (
        "kill_9_during_start_leaves_nothing_unseen",
        kill_9_during_start_leaves_nothing_unseen,
    ),
    (
        "damaged_record_is_shown_and_stopped",
        damaged_record_is_shown_and_stopped,
    ),
    ("killed_daemon_is_noticed", killed_daemon_is_noticed),
];

fn setup(s: Setup) -> Result<CliVm, String> {
    let xdg = tempfile::Builder::new()
        .prefix("svmc-cli-vm-xdg-")
        .tempdir_in(&s.logs)
        .map_err(|e| format!("private XDG_RUNTIME_DIR: {e}"))?;
    let scratch = tempfile::Builder::new()
        .prefix("svmc-cli-vm-scratch-")
        .tempdir_in(&s.logs)
        .map_err(|e| format!("scratch dir: {e}"))?;
    Ok(CliVm {
        ctx: s.ctx,
        tmp: s.tmp.ok_or("no private TMPDIR")?,
        xdg,
        scratch,
    })
}

fn main() {
    tests::harness::main(&Suite {
        name: "cli_vm",
        private_tmp: true,
        setup,
        cases: CASES,
        last: None,
        helpers: &[],
    })
}
