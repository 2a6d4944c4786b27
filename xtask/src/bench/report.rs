//! The report: one row per figure (ours, its floor, their ratio, the
//! target and whether it is met), notes under the table, and the line that
//! says which machine measured it.

use std::process::Command;

use svmc_host::Arch;

use super::SIZES;
use super::async_client;
use super::boot::BootRun;
use super::echo::EchoFigures;
use super::floors::Against;
use super::service::{CLIENTS, ServiceFigures, WINDOW};
use super::stats::{Pair, Stat};
use crate::util;

/// Boot to answer against the daemon and QEMU running the tiny firmware.
const BOOT_RATIO: f64 = 1.3;
/// The x86_64 default machine boots to an answer in at most half the
/// time of q35.
const DEFAULT_VS_Q35: f64 = 0.5;
/// 16-byte round trips against the raw reverse, as a rate.
const RT_RATIO: f64 = 0.95;
/// 1 MiB and 8 MiB round trips against the raw reverse, as a time: at
/// most this much slower.
const TP_OVERHEAD: f64 = 0.15;
/// Smallest `-m` for an 8 MiB reverse, MiB.
const MEM_MAX: u32 = 16;
/// [`WINDOW`] requests in flight against 1, as a rate.
const PIPELINE_RATIO: f64 = 2.0;
/// The 16-byte round trip with the extensions' envelope (a deadline in
/// every request) against plain version 2: at most 3 % slower.
const ENVELOPE_RATIO: f64 = 0.97;

/// Largest stripped image.
fn image_max(arch: Arch) -> u64 {
    match arch {
        Arch::X86_64 => 64 * 1024,
        Arch::Aarch64 => 80 * 1024,
    }
}

/// One row of the result table.
pub struct Row {
    what: String,
    ours: String,
    floor: String,
    ratio: String,
    target: String,
    met: Option<bool>,
}

impl Row {
    fn new(what: &str, ours: String, floor: String) -> Self {
        Self {
            what: what.into(),
            ours,
            floor,
            ratio: String::new(),
            target: String::new(),
            met: None,
        }
    }

    fn ratio(mut self, r: f64, target: &str, met: bool) -> Self {
        self.ratio = format!("{r:.2}x");
        self.target = target.into();
        self.met = Some(met);
        self
    }

    /// Adds the min–max of the per-pair ratios to the ratio.
    fn spread(mut self, r: &Stat) -> Self {
        self.ratio = format!("{} ({:.2}–{:.2})", self.ratio, r.min, r.max);
        self
    }
}

/// A row with a ratio and no target.
fn info_row(what: &str, ours: String, floor: String, r: f64) -> Row {
    let mut row = Row::new(what, ours, floor);
    row.ratio = format!("{r:.2}x");
    row
}

