//! §6 the captured bodies against the CDDL schema.

use super::*;

pub(crate) fn cddl_every_captured_body(p: &Peer) -> R {
    let tool = cddl::tool()?;
    let captured = p.captured.bodies();
    if let Ok(dir) = std::env::var("SVMC_CONFORMANCE_CAPTURE") {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for (i, (kind, body, _)) in captured.iter().enumerate() {
            let rule = cddl::rule_for(*kind).unwrap_or("none");
            std::fs::write(format!("{dir}/{i:04}-{rule}.cbor"), body).map_err(|e| e.to_string())?;
        }
    }
    let mut failed = Vec::new();
    let mut counts = Vec::new();
    for kind in [
        FrameKind::Hello,
        FrameKind::Request,
        FrameKind::Response,
        FrameKind::Error,
        FrameKind::Cancel,
        FrameKind::Chunk,
    ] {
        let rule = cddl::rule_for(kind).unwrap();
        // Deduplicated: the same body needs one run of the tool.
        let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
        for (k, body, what) in &captured {
            if *k == kind && !bodies.iter().any(|(_, b)| b == body) {
                // Large payloads: the schema does not care about their size.
                bodies.push((what.clone(), body.clone()));
            }
        }
        ensure(!bodies.is_empty(), || format!("no {kind} body captured"))?;
        counts.push(format!("{} {kind}", bodies.len()));
        failed.extend(cddl::validate(&tool, rule, &bodies)?);
    }
    println!("    validated {}", counts.join(", "));
    ensure(failed.is_empty(), || {
        format!("bodies that break the schema: {failed:?}")
    })
}
