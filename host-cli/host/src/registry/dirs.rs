//! The registry's files through directory handles: every step after the
//! first directory is an `openat`/`mkdirat`/`unlinkat` relative to a
//! directory already opened and checked, with `O_NOFOLLOW`, so nobody can
//! swap a directory or plant a link between a check and its use.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, fstat, mkdirat, openat, unlinkat};
use rustix::io::Errno;

/// What a directory that the registry's path goes through must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Trust {
    /// Owned by this user, writable by nobody else (`XDG_RUNTIME_DIR`).
    Private,
    /// Owned by this user or root and writable by nobody else, or sticky
    /// (`/tmp`): others may create entries in it but not replace ours.
    Shared,
}

fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// Why a directory with `uid` and `mode` fails `trust`, if it does.
pub(super) fn untrusted(uid_of: u32, mode: u32, trust: Trust) -> Option<String> {
    let others_write = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    let ok = match trust {
        Trust::Private => uid_of == uid() && !others_write,
        Trust::Shared => (uid_of == uid() || uid_of == 0) && (!others_write || sticky),
    };
    (!ok).then(|| {
        let who = match trust {
            Trust::Private => "this user",
            Trust::Shared => "this user or root",
        };
        format!(
            "owner uid {uid_of}, mode {:04o}: it must belong to {who} and be writable by nobody else",
            mode & 0o7777
        )
    })
}

/// Opens the directory `path` (links followed: the caller names it) and
/// checks it against `trust`; the error says why not.
pub(super) fn open_checked(path: &Path, trust: Trust) -> Result<OwnedFd, String> {
    let fd = openat(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io::Error::from(e).to_string())?;
    let st = fstat(&fd).map_err(|e| io::Error::from(e).to_string())?;
    match untrusted(st.st_uid, st.st_mode, trust) {
        Some(why) => Err(why),
        None => Ok(fd),
    }
}

/// Creates (mode 0700) or opens the directory `name` in `parent`, without
/// following a link, and checks that it is this user's and private.
pub(super) fn private_subdir(parent: &OwnedFd, name: &str) -> Result<OwnedFd, String> {
    match mkdirat(parent, name, Mode::RWXU) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(format!("creating it: {}", io::Error::from(e))),
    }
    let fd = open_dir(parent, name).map_err(|e| io::Error::from(e).to_string())?;
    let st = fstat(&fd).map_err(|e| io::Error::from(e).to_string())?;
    if st.st_uid != uid() || st.st_mode & 0o077 != 0 {
        return Err(format!(
            "owner uid {}, mode {:04o}: it must be this user's with mode 0700",
            st.st_uid,
            st.st_mode & 0o7777
        ));
    }
    Ok(fd)
}

/// Opens the directory `name` in `parent` without following a link
/// (`ELOOP` or `ENOTDIR` if it is not a directory).
pub(super) fn open_dir(parent: impl AsFd, name: &str) -> rustix::io::Result<OwnedFd> {
    openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Whether the directory `fd` is this user's.
pub(super) fn is_ours(fd: &OwnedFd) -> bool {
    fstat(fd).is_ok_and(|st| st.st_uid == uid())
}

/// The names in the directory `fd` (not `.` and `..`; names that are not
/// UTF-8 are skipped: no VM has one).
pub(super) fn names(fd: &OwnedFd) -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    for e in Dir::read_from(fd)? {
        let e = e?;
        let Ok(n) = e.file_name().to_str() else {
            continue;
        };
        if n != "." && n != ".." {
            v.push(n.to_string());
        }
    }
    Ok(v)
}

/// Why a file could not be read by [`read_bounded`].
#[derive(Debug)]
pub(super) enum ReadError {
    /// There is no such file.
    Missing,
    /// It is there but not something to read (the reason says what).
    Bad(String),
}

/// Reads the regular file `name` in `dir`, at most `max` bytes: a link, a
/// FIFO (never waited for), a device or a larger file is refused.
pub(super) fn read_bounded(dir: &OwnedFd, name: &str, max: u64) -> Result<Vec<u8>, ReadError> {
    let fd = match openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Err(ReadError::Missing),
        Err(Errno::LOOP) => return Err(ReadError::Bad(format!("{name} is a symbolic link"))),
        Err(e) => return Err(ReadError::Bad(format!("{name}: {}", io::Error::from(e)))),
    };
    let bad = |why: String| ReadError::Bad(format!("{name} {why}"));
    let st = fstat(&fd).map_err(|e| bad(format!(": {}", io::Error::from(e))))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(bad("is not a regular file".into()));
    }
    if st.st_size as u64 > max {
        return Err(bad(format!("is larger than {max} bytes")));
    }
    let mut data = Vec::new();
    File::from(fd)
        .take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(format!(": {e}")))?;
    if data.len() as u64 > max {
        return Err(bad(format!("is larger than {max} bytes")));
    }
    Ok(data)
}

