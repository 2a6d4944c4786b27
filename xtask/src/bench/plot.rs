//! The bench's plots, as SVG (plotters' SVG backend alone: the text is
//! left to the viewer's fonts, nothing is rasterised).
//!
//! - [`boots_svg`]: boot to answer per machine, every sample as a dot and
//!   the median as a bar, ours beside its floor;
//! - [`round_trips_svg`]: the time of one round trip against the message
//!   size, log-log, ours (median and min–max) with the raw reverse and
//!   raw echo floors as lines.
//!
//! The functions take plain numbers and return the SVG text, so that the
//! tests below draw synthetic data; [`round_trips`] turns the
//! measurements into those numbers, and [`write()`] puts a plot next to the
//! bench's other output.

use std::path::Path;

use plotters::prelude::*;

use super::SIZES;
use super::boot::BootRun;
use super::echo::EchoFigures;
use super::floors::Against;
use super::stats::Stat;
use crate::util::Result;

/// Size of every plot, pixels.
const SIZE: (u32, u32) = (760, 440);
const FONT: &str = "sans-serif";
/// Ours, the (first) floor, the second floor.
const OURS: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const FLOOR: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const ECHO: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);

/// What the boot plot's series are called.
pub const BOOT_OURS: &str = "svmc: host-cli reverse abc";
pub const BOOT_FLOOR: &str = "floor: daemon + QEMU, tiny firmware";
/// What the round-trip plot's series are called.
pub const RT_OURS: &str = "svmc Reverse (median, min–max)";
pub const RT_RAW: &str = "floor: raw reverse";
pub const RT_ECHO: &str = "floor: raw echo (streams, no target)";

/// One machine's boot-to-answer samples, ms. `floor` may be empty (the
/// `--boots` series measures no floor).
pub struct Boots<'a> {
    pub machine: &'a str,
    pub ours: &'a [f64],
    pub floor: &'a [f64],
}

/// One message size of the round-trip plot: the time of one round trip,
/// ms, median with min and max.
pub struct SizePoint {
    pub bytes: usize,
    pub ours: Stat,
    pub raw_reverse: Stat,
    pub raw_echo: Option<Stat>,
}

fn draw_err<E: std::error::Error>(e: E) -> String {
    format!("drawing a plot: {e}")
}

/// Offsets of `n` dots around their column's centre, evenly spread over
/// `width` in the order measured (a strip plot without random jitter).
fn jitter(n: usize, width: f64) -> impl Iterator<Item = f64> {
    (0..n).map(move |i| ((i as f64 + 0.5) / n as f64 - 0.5) * width)
}

