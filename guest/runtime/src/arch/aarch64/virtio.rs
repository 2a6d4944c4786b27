//! Finding the virtio socket device (virtio-mmio slots from the device
//! tree, else the PCIe root bus) and the pvpanic device (PCIe).
//!
//! Nothing assigns PCI BARs on `virt` when QEMU boots an image directly
//! (no firmware), so the guest does: from the bridge's 32-bit memory window
//! in the device tree, in order, aligned to each BAR's size.

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use log::{debug, info, warn};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{
    BarInfo, Cam, Command, ConfigurationAccess, DeviceFunction, MmioCam, PciRoot,
};
use virtio_drivers::transport::{DeviceType, SomeTransport, Transport, pci::virtio_device_type};

use crate::hal::IdentityHal;
use crate::parse::fdt::PciHost;

/// The virtio transport of this architecture: MMIO or PCI.
pub type VirtioTransport = SomeTransport<'static>;

/// QEMU's pvpanic PCI device (`hw/misc/pvpanic-pci.c`): Red Hat's vendor
/// ID and `PCI_DEVICE_ID_REDHAT_PVPANIC`.
const PVPANIC_ID: (u16, u16) = (0x1b36, 0x0011);

/// Next free address in the bridge's 32-bit window, and its end.
static NEXT_BAR: AtomicU64 = AtomicU64::new(0);
static END_BAR: AtomicU64 = AtomicU64::new(0);

/// Why no virtio socket device could be used.
#[derive(Debug)]
pub enum DiscoveryError {
    /// No virtio socket device in the virtio-mmio slots or on PCI bus 0.
    NotFound,
    /// A PCI device was found but its transport could not be set up.
    Pci(virtio_drivers::transport::pci::VirtioPciError),
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => write!(
                f,
                "no virtio socket device in the device tree's virtio-mmio slots or on PCI bus 0"
            ),
            Self::Pci(e) => write!(f, "virtio PCI transport: {e}"),
        }
    }
}

/// Returns the transport of the first virtio socket device.
pub fn find_vsock() -> Result<VirtioTransport, DiscoveryError> {
    let platform = super::platform().ok_or(DiscoveryError::NotFound)?;
    // From the highest address down: QEMU `virt` plugs `-device`s into its
    // transports from the last one (0x0a00_3e00) down, and the device tree
    // lists them in address order, so this finds the device first instead
    // of reading 31 empty slots before it.
    for &(base, size) in platform.virtio_mmio.iter().flatten().rev() {
        let Some(header) = NonNull::new(base as *mut VirtIOHeader) else {
            continue;
        };
        // SAFETY: the device tree names this window as a virtio-mmio
        // register block (header and config space, `size` bytes), mapped as
        // device memory; only this transport accesses it (the others made
        // here for other slots are dropped at once).
        match unsafe { MmioTransport::new(header, size) } {
            Ok(t) if t.device_type() == DeviceType::Socket => {
                info!("virtio socket device at mmio {base:#x} ({:?})", t.version());
                return Ok(t.into());
            }
            Ok(t) => debug!("virtio-mmio {base:#x}: {:?}", t.device_type()),
            Err(_) => {} // An empty slot (device ID 0).
        }
    }
    let Some(host) = platform.pci else {
        return Err(DiscoveryError::NotFound);
    };
    init_bar_window(&host);
    let mut root = pci_root(&host);
    let found = root
        .enumerate_bus(0)
        .inspect(|(df, info)| debug!("pci {df}: {info}"))
        .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::Socket));
    let Some((df, _)) = found else {
        return Err(DiscoveryError::NotFound);
    };
    assign_bars(&mut root, df);
    info!("virtio socket device at pci {df}");
    PciTransport::new::<IdentityHal, _>(&mut root, df)
        .map(Into::into)
        .map_err(DiscoveryError::Pci)
}

/// Makes the bridge's 32-bit window the room for BARs, once.
fn init_bar_window(host: &PciHost) {
    if NEXT_BAR.load(Ordering::Relaxed) != 0 {
        return;
    }
    let Some((pci, cpu, size)) = host.mem32 else {
        return;
    };
    if pci != cpu {
        warn!("PCI window {pci:#x} is not identity-mapped to {cpu:#x}: not assigning BARs");
        return;
    }
    NEXT_BAR.store(cpu, Ordering::Relaxed);
    END_BAR.store(cpu + size, Ordering::Relaxed);
}

/// Finds the pvpanic device on bus 0, gives it its BAR and returns the
/// address of its event register. Only the failure exit needs it, so it
/// is looked for then, not at boot (enumerating the bus cost about 1.3 ms
/// of every boot under TCG).
pub fn find_pvpanic(host: &PciHost) -> Option<usize> {
    init_bar_window(host);
    let mut root = pci_root(host);
    let (df, _) = root
        .enumerate_bus(0)
        .find(|(_, info)| (info.vendor_id, info.device_id) == PVPANIC_ID)?;
    assign_bars(&mut root, df);
    match root.bar_info(df, 0) {
        Ok(Some(BarInfo::Memory { address, .. })) if address != 0 => Some(address as usize),
        _ => None,
    }
}

/// ECAM bytes per bus: 32 devices x 8 functions x 4 KiB (PCIe base
/// specification, "Enhanced Configuration Access Mechanism").
const ECAM_BUS_SIZE: usize = 1 << 20;

/// The configuration space of bus 0 through the bridge's ECAM.
fn pci_root(host: &PciHost) -> PciRoot<MmioCam<'static>> {
    assert!(
        host.ecam_size >= ECAM_BUS_SIZE,
        "ECAM of {:#x} bytes is smaller than one bus",
        host.ecam_size
    );
    // SAFETY: the device tree names this region the bridge's ECAM; it is
    // mapped as device memory, and only the one PciRoot alive at a time
    // accesses it (discovery runs once; the pvpanic search only on the way
    // out, when the vsock device is no longer used).
    let cam = unsafe { MmioCam::new(host.ecam as *mut u8, Cam::Ecam) };
    PciRoot::new(cam)
}

/// Gives each unassigned memory BAR of `df` an address from the window and
/// turns on memory decoding and bus mastering.
fn assign_bars<C: ConfigurationAccess>(root: &mut PciRoot<C>, df: DeviceFunction) {
    let Ok(bars) = root.bars(df) else {
        return;
    };
    for (index, bar) in bars.iter().enumerate() {
        let Some(BarInfo::Memory { address, size, .. }) = bar else {
            continue;
        };
        if *address != 0 || *size == 0 {
            continue;
        }
        let Some(base) = allocate(*size) else {
            warn!("pci {df}: no room for BAR {index} ({size:#x} bytes)");
            continue;
        };
        let index = index as u8;
        if bar.as_ref().is_some_and(BarInfo::takes_two_entries) {
            root.set_bar_64(df, index, base);
        } else {
            root.set_bar_32(df, index, base as u32);
        }
        debug!("pci {df}: BAR {index} at {base:#x} ({size:#x} bytes)");
    }
    let (_, command) = root.get_status_command(df);
    root.set_command(df, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
}

/// `size` bytes aligned to `size` (a BAR's size is a power of two) from
/// the 32-bit window.
fn allocate(size: u64) -> Option<u64> {
    let size = size.max(16);
    let next = NEXT_BAR.load(Ordering::Relaxed);
    let base = next.checked_next_multiple_of(size)?;
    let end = base.checked_add(size)?;
    if next == 0 || end > END_BAR.load(Ordering::Relaxed) {
        return None;
    }
    NEXT_BAR.store(end, Ordering::Relaxed);
    Some(base)
}
