//! `reverse`'s payloads: TEXT, a file or standard input in; standard output
//! or a file out; a progress line on a terminal while a large one is in the
//! guest.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use svmc::REVERSE_OVERHEAD;

use crate::stdout;

/// Payloads from this size on get a progress line (on a terminal).
const PROGRESS_FROM: usize = 1 << 20;

/// Where the bytes to reverse come from, opened (so that an unreadable file
/// fails before anything is booted or sent).
pub enum Input {
    /// TEXT's UTF-8 bytes.
    Text(Vec<u8>),
    /// A regular file and its size.
    File { path: PathBuf, file: File, len: u64 },
    /// Standard input.
    Stdin,
}

impl Input {
    /// TEXT, or `file` (`-` for standard input).
    pub fn open(text: Option<&str>, file: Option<&Path>) -> Result<Self> {
        match (text, file) {
            (Some(t), _) => Ok(Self::Text(t.as_bytes().to_vec())),
            (None, Some(p)) if p == Path::new("-") => Ok(Self::Stdin),
            (None, Some(p)) => {
                let file = File::open(p).with_context(|| format!("reading {}", p.display()))?;
                let meta = file
                    .metadata()
                    .with_context(|| format!("reading {}", p.display()))?;
                if meta.is_dir() {
                    bail!("reading {}: it is a directory", p.display());
                }
                Ok(Self::File {
                    path: p.to_path_buf(),
                    file,
                    len: meta.len(),
                })
            }
            (None, None) => bail!("reverse needs TEXT or --file PATH"),
        }
    }

    /// Whether it is TEXT (printed with a newline after the result).
    pub fn is_text(&self) -> bool {
        matches!(self, Self::Text(_))
    }

    /// The bytes, refused with an error if there are more than `limit`: a
    /// file by its size before reading it, standard input after reading at
    /// most `limit + 1` bytes.
    pub fn read(&self, limit: usize) -> Result<Vec<u8>> {
        let too_large = |what: &str, len: String| {
            anyhow::anyhow!(
                "{what} is {len} bytes, more than the guest accepts ({limit} bytes); nothing was sent"
            )
        };
        match self {
            Self::Text(t) if t.len() > limit => Err(too_large("TEXT", t.len().to_string())),
            Self::Text(t) => Ok(t.clone()),
            Self::File { path, file, len } => {
                let what = path.display().to_string();
                if *len > limit as u64 {
                    return Err(too_large(&what, len.to_string()));
                }
                let mut data = Vec::with_capacity(*len as usize);
                // Read at most limit + 1: the file may grow meanwhile.
                file.take(limit as u64 + 1)
                    .read_to_end(&mut data)
                    .with_context(|| format!("reading {what}"))?;
                if data.len() > limit {
                    return Err(too_large(&what, format!("more than {limit}")));
                }
                Ok(data)
            }
            Self::Stdin => {
                let mut data = Vec::new();
                std::io::stdin()
                    .lock()
                    .take(limit as u64 + 1)
                    .read_to_end(&mut data)
                    .context("reading standard input")?;
                if data.len() > limit {
                    return Err(too_large("standard input", format!("more than {limit}")));
                }
                Ok(data)
            }
        }
    }
}

/// The largest payload a `Reverse` request may carry: the guest's maximum
/// request body (from its `HELLO`) and ours for the response, less the
/// envelope.
pub fn limit(peer_max_body: u32, our_max_body: u32) -> usize {
    peer_max_body
        .min(our_max_body)
        .saturating_sub(REVERSE_OVERHEAD) as usize
}

/// Runs `f` (the request) with a progress line on stderr while it runs, if
/// stderr is a terminal and `len` is large; quiet otherwise.
pub fn with_progress<T>(len: usize, f: impl FnOnce() -> T) -> T {
    if len < PROGRESS_FROM || !std::io::stderr().is_terminal() {
        return f();
    }
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let start = Instant::now();
            let mib = len as f64 / (1024.0 * 1024.0);
            while !done.load(Ordering::Relaxed) {
                eprint!(
                    "\rhost-cli: {mib:.1} MiB to the guest and back... {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            // Clear the line.
            eprint!("\r\x1b[K");
        });
        let r = f();
        done.store(true, Ordering::Relaxed);
        r
    })
}

