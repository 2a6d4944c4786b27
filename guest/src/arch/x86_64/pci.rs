//! Finding the virtio socket device on the q35 PCIe root bus through ECAM.

use core::fmt;

use log::{debug, info};
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{Cam, Command, MmioCam, PciRoot};
use virtio_drivers::transport::{DeviceType, pci::virtio_device_type};

use crate::hal::IdentityHal;

/// q35's PCIe ECAM window (MCH PCIEXBAR, as SeaBIOS programs it), 256 MiB
/// for buses 0..=255.
const ECAM_BASE: usize = 0xB000_0000;

/// The virtio transport of this architecture.
pub type VirtioTransport = PciTransport;

/// Why no virtio socket device could be used.
#[derive(Debug)]
pub enum DiscoveryError {
    /// No virtio socket device on PCI bus 0.
    NotFound,
    /// The device was found but its transport could not be set up.
    Transport(virtio_drivers::transport::pci::VirtioPciError),
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound => write!(f, "no virtio socket device on PCI bus 0"),
            Self::Transport(e) => write!(f, "virtio PCI transport: {e}"),
        }
    }
}

/// Finds the first virtio socket device on bus 0, enables memory decoding
/// and bus mastering, and returns its transport. Devices added with
/// `-device` on q35 sit on bus 0 (`pcie.0`); SeaBIOS has assigned the BARs.
pub fn find_vsock() -> Result<VirtioTransport, DiscoveryError> {
    // SAFETY: on q35 the 256 MiB at ECAM_BASE is the PCIe configuration
    // space, identity-mapped by boot.s, and only this PciRoot accesses it.
    let cam = unsafe { MmioCam::new(ECAM_BASE as *mut u8, Cam::Ecam) };
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
    PciTransport::new::<IdentityHal, _>(&mut root, df).map_err(DiscoveryError::Transport)
}