/// Creates (or truncates) the file `name` in `dir` for writing, mode 0600,
/// without following a link.
pub(super) fn create_file(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let fd = openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::RUSR | Mode::WUSR,
    )?;
    Ok(File::from(fd))
}

/// Removes `name` in `parent` and, if it is a directory, everything in it;
/// links are removed, never followed. A missing `name` is not an error.
pub(super) fn remove_tree(parent: &OwnedFd, name: &str) -> io::Result<()> {
    let fd = match open_dir(parent, name) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return match unlinkat(parent, name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        Err(e) => return Err(e.into()),
    };
    // Entries may be added meanwhile (a socket being bound): go round until
    // the directory is empty.
    for _ in 0..8 {
        let names = names(&fd)?;
        if names.is_empty() {
            break;
        }
        for n in names {
            match unlinkat(&fd, n.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) => remove_tree(&fd, &n)?,
                Err(e) => return Err(e.into()),
            }
        }
    }
    match unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn root(dir: &Path) -> OwnedFd {
        open_checked(dir, Trust::Private).unwrap()
    }

    #[test]
    fn only_regular_files_are_read_and_only_so_much() {
        let tmp = tempfile::tempdir().unwrap();
        let d = root(tmp.path());
        std::fs::write(tmp.path().join("ok"), b"12345").unwrap();
        assert_eq!(read_bounded(&d, "ok", 5).unwrap(), b"12345");
        assert!(
            matches!(read_bounded(&d, "ok", 4), Err(ReadError::Bad(m)) if m.contains("larger"))
        );
        assert!(matches!(
            read_bounded(&d, "none", 4),
            Err(ReadError::Missing)
        ));
        // A FIFO is refused at once, not waited on.
        nix::unistd::mkfifo(&tmp.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(
            matches!(read_bounded(&d, "fifo", 4), Err(ReadError::Bad(m)) if m.contains("not a regular file"))
        );
        // A link (here to /dev/zero, which would never end) is refused.
        std::os::unix::fs::symlink("/dev/zero", tmp.path().join("zero")).unwrap();
        assert!(
            matches!(read_bounded(&d, "zero", 4), Err(ReadError::Bad(m)) if m.contains("symbolic link"))
        );
        std::fs::create_dir(tmp.path().join("dir")).unwrap();
        assert!(matches!(read_bounded(&d, "dir", 4), Err(ReadError::Bad(_))));
    }

    #[test]
    fn remove_tree_never_follows_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let t = tmp.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::write(t.join("a/b/f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), t.join("a/link")).unwrap();
        let d = root(tmp.path());
        remove_tree(&d, "t").unwrap();
        assert!(!t.exists());
        assert!(outside.path().join("keep").exists());
        // A link in place of the directory: the link goes, not its target.
        std::os::unix::fs::symlink(outside.path(), &t).unwrap();
        remove_tree(&d, "t").unwrap();
        assert!(outside.path().join("keep").exists());
        remove_tree(&d, "t").unwrap();
    }

    #[test]
    fn trust_of_directories() {
        let me = uid();
        assert!(untrusted(me, 0o040700, Trust::Private).is_none());
        assert!(untrusted(me, 0o040755, Trust::Private).is_none());
        assert!(untrusted(me, 0o040770, Trust::Private).is_some());
        assert!(untrusted(me, 0o040707, Trust::Private).is_some());
        assert!(untrusted(me + 1, 0o040700, Trust::Private).is_some());
        assert!(untrusted(0, 0o041777, Trust::Shared).is_none());
        assert!(untrusted(0, 0o040777, Trust::Shared).is_some());
        assert!(untrusted(me + 1, 0o041777, Trust::Shared).is_some());
        let tmp = tempfile::tempdir().unwrap();
        let d = root(tmp.path());
        private_subdir(&d, "p").unwrap();
        std::fs::set_permissions(tmp.path().join("p"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        assert!(private_subdir(&d, "p").is_err());
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("l")).unwrap();
        assert!(private_subdir(&d, "l").is_err());
    }
}