/// Where `reverse`'s result goes, opened before anything is booted or sent
/// (so that an unwritable path fails with nothing started).
///
/// A file is never removed unless this run created it: a new or existing
/// regular file is written to a temporary file beside it (`.NAME.*.tmp`,
/// the existing file's permissions) that is renamed over it once complete,
/// so a failure leaves the old file as it was; anything else that exists
/// (a device such as `/dev/null`, a FIFO) is written in place and never
/// removed.
pub enum Output {
    /// Standard output (no `--output`, or `-`).
    Stdout {
        /// `--output -` was given (no newline after TEXT's result, and with
        /// `--json` the bytes rather than a summary).
        explicit: bool,
    },
    /// A path.
    File(OutputFile),
}

/// A `--output` path, opened.
pub struct OutputFile {
    /// The path as given.
    path: PathBuf,
    how: Target,
}

enum Target {
    /// A regular file (new or existing) replaced through a temporary file.
    Replace {
        tmp: tempfile::NamedTempFile,
        target: PathBuf,
    },
    /// Something else that exists (device, FIFO), written in place.
    InPlace(File),
}

impl Output {
    /// Opens `output` (`-` or none: standard output); see [`Output`].
    pub fn open(output: Option<&Path>) -> Result<Self> {
        let Some(path) = output.filter(|p| *p != Path::new("-")) else {
            return Ok(Self::Stdout {
                explicit: output.is_some(),
            });
        };
        let ctx = || format!("writing {}", path.display());
        let how = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok() {
                    bail!(
                        "writing {}: it is a symbolic link to nothing",
                        path.display()
                    );
                }
                Target::Replace {
                    tmp: temp_beside(path, None).with_context(ctx)?,
                    target: path.to_path_buf(),
                }
            }
            Err(e) => return Err(e).with_context(ctx),
            Ok(meta) if meta.is_dir() => bail!("writing {}: it is a directory", path.display()),
            Ok(meta) if meta.is_file() => {
                // Writing it must be allowed (not read-only, not a running
                // program), as if it were written in place; opened without
                // truncating, so nothing changes yet.
                File::options().write(true).open(path).with_context(ctx)?;
                // A link is followed: the file it names is replaced.
                let target = std::fs::canonicalize(path).with_context(ctx)?;
                Target::Replace {
                    tmp: temp_beside(&target, Some(meta.permissions())).with_context(ctx)?,
                    target,
                }
            }
            Ok(_) => Target::InPlace(open_special(path).with_context(ctx)?),
        };
        Ok(Self::File(OutputFile {
            path: path.to_path_buf(),
            how,
        }))
    }
}

/// A temporary file in `target`'s directory with `perms`, or those of a new
/// file (0666 less the umask).
fn temp_beside(
    target: &Path,
    perms: Option<std::fs::Permissions>,
) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)?;
    if let Some(p) = perms {
        tmp.as_file().set_permissions(p)?;
    }
    Ok(tmp)
}

/// Opens a device or FIFO for writing, without creating or truncating it
/// and without waiting for a FIFO's reader (no reader is an error).
fn open_special(path: &Path) -> std::io::Result<File> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    use std::os::unix::fs::OpenOptionsExt;
    let f = File::options()
        .write(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ENXIO) {
                std::io::Error::new(e.kind(), "a FIFO that no process reads")
            } else {
                e
            }
        })?;
    fcntl(&f, FcntlArg::F_SETFL(OFlag::empty()))?;
    Ok(f)
}

impl OutputFile {
    /// Writes `data` and, for a regular file, renames the temporary file
    /// over the target; on any failure the temporary file goes and the
    /// target stays as it was.
    fn write(self, data: &[u8]) -> Result<()> {
        let ctx = || format!("writing {}", self.path.display());
        match self.how {
            Target::InPlace(mut f) => f.write_all(data).and_then(|()| f.flush()).with_context(ctx),
            Target::Replace { mut tmp, target } => {
                tmp.write_all(data)
                    .and_then(|()| tmp.as_file().sync_data())
                    .with_context(ctx)?;
                tmp.persist(&target)
                    .map_err(|e| e.error)
                    .with_context(ctx)?;
                Ok(())
            }
        }
    }
}