/// Boot to answer per machine: a column per machine, ours on the left,
/// its floor on the right; the legend above the highest dot.
pub fn boots_svg<'a>(title: &str, machines: &[Boots<'a>]) -> Result<String> {
    let n = machines.len();
    if n == 0 || machines.iter().all(|m| m.ours.is_empty()) {
        return Err("no boot samples to plot".into());
    }
    let top = machines
        .iter()
        .flat_map(|m| m.ours.iter().chain(m.floor))
        .fold(1f64, |a, &b| a.max(b));
    let with_floor = machines.iter().any(|m| !m.floor.is_empty());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        // A column per machine, at 0, 1, ...: at most n + 1 ticks over a
        // range n wide are the integers, which the formatter names.
        let x = -0.5f64..n as f64 - 0.5;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x, 0f64..top * 1.35)
            .map_err(draw_err)?;
        let label = |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < n {
                machines[i as usize].machine.to_string()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n + 1)
            .x_label_formatter(&label)
            .y_label_formatter(&|ms| format!("{ms:.0}"))
            .x_desc("machine")
            .y_desc("boot to answer (ms)")
            .label_style((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        // Each side's dots and its median, `shift` from the column's centre.
        let sides = [
            (BOOT_OURS, OURS, if with_floor { -0.2 } else { 0.0 }, false),
            (BOOT_FLOOR, FLOOR, 0.2, true),
        ];
        for (name, colour, shift, floor) in sides {
            let samples = |m: &Boots<'a>| if floor { m.floor } else { m.ours };
            if floor && !with_floor {
                continue;
            }
            let dots = machines.iter().enumerate().flat_map(|(i, m)| {
                let v = samples(m);
                jitter(v.len(), 0.25)
                    .zip(v)
                    .map(move |(dx, &y)| (i as f64 + shift + dx, y))
            });
            chart
                .draw_series(dots.map(|p| Circle::new(p, 3, colour.mix(0.6).filled())))
                .map_err(draw_err)?
                .label(name)
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
            let medians = machines.iter().enumerate().filter_map(|(i, m)| {
                let v = samples(m);
                (!v.is_empty()).then(|| {
                    let med = Stat::of(v.to_vec()).med;
                    let c = i as f64 + shift;
                    PathElement::new(
                        vec![(c - 0.17, med), (c + 0.17, med)],
                        colour.stroke_width(3),
                    )
                })
            });
            chart.draw_series(medians).map_err(draw_err)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// `bytes` as the bench names its sizes: 16 B, 64 KiB, 8 MiB.
fn show_bytes(bytes: f64) -> String {
    if bytes >= (1 << 20) as f64 {
        format!("{} MiB", bytes / (1 << 20) as f64)
    } else if bytes >= 1024.0 {
        format!("{} KiB", bytes / 1024.0)
    } else {
        format!("{bytes} B")
    }
}

/// The time of one round trip against the message size, log-log.
pub fn round_trips_svg(title: &str, points: &[SizePoint]) -> Result<String> {
    if points.is_empty() {
        return Err("no round trips to plot".into());
    }
    let all = points.iter().flat_map(|p| {
        [p.ours.min, p.ours.max, p.raw_reverse.min, p.raw_reverse.max]
            .into_iter()
            .chain(p.raw_echo.map(|e| e.med))
    });
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !(lo > 0.0 && hi.is_finite()) {
        return Err(format!(
            "round trips of {lo} to {hi} ms: no log scale for them"
        ));
    }
    let x_lo = points.iter().map(|p| p.bytes).min().unwrap_or(1) as f64;
    let x_hi = points.iter().map(|p| p.bytes).max().unwrap_or(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let x = (x_lo / 2.0..x_hi * 2.0)
            .log_scale()
            .with_key_points(points.iter().map(|p| p.bytes as f64).collect());
        let y = (lo / 2.0..hi * 2.0).log_scale();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_label_formatter(&|b| show_bytes(*b))
            .y_label_formatter(&|ms| format!("{ms}"))
            .x_desc("message size (each way)")
            .y_desc("one round trip (ms)")
            .label_style((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        let at = |f: fn(&SizePoint) -> f64| points.iter().map(move |p| (p.bytes as f64, f(p)));
        chart
            .draw_series(LineSeries::new(
                at(|p| p.raw_reverse.med),
                FLOOR.stroke_width(2),
            ))
            .map_err(draw_err)?
            .label(RT_RAW)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], FLOOR.stroke_width(2)));
        if points.iter().all(|p| p.raw_echo.is_some()) {
            let echo = points
                .iter()
                .filter_map(|p| Some((p.bytes as f64, p.raw_echo?.med)));
            chart
                .draw_series(DashedLineSeries::new(echo, 6, 4, ECHO.stroke_width(2)))
                .map_err(draw_err)?
                .label(RT_ECHO)
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ECHO.stroke_width(2)));
        }
        chart
            .draw_series(LineSeries::new(at(|p| p.ours.med), OURS.stroke_width(1)))
            .map_err(draw_err)?;
        chart
            .draw_series(points.iter().map(|p| {
                let x = p.bytes as f64;
                ErrorBar::new_vertical(x, p.ours.min, p.ours.med, p.ours.max, OURS.filled(), 8)
            }))
            .map_err(draw_err)?
            .label(RT_OURS)
            .legend(|(x, y)| Circle::new((x + 10, y), 4, OURS.filled()));
        chart
            .draw_series(at(|p| p.ours.med).map(|c| Circle::new(c, 4, OURS.filled())))
            .map_err(draw_err)?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// The boot plot's columns: the machines measured (not those the guest
/// does not support).
pub fn boot_runs(runs: &[BootRun]) -> Vec<Boots<'_>> {
    runs.iter()
        .filter_map(|r| match r {
            BootRun::Measured {
                name, ours, floor, ..
            } => Some(Boots {
                machine: name,
                ours,
                floor,
            }),
            BootRun::Unsupported { .. } => None,
        })
        .collect()
}

/// The round-trip plot's points from the measurements: 16 bytes from the
/// round trips (requests/s), then [`SIZES`] from the throughput (MB/s each
/// way), each turned into the time of one round trip.
pub fn round_trips(vs: &Against, echo: Option<&EchoFigures>) -> Vec<SizePoint> {
    // Requests/s into ms per request.
    let rt = |s: &Stat| s.inverse(1e3);
    let mut points = vec![SizePoint {
        bytes: 16,
        ours: rt(&vs.rt.a),
        raw_reverse: rt(&vs.rt.b),
        raw_echo: echo.map(|e| rt(&e.rt)),
    }];
    for (i, &(bytes, _, _)) in SIZES.iter().enumerate() {
        // MB/s each way into ms per round trip of `bytes`.
        let tp = |s: &Stat| s.inverse(bytes as f64 / 1e3);
        points.push(SizePoint {
            bytes,
            ours: tp(&vs.tp[i].a),
            raw_reverse: tp(&vs.tp[i].b),
            raw_echo: echo.map(|e| tp(&e.tp[i])),
        });
    }
    points
}

/// Writes `svg` to `path` and says so.
pub fn write(path: &Path, svg: &str) -> Result<()> {
    std::fs::write(path, svg).map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!("bench: plot in {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::Pair;

    /// Whether every tag of `svg` is closed in order (a small XML check:
    /// enough for what plotters writes, no declarations or CDATA).
    fn well_formed(svg: &str) -> std::result::Result<(), String> {
        let mut open: Vec<&str> = Vec::new();
        let mut rest = svg.trim();
        if !rest.starts_with("<svg") || !rest.ends_with("</svg>") {
            return Err("not an <svg> document".into());
        }
        while let Some(at) = rest.find('<') {
            let text = &rest[..at];
            if text.contains('<') || text.replace("&amp;", "").replace("&lt;", "").contains('&') {
                return Err(format!("unescaped text {text:?}"));
            }
            let end = rest[at..].find('>').ok_or("a tag is not closed")? + at;
            let tag = &rest[at + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                match open.pop() {
                    Some(o) if o == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
            } else if !tag.ends_with('/') && !tag.starts_with('?') && !tag.starts_with('!') {
                open.push(tag.split_whitespace().next().unwrap_or(""));
            }
            rest = &rest[end + 1..];
        }
        if open.is_empty() {
            Ok(())
        } else {
            Err(format!("not closed: {open:?}"))
        }
    }

    fn stat(med: f64) -> Stat {
        Stat {
            med,
            min: med * 0.8,
            max: med * 1.3,
        }
    }

    #[test]
    fn boots_plot_has_machines_axes_and_series() {
        let (microvm, q35): (Vec<f64>, Vec<f64>) = (0..9)
            .map(|i| (60.0 + i as f64, 130.0 + 2.0 * i as f64))
            .unzip();
        let floor = [40.0, 42.0, 41.0];
        let svg = boots_svg(
            "x86_64: boot to answer",
            &[
                Boots {
                    machine: "microvm",
                    ours: &microvm,
                    floor: &floor,
                },
                Boots {
                    machine: "q35",
                    ours: &q35,
                    floor: &floor,
                },
            ],
        )
        .unwrap();
        well_formed(&svg).unwrap();
        for text in [
            "x86_64: boot to answer",
            "microvm",
            "q35",
            "boot to answer (ms)",
            "machine",
            BOOT_OURS,
            BOOT_FLOOR,
        ] {
            assert!(svg.contains(text), "no {text:?} in the plot");
        }
        // A dot per sample (and one in the legend per series).
        assert_eq!(svg.matches("<circle").count(), 9 + 9 + 3 + 3 + 2);
    }

    #[test]
    fn boots_plot_without_floor() {
        let svg = boots_svg(
            "virt",
            &[Boots {
                machine: "virt",
                ours: &[70.0, 71.0],
                floor: &[],
            }],
        )
        .unwrap();
        well_formed(&svg).unwrap();
        assert!(svg.contains(BOOT_OURS) && !svg.contains(BOOT_FLOOR));
        assert!(boots_svg("none", &[]).is_err());
    }

    #[test]
    fn round_trip_plot_has_sizes_axes_and_series() {
        let points: Vec<SizePoint> = [(16, 0.1), (1 << 20, 4.0), (8 << 20, 50.0)]
            .into_iter()
            .map(|(bytes, ms)| SizePoint {
                bytes,
                ours: stat(ms),
                raw_reverse: stat(ms * 0.9),
                raw_echo: Some(stat(ms * 0.5)),
            })
            .collect();
        let svg = round_trips_svg("x86_64 microvm: round trips", &points).unwrap();
        well_formed(&svg).unwrap();
        for text in [
            "x86_64 microvm: round trips",
            "16 B",
            "1 MiB",
            "8 MiB",
            "message size (each way)",
            "one round trip (ms)",
            RT_RAW,
            "floor: raw echo (streams, no target)",
            "svmc Reverse (median, min–max)",
        ] {
            assert!(svg.contains(text), "no {text:?} in the plot");
        }
        assert!(svg.contains("<polyline"), "no lines");
        // No log scale for a time of 0.
        let zero = SizePoint {
            bytes: 16,
            ours: stat(0.0),
            raw_reverse: stat(1.0),
            raw_echo: None,
        };
        assert!(round_trips_svg("zero", &[zero]).is_err());
    }

    #[test]
    fn round_trip_points_from_the_figures() {
        let vs = Against {
            rt: Pair::of(vec![10_000.0], vec![10_000.0]),
            tp: [
                Pair::of(vec![200.0], vec![100.0]),
                Pair::of(vec![100.0], vec![100.0]),
            ],
        };
        let p = round_trips(&vs, None);
        assert_eq!(
            p.iter().map(|p| p.bytes).collect::<Vec<_>>(),
            [16, 1 << 20, 8 << 20]
        );
        // 10,000 requests/s: 0.1 ms each.
        assert!((p[0].ours.med - 0.1).abs() < 1e-12);
        // 1 MiB at 200 MB/s each way: 5.24 ms; the floor at 100 MB/s twice that.
        assert!((p[1].ours.med - 1048576.0 / 200e3).abs() < 1e-9);
        assert!((p[1].raw_reverse.med - 2.0 * p[1].ours.med).abs() < 1e-9);
        assert!(p.iter().all(|p| p.raw_echo.is_none()));
    }

    #[test]
    fn the_well_formed_check_catches_bad_svg() {
        assert!(well_formed("<svg><g></svg>").is_err());
        assert!(well_formed("<svg><text>a & b</text></svg>").is_err());
        assert!(well_formed("<svg><g/><text>a &amp; b</text></svg>").is_ok());
    }
}
