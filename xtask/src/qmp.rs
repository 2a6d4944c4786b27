//! A small QMP client (QEMU's JSON monitor protocol on a Unix socket), for
//! `cargo xtask profile`: sampling the guest's program counter
//! (`human-monitor-command` "info registers") while it runs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use svmc_host::Arch;

use crate::util::Result;

/// The QEMU arguments of a QMP server on `path` (QEMU creates the socket).
pub fn args(path: &Path) -> Vec<String> {
    vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", path.display()),
    ]
}

/// One QMP connection, capabilities negotiated.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
}

impl Qmp {
    /// Connects to the QMP socket at `path` (waiting up to 10 s for QEMU
    /// to create it) and leaves the negotiation mode.
    pub fn connect(path: &Path) -> Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("QMP {}: {e}", path.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("QMP: {e}"))?;
        let writer = sock.try_clone().map_err(|e| format!("QMP: {e}"))?;
        let mut q = Self {
            reader: BufReader::new(sock),
            writer,
            path: path.to_path_buf(),
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QMP {}: no greeting: {greeting}", path.display()));
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| format!("QMP {}: {e}", self.path.display()))?;
        if n == 0 {
            return Err(format!("QMP {}: closed", self.path.display()));
        }
        serde_json::from_str(&line).map_err(|e| format!("QMP: {e}: {line:?}"))
    }

    /// Runs `command` and returns its `return` value (events are skipped).
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let msg = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{msg}").map_err(|e| format!("QMP {command}: {e}"))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {command}: {e}"));
            }
            // An event ("event": ...): not ours.
        }
    }

    /// An HMP command's text output.
    pub fn hmp(&mut self, line: &str) -> Result<String> {
        let r = self.execute("human-monitor-command", json!({ "command-line": line }))?;
        r.as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("QMP {line}: not a string: {r}"))
    }

    /// The guest's program counter as the vCPU last stored it, read
    /// without stopping the VM (under TCG `info registers` reads the CPU
    /// state as it is; QMP `stop` would also stop the vhost-user device,
    /// which vhost-device-vsock 0.3.0 does not survive). TCG stores the PC
    /// at the end of each translated block only if blocks are not chained
    /// (QEMU `-d nochain`), so it is exact to the block with that option
    /// and stale by up to a chain of blocks without it.
    pub fn sample_pc(&mut self, arch: Arch) -> Result<u64> {
        let regs = self.hmp("info registers")?;
        parse_pc(arch, &regs).ok_or_else(|| "no PC in `info registers`".to_string())
    }
}

/// The program counter in `info registers` output: `RIP=...` on x86_64,
/// `PC=...` on aarch64.
fn parse_pc(arch: Arch, regs: &str) -> Option<u64> {
    let key = match arch {
        Arch::X86_64 => "RIP=",
        Arch::Aarch64 => "PC=",
    };
    let at = regs.find(key)? + key.len();
    let hex: String = regs[at..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_pc_of_each_architecture() {
        let x86 = "RAX=0000000000000001 RBX=0000000000000002\r\nRSI=0 RDI=0\r\n\
                   RIP=0000000000104a2c RFL=00000002 [-------] CPL=0 II=0\r\n";
        assert_eq!(parse_pc(Arch::X86_64, x86), Some(0x104a2c));
        let arm = " PC=0000000040212f30  X00=0000000000000000 X01=0000000040300000\r\n";
        assert_eq!(parse_pc(Arch::Aarch64, arm), Some(0x4021_2f30));
        assert_eq!(parse_pc(Arch::Aarch64, "nothing"), None);
    }
}