/// Writes the reversed bytes to `output`. TEXT's result gets a newline on
/// standard output; with `json`, standard output gets a JSON summary instead
/// (and the bytes go to `output`, if given): see [`json_summary`].
pub fn write_result(result: &[u8], output: Output, text: bool, json: bool) -> Result<()> {
    match output {
        Output::File(f) => {
            let path = f.path.display().to_string();
            f.write(result)?;
            if json {
                stdout::println(serde_json::json!({ "bytes": result.len(), "output": path }))?;
            }
            Ok(())
        }
        // `--output -`: the bytes as they are, even with --json.
        Output::Stdout { explicit: true } => stdout::write_bytes(result),
        Output::Stdout { explicit: false } if json => stdout::println(json_summary(result)),
        Output::Stdout { explicit: false } if text => {
            let mut line = result.to_vec();
            line.push(b'\n');
            stdout::write_bytes(&line)
        }
        Output::Stdout { explicit: false } => stdout::write_bytes(result),
    }
}

/// `--json reverse`'s summary of a result on standard output: `bytes`, and
/// `result` (the text) if the bytes are UTF-8, else `result_base64` (the
/// bytes in standard base64, RFC 4648 section 4): never a lossy string.
pub fn json_summary(result: &[u8]) -> serde_json::Value {
    use base64::Engine;
    match std::str::from_utf8(result) {
        Ok(text) => serde_json::json!({ "bytes": result.len(), "result": text }),
        Err(_) => serde_json::json!({
            "bytes": result.len(),
            "result_base64": base64::engine::general_purpose::STANDARD.encode(result),
        }),
    }
}

/// Data streamed to the guest (`digest`), opened before anything is
/// booted: a file, or standard input. Never held whole.
pub struct Stream {
    name: PathBuf,
    reader: Box<dyn Read>,
    /// Its size, if it is a regular file (for the progress line).
    len: Option<u64>,
    sent: u64,
}

