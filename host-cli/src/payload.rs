//! `reverse`'s payloads: TEXT, a file or standard input in; standard output
//! or a file out; a progress line on a terminal while a large one is in the
//! guest.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use comm::service::REVERSE_OVERHEAD;

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

/// Writes the reversed bytes to `output` (`-` or none: standard output).
/// TEXT's result gets a newline on standard output; with `json`, standard
/// output gets a JSON summary instead (and the bytes go to `output`, if
/// given). A file that cannot be written completely is removed.
pub fn write_result(result: &[u8], output: Option<&Path>, text: bool, json: bool) -> Result<()> {
    let to_file = output.filter(|p| *p != Path::new("-"));
    if let Some(p) = to_file {
        let write = || -> std::io::Result<()> {
            let mut f = File::create(p)?;
            f.write_all(result)?;
            f.flush()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(p);
            return Err(e).with_context(|| format!("writing {}", p.display()));
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        let mut v = serde_json::json!({ "bytes": result.len() });
        match to_file {
            Some(p) => v["output"] = p.display().to_string().into(),
            None if output.is_some() => {
                // `--output -` with --json: the bytes, then no summary.
                out.write_all(result)?;
                return Ok(out.flush()?);
            }
            None => v["result"] = String::from_utf8_lossy(result).into_owned().into(),
        }
        writeln!(out, "{v}")?;
    } else if to_file.is_none() {
        out.write_all(result)?;
        if text && output.is_none() {
            writeln!(out)?;
        }
    }
    out.flush().context("writing standard output")
}

#[cfg(test)]
mod tests {
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
        assert!(write_result(b"abc", Some(&p), false, false).is_err());
        let ok = dir.path().join("out");
        write_result(b"abc", Some(&ok), false, false).unwrap();
        assert_eq!(std::fs::read(&ok).unwrap(), b"abc");
    }
}