/// The rows and notes, in the order they were measured.
#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    /// A note under the table.
    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Boot to answer on each machine, then the default machine against
    /// q35 when both were measured.
    pub fn boots(&mut self, arch: Arch, runs: &[BootRun]) {
        let mut boots: Vec<(&str, f64)> = Vec::new();
        for run in runs {
            let (name, ours, floor, qemu) = match run {
                BootRun::Unsupported { name, why } => {
                    self.note(format!("{name}: not supported by the guest ({why})"));
                    continue;
                }
                BootRun::Measured {
                    name,
                    ours,
                    floor,
                    qemu,
                } => (name, ours, floor, qemu),
            };
            let ours = Stat::of(ours.clone());
            boots.push((name, ours.med));
            let label = format!("boot to answer ({name})");
            let (floor, qemu_only) = (Stat::of(floor.clone()), Stat::of(qemu.clone()));
            let r = ours.med / floor.med;
            self.rows.push(
                Row::new(&label, ours.show("ms", 1), floor.show("ms", 1)).ratio(
                    r,
                    "≤ 1.30x",
                    r <= BOOT_RATIO,
                ),
            );
            self.note(format!(
                "{name}: floor = daemon start + QEMU until the tiny firmware's exit; QEMU alone {}",
                qemu_only.show("ms", 1)
            ));
        }
        // The x86_64 default machine against q35: at most half.
        let default = svmc_host::machine::default_for(arch).name;
        if let (Some(&(_, d)), Some(&(_, q))) = (
            boots.iter().find(|(n, _)| *n == default),
            boots.iter().find(|(n, _)| *n == "q35"),
        ) && default != "q35"
        {
            let r = d / q;
            self.rows.push(
                Row::new(
                    &format!("boot to answer, {default} vs q35"),
                    format!("{d:.1} ms"),
                    format!("{q:.1} ms"),
                )
                .ratio(r, "≤ 0.50x", r <= DEFAULT_VS_Q35),
            );
        }
    }

    /// Round trips and throughput against the raw reverse and the raw
    /// echo, pipelining, the async client, the envelope, several clients.
    pub fn protocol(&mut self, svc: &ServiceFigures, vs: &Against, echo: Option<&EchoFigures>) {
        let r = vs.rt.ratio.med;
        self.rows.push(
            Row::new(
                "round trip, 16 B (req/s) vs raw reverse",
                vs.rt.a.show("/s", 0),
                vs.rt.b.show("/s", 0),
            )
            .ratio(r, "≥ 0.95x", r >= RT_RATIO)
            .spread(&vs.rt.ratio),
        );
        if let Some(echo) = echo {
            self.rows.push(info_row(
                "round trip, 16 B (req/s) vs raw echo",
                vs.rt.a.show("/s", 0),
                echo.rt.show("/s", 0),
                vs.rt.a.med / echo.rt.med,
            ));
        }
        let r = svc.serial.ratio.med;
        self.rows.push(
            Row::new(
                &format!("16 B, {WINDOW} in flight on 1 connection (req/s) vs 1 in flight"),
                svc.serial.a.show("/s", 0),
                svc.serial.b.show("/s", 0),
            )
            .ratio(r, "≥ 2.00x", r >= PIPELINE_RATIO)
            .spread(&svc.serial.ratio),
        );
        match &svc.tasks {
            Ok(p) => {
                let mut row = Row::new(
                    &format!(
                        "async client, 64 KiB reverses, {} tasks on 1 connection (MB/s) vs 1 task",
                        async_client::TASKS
                    ),
                    format!("{:.1}", p.a.med / 1e6),
                    format!("{:.1}", p.b.med / 1e6),
                );
                row.ratio = format!("{:.2}x", p.ratio.med);
                self.rows.push(row.spread(&p.ratio));
            }
            Err(e) => self.note(format!("async client figure not measured: {e}")),
        }
        self.envelope(&svc.envelope);
        match &svc.clients {
            Ok((one, many)) => {
                let mut row = Row::new(
                    &format!("16 B, {CLIENTS} clients at once (total req/s) vs 1 client"),
                    many.0.show("/s", 0),
                    one.0.show("/s", 0),
                );
                row.ratio = format!("{:.2}x", many.0.med / one.0.med);
                self.rows.push(row);
                let mut row = Row::new(
                    &format!("16 B, worst latency, {CLIENTS} clients vs 1 client"),
                    many.1.show("ms", 2),
                    one.1.show("ms", 2),
                );
                row.ratio = format!("{:.2}x", many.1.med / one.1.med);
                self.rows.push(row);
            }
            Err(e) => {
                let mut row = Row::new(
                    &format!("16 B, {CLIENTS} clients at once vs 1 client"),
                    "failed".into(),
                    String::new(),
                );
                row.met = Some(false);
                self.rows.push(row);
                self.note(format!("{CLIENTS} clients at once: {e}"));
            }
        }
        for (i, (_, label, _)) in SIZES.iter().enumerate() {
            let pair = &vs.tp[i];
            // Time ours / time floor, the median of the pairs' ratios.
            let r = pair.ratio.med;
            self.rows.push(
                Row::new(
                    &format!("{label} round trip (MB/s each way) vs raw reverse"),
                    pair.a.show("MB/s", 1),
                    pair.b.show("MB/s", 1),
                )
                .ratio(r, "≤ 1.15x time", r <= 1.0 + TP_OVERHEAD)
                .spread(&pair.ratio),
            );
            if let Some(echo) = echo {
                self.rows.push(info_row(
                    &format!("{label} round trip (MB/s each way) vs raw echo"),
                    pair.a.show("MB/s", 1),
                    echo.tp[i].show("MB/s", 1),
                    echo.tp[i].med / pair.a.med,
                ));
            }
        }
        self.note(
            "vs raw reverse: ratio = median of the per-pair ratios (min–max), one repetition \
             on each VM in turn, the other VM paused (SIGSTOP)"
                .into(),
        );
    }

    /// The rows of [`super::envelope::cost`]'s figures.
    pub fn envelope(&mut self, envelope: &std::result::Result<(Pair, Pair), String>) {
        match &envelope {
            Ok((deadline, timed)) => {
                let r = deadline.ratio.med;
                self.rows.push(
                    Row::new(
                        "round trip, 16 B (req/s), with a deadline (extensions on) vs plain v2",
                        deadline.a.show("/s", 0),
                        deadline.b.show("/s", 0),
                    )
                    .ratio(r, "≥ 0.97x", r >= ENVELOPE_RATIO)
                    .spread(&deadline.ratio),
                );
                let mut row = Row::new(
                    "round trip, 16 B (req/s), deadline and timings (a traced call) vs plain v2",
                    timed.a.show("/s", 0),
                    timed.b.show("/s", 0),
                );
                row.ratio = format!("{:.2}x", timed.ratio.med);
                self.rows.push(row.spread(&timed.ratio));
            }
            Err(e) => self.note(format!("envelope figure not measured: {e}")),
        }
    }

    /// The stripped image's size, bytes.
    pub fn image(&mut self, arch: Arch, size: u64) {
        let mut row = Row::new(
            "image (stripped)",
            format!("{size} B ({:.1} KiB)", size as f64 / 1024.0),
            String::new(),
        );
        row.target = format!("≤ {} KiB", image_max(arch) / 1024);
        row.met = Some(size <= image_max(arch));
        self.rows.push(row);
    }

    /// The smallest `-m` for an 8 MiB reverse ([`super::memory::min_memory`]).
    pub fn memory(&mut self, min: Option<u32>) {
        let mut row = Row::new(
            "smallest -m for 8 MiB reverse",
            min.map_or("> 128 MiB".into(), |m| format!("{m} MiB")),
            String::new(),
        );
        row.target = format!("≤ {MEM_MAX} MiB");
        row.met = Some(min.is_some_and(|m| m <= MEM_MAX));
        self.rows.push(row);
    }

    /// The guest's heap peak after the 8 MiB reverse, of its size.
    pub fn heap(&mut self, svc: &ServiceFigures) {
        self.rows.push(Row::new(
            "guest heap peak after 8 MiB reverse",
            format!(
                "{:.2} MiB of {:.1} MiB",
                svc.heap_peak as f64 / (1 << 20) as f64,
                svc.heap_size as f64 / (1 << 20) as f64
            ),
            String::new(),
        ));
    }

    /// The machine line, the table, the notes and the codec's summary.
    pub fn print(&self, arch: Arch, accel: svmc_host::Accel, codec: Option<&str>) {
        println!();
        println!("{}", machine_line(arch, accel));
        println!("{}", table(&self.rows));
        for n in &self.notes {
            println!("note: {n}");
        }
        if let Some(c) = codec {
            println!();
            println!("svmc codec (cargo bench -p svmc-proto):");
            println!("{c}");
        }
    }
}