impl Stream {
    /// `path`, or standard input for `-`.
    pub fn open(path: &Path) -> Result<Self> {
        if path == Path::new("-") {
            return Ok(Self {
                name: path.to_path_buf(),
                reader: Box::new(std::io::stdin().lock()),
                len: None,
                sent: 0,
            });
        }
        let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let meta = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            bail!("reading {}: it is a directory", path.display());
        }
        Ok(Self {
            name: path.to_path_buf(),
            len: meta.is_file().then_some(meta.len()),
            reader: Box::new(file),
            sent: 0,
        })
    }

    /// Bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Runs `f` (the streamed request) over the data, with a progress line
    /// on stderr if it is a terminal (at most ten updates a second).
    pub fn digest<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Read, &mut dyn FnMut(u64)) -> Result<T, svmc_host::Error>,
    ) -> Result<T> {
        let terminal = std::io::stderr().is_terminal();
        let start = Instant::now();
        let mut shown = start;
        let len = self.len;
        let mut sent = 0;
        let r = {
            let mut progress = |n: u64| {
                sent = n;
                if terminal && shown.elapsed() >= Duration::from_millis(100) {
                    shown = Instant::now();
                    let mib = n as f64 / (1024.0 * 1024.0);
                    let of = len.map_or(String::new(), |l| {
                        format!(" of {:.1} MiB", l as f64 / (1024.0 * 1024.0))
                    });
                    eprint!(
                        "\rhost-cli: {mib:.1} MiB{of} to the guest... {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                }
            };
            f(&mut self.reader, &mut progress)
        };
        self.sent = sent;
        if terminal && shown != start {
            eprint!("\r\x1b[K");
        }
        r.with_context(|| format!("hashing {} in the guest", self.name.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileTypeExt;

    use super::*;

    #[test]
    fn limit_leaves_room_for_the_envelope() {
        assert_eq!(limit(1000, 2000), 1000 - REVERSE_OVERHEAD as usize);
        assert_eq!(limit(2000, 1000), 1000 - REVERSE_OVERHEAD as usize);
        assert_eq!(limit(3, 1000), 0);
    }

    #[test]
    fn files_over_the_limit_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![7u8; 100]).unwrap();
        let input = Input::open(None, Some(&p)).unwrap();
        assert_eq!(input.read(100).unwrap().len(), 100);
        let err = input.read(99).unwrap_err().to_string();
        assert!(
            err.contains("100 bytes") && err.contains("99 bytes"),
            "{err}"
        );
        assert!(Input::open(None, Some(dir.path())).is_err());
        assert!(Input::open(None, Some(&dir.path().join("missing"))).is_err());
        assert!(Input::open(Some("abc"), None).unwrap().is_text());
    }

    #[test]
    fn an_unwritable_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("no/such/dir/out");
        assert!(Output::open(Some(&p)).is_err());
        assert!(Output::open(Some(dir.path())).is_err());
        let ok = dir.path().join("out");
        write_result(b"abc", Output::open(Some(&ok)).unwrap(), false, false).unwrap();
        assert_eq!(std::fs::read(&ok).unwrap(), b"abc");
        assert_eq!(entries(dir.path()), ["out"]);
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_existing_file_is_replaced_only_when_complete() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out");
        std::fs::write(&p, b"old contents").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        // Opened, then dropped as after a failed request: the old file is
        // untouched and no temporary file is left.
        let out = Output::open(Some(&p)).unwrap();
        drop(out);
        assert_eq!(std::fs::read(&p).unwrap(), b"old contents");
        assert_eq!(entries(dir.path()), ["out"]);
        // Written: replaced, with its permissions.
        write_result(b"new", Output::open(Some(&p)).unwrap(), false, false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(entries(dir.path()), ["out"]);
        // Through a link: the file it names is replaced, the link stays.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        write_result(b"via", Output::open(Some(&link)).unwrap(), false, false).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(std::fs::read(&p).unwrap(), b"via");
    }

    #[test]
    fn a_running_program_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("sleeper");
        std::fs::copy("/bin/sleep", &prog).unwrap();
        let mut child = std::process::Command::new(&prog).arg("30").spawn().unwrap();
        let r = Output::open(Some(&prog)).and_then(|o| write_result(b"x", o, false, false));
        let _ = child.kill();
        let _ = child.wait();
        let err = format!("{:#}", r.unwrap_err());
        assert!(err.contains("sleeper"), "{err}");
        assert!(prog.exists(), "the running program was removed");
        assert_eq!(entries(dir.path()), ["sleeper"]);
    }

    /// Needs a user other than root (root may write any file): run the
    /// test binary as `nobody` (`setpriv --reuid=nobody ...`); as root it
    /// checks only that the file is untouched.
    #[test]
    fn a_read_only_file_is_refused_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ro");
        std::fs::write(&p, b"keep").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        let r = Output::open(Some(&p));
        if !nix::unistd::getuid().is_root() {
            let err = format!("{:#}", r.err().unwrap());
            assert!(err.contains("ro") && err.contains("denied"), "{err}");
        } else {
            drop(r);
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
        assert_eq!(entries(dir.path()), ["ro"]);
    }

    #[test]
    fn a_fifo_without_a_reader_fails_and_stays() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err = format!("{:#}", Output::open(Some(&fifo)).err().unwrap());
        assert!(err.contains("no process reads"), "{err}");
        assert!(
            std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo()
        );
    }

    #[test]
    fn json_results_are_never_lossy() {
        assert_eq!(
            json_summary("cbä".as_bytes()),
            serde_json::json!({"bytes": 4, "result": "cbä"})
        );
        assert_eq!(
            json_summary(&[0xff, 0x00, b'a']),
            serde_json::json!({"bytes": 3, "result_base64": "/wBh"})
        );
    }

    #[test]
    fn a_device_is_written_in_place() {
        let dev = Path::new("/dev/null");
        write_result(b"abc", Output::open(Some(dev)).unwrap(), false, false).unwrap();
        assert!(dev.exists());
    }
}
