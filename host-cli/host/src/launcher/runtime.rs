//! The VM's private runtime directory (sockets) and its log directory.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::{Error, Result};

/// How many VM log files (serial, QEMU, daemon) to keep in the log directory.
const KEEP_LOG_FILES: usize = 96;

/// The default log directory.
pub fn default_log_dir() -> PathBuf {
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    state.join("svmc").join("logs")
}

/// Start of a runtime directory's name: `svmc-<pid of its owner>-<random>`.
const RUNTIME_PREFIX: &str = "svmc-";

/// Removes the runtime directories in `tmp` (`svmc-<pid>-*`) that belong
/// to this user and whose owner process is gone: a process killed with
/// `SIGKILL` cannot remove its own (its children die with it, but the
/// directory with their sockets stays).
pub fn remove_stale_runtime_dirs(tmp: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    let uid = nix::unistd::getuid().as_raw();
    for e in entries.filter_map(|e| e.ok()) {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(RUNTIME_PREFIX))
            .and_then(|n| n.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if !meta.is_dir() || meta.uid() != uid || pid == std::process::id() {
            continue;
        }
        if !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::debug!(dir = %e.path().display(), pid, "removing a stale runtime directory");
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn prune_logs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(SystemTime, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("vm-"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= KEEP_LOG_FILES {
        return;
    }
    files.sort();
    for (_, p) in &files[..files.len() - KEEP_LOG_FILES] {
        let _ = fs::remove_file(p);
    }
}

/// Checks that the runtime directory can go in `parent`: an absolute path
/// that vhost-device-vsock's `--vm` option can carry. That option is a
/// list `key=value,...` with no escape (0.3.0 splits it at every ',' and
/// '=' and takes the first two pieces), so a path with ',' or '=' would
/// be cut short or add options of its own; QEMU's options escape commas
/// ([`super::args::escape_commas`]). Called before anything starts.
pub(super) fn check_runtime_parent(parent: &Path, what: &str) -> Result<()> {
    let bad = |reason: String| Error::RuntimeDir {
        what: "the VM runtime directory's parent".into(),
        path: parent.to_path_buf(),
        reason,
    };
    if !parent.is_absolute() {
        return Err(bad(format!("not an absolute path; set {what} to one")));
    }
    match parent.to_str() {
        Some(p) if !p.contains([',', '=']) => Ok(()),
        _ => Err(bad(format!(
            "vhost-device-vsock's --vm option cannot take a path with ',' or '=' \
             (or one that is not UTF-8); set {what} to a directory without them"
        ))),
    }
}

/// Creates a VM's runtime directory, `$TMPDIR/svmc-<our pid>-<random>`
/// with mode 0700, after removing the stale ones of dead processes; or,
/// with a `parent`, exactly `<parent>/run` (mode 0700, failing if it
/// exists), which no sweep of stale directories touches.
pub(super) fn create_runtime_dir(parent: Option<&Path>) -> Result<tempfile::TempDir> {
    let mode = fs::Permissions::from_mode(0o700);
    let dir = match parent {
        Some(parent) => tempfile::Builder::new()
            .prefix("run")
            .rand_bytes(0)
            .permissions(mode)
            .tempdir_in(parent),
        None => {
            remove_stale_runtime_dirs(&std::env::temp_dir());
            tempfile::Builder::new()
                .prefix(&format!("{RUNTIME_PREFIX}{}-", std::process::id()))
                .permissions(mode)
                .tempdir()
        }
    };
    dir.map_err(|e| Error::io("creating the VM runtime directory", e))
}

/// Creates the log directory `dir` (mode 0700) if needed and prunes old
/// logs in it.
pub(super) fn prepare_log_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating log directory {}", dir.display()), e))?;
    prune_logs(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_parents_the_daemon_cannot_take_are_refused() {
        check_runtime_parent(Path::new("/tmp/ok dir/x-1"), "TMPDIR").unwrap();
        for p in ["/tmp/a,b", "/tmp/a=b", "/tmp/x,socket=/evil", "tmp/rel"] {
            let e = check_runtime_parent(Path::new(p), "TMPDIR")
                .unwrap_err()
                .to_string();
            assert!(e.contains(p) && e.contains("TMPDIR"), "{e}");
        }
    }
}