/// The host's CPUs, QEMU's version, the guest's architecture and accelerator.
fn machine_line(arch: Arch, accel: svmc_host::Accel) -> String {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let qemu = svmc_host::tools::Tools::find(arch)
        .ok()
        .and_then(|t| util::output(Command::new(t.qemu).arg("--version")))
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "QEMU ?".into());
    format!("machine: {nproc} CPUs, {cpu}; {qemu}; guest {arch}, accel {accel:?}")
}

fn table(rows: &[Row]) -> String {
    let head = ["figure", "ours", "floor", "ratio", "target", "met"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.what.clone(),
                r.ours.clone(),
                r.floor.clone(),
                r.ratio.clone(),
                r.target.clone(),
                match r.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => String::new(),
                },
            ]
        })
        .collect();
    let mut w = head.map(|h| h.chars().count());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let line = |c: &[String]| {
        let mut s = String::from("|");
        for (i, x) in c.iter().enumerate() {
            let pad = w[i] - x.chars().count();
            s.push(' ');
            s.push_str(x);
            s.push_str(&" ".repeat(pad));
            s.push_str(" |");
        }
        s
    };
    let mut out = line(&head.map(String::from));
    out.push('\n');
    out.push('|');
    for wi in w {
        out.push_str(&"-".repeat(wi + 2));
        out.push('|');
    }
    for c in &cells {
        out.push('\n');
        out.push_str(&line(c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns() {
        let rows = [Row::new("a", "1 ms".into(), "2 ms".into()).ratio(0.5, "≤ 1x", true)];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[2].contains("0.50x") && lines[2].contains("yes"));
        let width = |l: &str| l.chars().count();
        assert!(lines.iter().all(|l| width(l) == width(lines[0])));
    }
}
