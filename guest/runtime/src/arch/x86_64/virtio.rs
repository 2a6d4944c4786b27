//! Finding the virtio socket device: the virtio-mmio transports that the
//! ACPI DSDT describes (QEMU `microvm`), else the PCIe root bus through
//! ECAM (q35).

use core::fmt;
use core::ptr::NonNull;

use log::{debug, info};
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{Cam, Command, MmioCam, PciRoot};
use virtio_drivers::transport::{DeviceType, SomeTransport, Transport, pci::virtio_device_type};

use crate::hal::IdentityHal;

/// q35's PCIe ECAM window (MCH PCIEXBAR, as SeaBIOS programs it), 256 MiB
/// for buses 0..=255: used when there are no ACPI tables to say (with
/// tables, the MCFG's address is used, and no MCFG means no PCI).
const Q35_ECAM_BASE: u64 = 0xB000_0000;

/// The virtio transport of this architecture: MMIO or PCI.
pub type VirtioTransport = SomeTransport<'static>;

/// Why no virtio socket device could be used.
#[derive(Debug)]
pub enum DiscoveryError {
    /// No virtio socket device among the virtio-mmio transports of the
    /// DSDT or on PCI bus 0.
    NotFound,
    /// A PCI device was found but its transport could not be set up.
    Pci(virtio_drivers::transport::pci::VirtioPciError),
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => write!(
                f,
                "no virtio socket device among the ACPI tables' virtio-mmio transports or on PCI bus 0"
            ),
            Self::Pci(e) => write!(f, "virtio PCI transport: {e}"),
        }
    }
}

/// Returns the transport of the first virtio socket device.
pub fn find_vsock() -> Result<VirtioTransport, DiscoveryError> {
    let acpi = super::acpi();
    for &(base, size) in acpi.iter().flat_map(|a| a.virtio_mmio.iter().flatten()) {
        let Some(header) = NonNull::new(base as *mut VirtIOHeader) else {
            continue;
        };
        let Ok(size) = usize::try_from(size) else {
            continue;
        };
        // SAFETY: the DSDT describes this window as a virtio-mmio register
        // block (header and config space, `size` bytes), inside the
        // identity map; only this transport accesses it (the ones made
        // here for other devices are dropped at once).
        match unsafe { MmioTransport::new(header, size) } {
            Ok(t) if t.device_type() == DeviceType::Socket => {
                info!("virtio socket device at mmio {base:#x} ({:?})", t.version());
                return Ok(t.into());
            }
            Ok(t) => debug!("virtio-mmio {base:#x}: {:?}", t.device_type()),
            Err(e) => debug!("virtio-mmio {base:#x}: {e}"),
        }
    }
    let ecam = match acpi {
        Some(a) if a.ecam == 0 => return Err(DiscoveryError::NotFound),
        Some(a) => a.ecam,
        None => Q35_ECAM_BASE,
    };
    // SAFETY: the MCFG (or, without ACPI tables, q35's fixed layout) says
    // that the 256 MiB at `ecam` are the PCIe configuration space, which
    // boot.s identity-maps (it is below 4 GiB on q35); only this PciRoot
    // accesses it.
    let cam = unsafe { MmioCam::new(ecam as *mut u8, Cam::Ecam) };
    let mut root = PciRoot::new(cam);
    let found = root
        .enumerate_bus(0)
        .inspect(|(df, info)| debug!("pci {df}: {info}"))
        .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::Socket));
    let Some((df, _)) = found else {
        return Err(DiscoveryError::NotFound);
    };
    let (_, command) = root.get_status_command(df);
    root.set_command(df, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
    info!("virtio socket device at pci {df}");
    PciTransport::new::<IdentityHal, _>(&mut root, df)
        .map(Into::into)
        .map_err(DiscoveryError::Pci)
}
