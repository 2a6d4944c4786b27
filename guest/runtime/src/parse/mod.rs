//! What the runtime reads from the VMM at boot, as pure functions over
//! byte slices and strings: no memory access of their own, no allocation,
//! so they run before the heap exists and are unit-tested on the host with
//! malformed, truncated and hostile input (`cargo test -p svmc-runtime`).
//!
//! - [`acpi`]: the ACPI tables (x86_64: PVH hands over the RSDP).
//! - [`fdt`]: the flattened device tree (aarch64 `virt`).
//! - [`cmdline`]: the kernel command line.
//! - [`pvh`]: the PVH memory map (x86_64), where the heap goes.

pub mod acpi;
pub mod cmdline;
pub mod fdt;
pub mod pvh;
