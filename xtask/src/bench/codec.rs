//! svmc's codec figures: the summary table of `cargo bench -p svmc-proto
//! --bench codec`, printed under the report.

use std::process::Stdio;

use crate::util::{Result, cargo};

/// Runs svmc-proto's codec benchmark (its summary table only; criterion's
/// own benchmarks are filtered out) and returns the summary.
pub fn summary() -> Result<String> {
    let out = cargo()
        .args([
            "bench",
            "--quiet",
            "-p",
            crate::ci::SVMC_PACKAGE,
            "--bench",
            "codec",
            "--",
            "no-criterion-benchmark-matches-this",
        ])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo bench -p svmc-proto: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo bench -p svmc-proto failed with {}",
            out.status
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .find("Summary")
        .map_or(text.as_ref(), |i| &text[i..])
        .trim_end();
    Ok(summary.to_string())
}
