//! The `host-cli` binary on inputs that need no VM: bad option values, a
//! standard output that cannot be written. Each run has a private, empty
//! `XDG_RUNTIME_DIR`, so `list` has an empty registry to show.

use std::process::{Command, Output, Stdio};

fn host_cli(xdg: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_host-cli"));
    c.env("XDG_RUNTIME_DIR", xdg).env_remove("RUST_LOG");
    c
}

/// Fails unless `out` failed (status 1 or 2, not a panic's 101) with one
/// line on stderr containing each of `needles`.
fn one_line_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "status {}: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in {err}");
    }
}

#[test]
fn huge_timeouts_are_refused_not_panicked_on() {
    let xdg = tempfile::tempdir().unwrap();
    for flag in ["--timeout", "--boot-timeout"] {
        for v in ["1e19", "1e300"] {
            let out = host_cli(xdg.path())
                .args([flag, v, "reverse", "abc"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            one_line_error(&out, &[flag, v]);
        }
    }
}

#[test]
fn a_full_standard_output_is_one_line_with_context() {
    let xdg = tempfile::tempdir().unwrap();
    let full = std::fs::File::options()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = host_cli(xdg.path())
        .arg("list")
        .stdout(full)
        .output()
        .unwrap();
    one_line_error(&out, &["writing standard output", "No space left"]);
}

#[test]
fn a_closed_pipe_is_one_line_with_context() {
    let xdg = tempfile::tempdir().unwrap();
    for args in [
        &["list"][..],
        &["--json", "list"],
        &["--json", "prune"],
        &["prune"],
    ] {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let out = host_cli(xdg.path())
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        if args == ["prune"] {
            // Nothing to print: nothing fails.
            assert!(out.status.success(), "{out:?}");
            continue;
        }
        one_line_error(&out, &["writing standard output", "Broken pipe"]);
    }
}

#[test]
fn a_relative_or_shared_xdg_runtime_dir_is_refused() {
    let cwd = tempfile::tempdir().unwrap();
    let out = host_cli(std::path::Path::new("rel/run"))
        .current_dir(cwd.path())
        .arg("list")
        .output()
        .unwrap();
    one_line_error(&out, &["XDG_RUNTIME_DIR rel/run", "not an absolute path"]);
    assert!(
        !cwd.path().join("rel").exists(),
        "created under the current directory"
    );
    let shared = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        shared.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    for cmd in ["list", "prune"] {
        let out = host_cli(shared.path()).arg(cmd).output().unwrap();
        one_line_error(&out, &["XDG_RUNTIME_DIR", "writable by nobody else"]);
    }
    assert!(!shared.path().join("svmc").exists());
}

#[test]
fn a_comma_in_the_runtime_path_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let comma = tmp.path().join("a,socket=x");
    std::fs::create_dir(&comma).unwrap();
    // `reverse` launches in $TMPDIR; `start` in the registry under
    // $XDG_RUNTIME_DIR.
    let xdg = tempfile::tempdir().unwrap();
    let out = host_cli(xdg.path())
        .env("TMPDIR", &comma)
        .args(["--image", "/nonexistent", "reverse", "abc"])
        .output()
        .unwrap();
    one_line_error(
        &out,
        &["a,socket=x", "cannot take a path with ','", "TMPDIR"],
    );
    let out = host_cli(&comma)
        .args(["--image", "/nonexistent", "start", "--name", "c"])
        .output()
        .unwrap();
    one_line_error(&out, &["a,socket=x", "cannot take a path with ','"]);
    let left: Vec<_> = std::fs::read_dir(comma.join("svmc/vms"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".lock")
        .collect();
    assert!(left.is_empty(), "left in the registry: {left:?}");
    let left: Vec<_> = std::fs::read_dir(&comma)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["svmc"], "runtime directories left");
}
