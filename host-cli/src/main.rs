//! `host-cli`: boot the service VM (or attach to a running one) and ask it
//! things. Results go to stdout, diagnostics to stderr; on failure the exit
//! status is non-zero and stderr ends with a one-line reason.
//!
//! `--append <ARGS>` (hidden from `--help`) adds words to the guest's kernel
//! command line of a launched VM, e.g. `--append svmc.log=debug` or, with the
//! test firmware, `--append svmc.hostile=trickle`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use host::launcher::install_signal_cleanup;
use host::{Accel, Arch, Attach, Guest, Session, SessionConfig, VmConfig, tools};
use vsock_transport::Timeouts;

/// Talk to the service VM over virtio-vsock.
///
/// By default each command boots a fresh VM (QEMU + vhost-device-vsock), waits
/// for the guest to connect, checks the protocol version, sends the request,
/// prints the answer and powers the VM off. With --attach-uds or --attach-cid
/// it talks to an already-running VM instead and leaves it running.
#[derive(Parser, Debug)]
#[command(name = "host-cli", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,

    /// Guest architecture.
    #[arg(long, global = true, default_value = "x86_64")]
    arch: Arch,

    /// What the VM runs: `firmware` (the bare-metal guest) or `linux` (a
    /// Linux kernel whose /init serves the same protocol over AF_VSOCK;
    /// `cargo xtask build-image --guest linux` builds it).
    #[arg(long, global = true, default_value = "firmware")]
    guest: Guest,

    /// Guest firmware image, or the Linux kernel with --guest linux
    /// [default: the one `cargo xtask build-image` builds].
    #[arg(long, global = true, value_name = "PATH")]
    image: Option<PathBuf>,

    /// The initramfs of a Linux guest [default: the one `cargo xtask
    /// build-image --guest linux` builds].
    #[arg(long, global = true, value_name = "PATH")]
    initrd: Option<PathBuf>,

    /// Attach to a running VM through its hybrid vsock Unix socket.
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        conflicts_with = "attach_cid"
    )]
    attach_uds: Option<PathBuf>,

    /// Attach to a running VM through AF_VSOCK at this CID.
    #[arg(long, global = true, value_name = "CID")]
    attach_cid: Option<u32>,

    /// Guest service port when attaching.
    #[arg(long, global = true, default_value_t = comm::service::SERVICE_PORT)]
    port: u32,

    /// Timeout in seconds for each step after boot (connect, handshake,
    /// each request, power-off).
    #[arg(long, global = true, default_value_t = 30.0, value_name = "SECS")]
    timeout: f64,

    /// Timeout in seconds for a launched guest to connect. A guest that has
    /// not connected after 3 s is relaunched (at most 3 attempts) while this
    /// allows: the device daemon rarely loses the guest's first packet.
    #[arg(long, global = true, default_value_t = 30.0, value_name = "SECS")]
    boot_timeout: f64,

    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,

    /// Guest RAM in MiB.
    #[arg(long, global = true, default_value_t = host::launcher::DEFAULT_MEMORY_MIB)]
    memory: u32,

    /// Accelerator: auto (KVM if it works here, else TCG), kvm or tcg.
    #[arg(long, global = true, default_value = "auto")]
    accel: Accel,

    /// QEMU machine type [default: microvm on x86_64 (q35 for --guest
    /// linux), virt on aarch64].
    #[arg(long, global = true)]
    machine: Option<String>,

    /// Directory for the guest serial log and QEMU/daemon logs
    /// [default: $XDG_STATE_HOME/svmc/logs].
    #[arg(long, global = true, value_name = "DIR")]
    log_dir: Option<PathBuf>,

    /// Extra words for the guest's kernel command line, e.g.
    /// `--append "svmc.log=debug"` (repeatable; split at spaces). For
    /// tests and debugging, hence hidden from --help.
    #[arg(long, global = true, hide = true, value_name = "ARGS")]
    append: Vec<String>,

    /// More logging on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Reverse TEXT in the guest and print the result.
    Reverse {
        /// The text to reverse (its UTF-8 bytes are reversed).
        text: String,
    },
    /// Print what the guest reports about itself.
    Info,
    /// Power the guest off (useful with --attach-*).
    PowerOff,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("host-cli: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The chain of causes joined on one line. A cause whose text its parent
/// already shows (our error types print their source, as in
/// `{context}: {source}`) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.contains(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg.replace('\n', " ")
}

