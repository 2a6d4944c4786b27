//! `host-cli`: boot the service VM (or attach to a running one) and ask it
//! things; start VMs that keep running, list and stop them. Results go to
//! stdout, diagnostics to stderr; on failure the exit status is non-zero and
//! stderr ends with a one-line reason.
//!
//! `--append <ARGS>` (hidden from `--help`) adds words to the guest's kernel
//! command line of a launched VM, e.g. `--append svmc.log=debug` or, with the
//! test firmware, `--append svmc.hostile=trickle`.

mod payload;
mod stdout;
mod vms;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Parser;
use host_cli::cli::{Cli, Cmd};
use svmc_host::launcher::install_signal_cleanup;
use svmc_host::{Attach, Guest, Session, SessionConfig, VmConfig, tools};
use vsock_transport::Timeouts;

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

/// The VM that the command line describes (image, architecture, machine...).
fn vm_config(cli: &Cli) -> Result<VmConfig> {
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
    Ok(vm)
}

fn run(cli: &Cli) -> Result<()> {
    let (timeout, boot_timeout) = (cli.timeout, cli.boot_timeout);
    let attaching = cli.vm.is_some() || cli.attach_uds.is_some() || cli.attach_cid.is_some();
    match &cli.command {
        Cmd::Start { .. } | Cmd::List | Cmd::Stop { .. } | Cmd::Prune if attaching => {
            bail!(
                "--vm, --attach-uds and --attach-cid go with reverse, info, digest and power-off only"
            )
        }
        Cmd::Start { name } => return vms::start(cli, name.as_deref(), timeout, boot_timeout),
        Cmd::List => return vms::list(cli),
        Cmd::Stop { name } => return vms::stop(cli, name, timeout),
        Cmd::Prune => return vms::prune(cli),
        Cmd::PowerOff if cli.vm.is_some() => {
            return vms::stop(cli, cli.vm.as_deref().unwrap_or_default(), timeout);
        }
        Cmd::Reverse { .. } | Cmd::Info { .. } | Cmd::Digest { .. } | Cmd::PowerOff => {}
    }
    // Open the input before booting or connecting: an unreadable file
    // fails with nothing started.
    let (input, output) = match &cli.command {
        Cmd::Reverse { text, file, output } => (
            Some(payload::Input::open(text.as_deref(), file.as_deref())?),
            Some(payload::Output::open(output.as_deref())?),
        ),
        _ => (None, None),
    };
    let mut stream = match &cli.command {
        Cmd::Digest { file } => Some(payload::Stream::open(file)?),
        _ => None,
    };
    let attach = if let Some(name) = &cli.vm {
        vms::attach(name)?
    } else if let Some(uds) = &cli.attach_uds {
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
        let vm = vm_config(cli)?;
        install_signal_cleanup()?;
        Attach::Launch(Box::new(vm))
    };
    let launched = matches!(attach, Attach::Launch(_));
    let mut config = SessionConfig::new(attach);
    config.timeouts = Timeouts::uniform(timeout);
    config.boot_timeout = boot_timeout;

    let mut session = Session::open(&config).context("could not reach the guest")?;
    match &cli.command {
        Cmd::Reverse { .. } => {
            let input = input.context("no input")?;
            let output = output.context("no output")?;
            let limit = payload::limit(session.peer_max_body(), config.max_body);
            let data = input.read(limit)?;
            let text = input.is_text();
            let result = payload::with_progress(data.len(), || session.reverse(data))?;
            payload::write_result(&result, output, text, cli.json)?;
        }
        Cmd::Digest { file } => {
            let stream = stream.as_mut().context("no input")?;
            let digest = stream.digest(|data, progress| session.sha256(data, progress))?;
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            if cli.json {
                stdout::println(
                    serde_json::json!({"sha256": hex, "bytes": stream.sent(), "file": file}),
                )?;
            } else {
                stdout::println(format!("{hex}  {}", file.display()))?;
            }
        }
        Cmd::Info { stats } => {
            let (info, conn) = if *stats {
                session.info_and_stats()?
            } else {
                (session.info()?, None)
            };
            if *stats && conn.is_none() {
                bail!("this guest reports no statistics (it does not offer the `meta` extension)");
            }
            if cli.json {
                let mut v = serde_json::to_value(&info)?;
                if let Some(c) = conn {
                    v["connection"] = serde_json::to_value(c)?;
                }
                stdout::println(v)?;
            } else {
                use std::fmt::Write as _;
                let mut s = String::new();
                let _ = writeln!(
                    s,
                    "firmware:         {} {}",
                    info.firmware, info.firmware_version
                );
                let _ = writeln!(s, "protocol version: {}", info.protocol_version);
                let _ = writeln!(s, "architecture:     {}", info.arch);
                let _ = writeln!(s, "max request body: {} bytes", info.max_body);
                if let Some(h) = info.heap {
                    let _ = writeln!(
                        s,
                        "heap:             {} bytes, {} in use, peak {}",
                        h.size, h.used, h.peak
                    );
                }
                if let Some(c) = conn {
                    let _ = writeln!(
                        s,
                        "this connection:  {} requests, {} bytes in, {} bytes out, {} errors, \
                         {} cancelled, {} past their deadline, {} credit stalls, {} answers queued",
                        c.requests,
                        c.bytes_in,
                        c.bytes_out,
                        c.errors,
                        c.cancelled,
                        c.expired,
                        c.stalls,
                        c.queued
                    );
                }
                stdout::print(&s)?;
            }
        }
        Cmd::PowerOff => {
            let status = session.power_off(timeout)?;
            if cli.json {
                stdout::println(serde_json::json!({"powered_off": true}))?;
            } else {
                stdout::println("powered off")?;
            }
            if let Some(s) = status
                && !s.success()
            {
                bail!("QEMU exited with {s} after power-off");
            }
            return Ok(());
        }
        _ => unreachable!("handled above"),
    }
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
        let e: anyhow::Result<()> = Err(svmc_host::Error::Guest {
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