fn run(cli: &Cli) -> Result<()> {
    if !(cli.timeout.is_finite() && cli.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let timeout = Duration::from_secs_f64(cli.timeout);
    if !(cli.boot_timeout.is_finite() && cli.boot_timeout > 0.0) {
        bail!("--boot-timeout must be a positive number of seconds");
    }
    let boot_timeout = Duration::from_secs_f64(cli.boot_timeout);
    let attach = if let Some(uds) = &cli.attach_uds {
        Attach::Hybrid {
            uds_path: uds.clone(),
            port: cli.port,
        }
    } else if let Some(cid) = cli.attach_cid {
        Attach::Vsock {
            cid,
            port: cli.port,
        }
    } else {
        let mut vm = match cli.guest {
            Guest::Firmware => {
                let image = match &cli.image {
                    Some(i) => i.clone(),
                    None => tools::default_image(cli.arch).context(
                        "no guest image given and no workspace to find one in; pass --image",
                    )?,
                };
                VmConfig::new(cli.arch, image)
            }
            Guest::Linux => {
                let defaults = tools::default_linux();
                let pick = |given: &Option<PathBuf>, default: Option<PathBuf>, flag: &str| {
                    given.clone().or(default).with_context(|| {
                        format!("no workspace to find the Linux guest in; pass {flag}")
                    })
                };
                let kernel = pick(&cli.image, defaults.clone().map(|d| d.0), "--image")?;
                let initrd = pick(&cli.initrd, defaults.map(|d| d.1), "--initrd")?;
                VmConfig::linux(cli.arch, kernel, initrd)
            }
        };
        vm.memory_mib = cli.memory;
        vm.accel = cli.accel;
        if cli.machine.is_some() {
            vm.machine = cli.machine.clone();
        }
        vm.log_dir = cli.log_dir.clone();
        if cli.verbose >= 2 {
            vm.cmdline.push("svmc.log=debug".into());
        }
        vm.cmdline.extend(
            cli.append
                .iter()
                .flat_map(|a| a.split_whitespace())
                .map(String::from),
        );
        install_signal_cleanup()?;
        Attach::Launch(Box::new(vm))
    };
    let launched = matches!(attach, Attach::Launch(_));
    let mut config = SessionConfig::new(attach);
    config.timeouts = Timeouts::uniform(timeout);
    config.boot_timeout = boot_timeout;

    let mut session = Session::open(&config).context("could not reach the guest")?;
    let mut out = std::io::stdout().lock();
    match &cli.command {
        Cmd::Reverse { text } => {
            let result = session.reverse(text.as_bytes().to_vec())?;
            if cli.json {
                let v = serde_json::json!({
                    "result": String::from_utf8_lossy(&result),
                    "bytes": result.len(),
                });
                writeln!(out, "{v}")?;
            } else {
                out.write_all(&result)?;
                writeln!(out)?;
            }
        }
        Cmd::Info => {
            let info = session.info()?;
            if cli.json {
                writeln!(out, "{}", serde_json::to_string(&info)?)?;
            } else {
                writeln!(
                    out,
                    "firmware:         {} {}",
                    info.firmware, info.firmware_version
                )?;
                writeln!(out, "protocol version: {}", info.protocol_version)?;
                writeln!(out, "architecture:     {}", info.arch)?;
                writeln!(out, "max request body: {} bytes", info.max_body)?;
                if let Some(h) = info.heap {
                    writeln!(
                        out,
                        "heap:             {} bytes, {} in use, peak {}",
                        h.size, h.used, h.peak
                    )?;
                }
            }
        }
        Cmd::PowerOff => {
            let status = session.power_off(timeout)?;
            if cli.json {
                writeln!(out, "{}", serde_json::json!({"powered_off": true}))?;
            } else {
                writeln!(out, "powered off")?;
            }
            if let Some(s) = status
                && !s.success()
            {
                bail!("QEMU exited with {s} after power-off");
            }
            return Ok(());
        }
    }
    out.flush()?;
    drop(out);
    if launched {
        let status = session.power_off(timeout).context("powering the VM off")?;
        if let Some(s) = status
            && !s.success()
        {
            bail!("QEMU exited with {s} after power-off");
        }
    } else {
        session.close()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use anyhow::Context;
    use vsock_transport::Step;

    use super::one_line;

    #[test]
    fn one_line_does_not_repeat_causes() {
        let e: anyhow::Result<()> = Err(host::Error::Guest {
            source: vsock_transport::Error::Timeout(Step::Read),
            serial_log: PathBuf::from("/logs/vm.serial.log"),
        })
        .context("could not reach the guest");
        assert_eq!(
            one_line(&e.unwrap_err()),
            "could not reach the guest: timed out during read; guest serial log: /logs/vm.serial.log"
        );
    }

    #[test]
    fn one_line_keeps_distinct_causes() {
        let e = anyhow::anyhow!("inner\nline").context("outer");
        assert_eq!(one_line(&e), "outer: inner line");
    }
}
