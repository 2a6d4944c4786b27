//! The device tree QEMU passes, read from memory: where it is, and the
//! room it may take (up to the image). The parsing is
//! [`crate::parse::fdt`].

use crate::layout;
use crate::parse::fdt::{self, DtError, Platform};

/// Where QEMU puts the device tree for an ELF image on `virt`: the base of
/// RAM (hw/arm/boot.c, when the image leaves room below it).
pub const DTB_ADDRESS: usize = 0x4000_0000;

/// Parses the device tree at `address`, which may take the memory up to
/// the image.
///
/// # Safety
///
/// `address` must be identity-mapped RAM below the image that nothing
/// writes for the rest of the program (QEMU's DTB at the base of RAM).
pub unsafe fn parse(address: usize) -> Result<Platform<'static>, DtError> {
    let room = layout::image_range().start.saturating_sub(address);
    // SAFETY: the caller promised readable RAM from `address` up to the
    // image that is never written, so a `'static` shared slice is sound.
    let room: &'static [u8] = unsafe { core::slice::from_raw_parts(address as *const u8, room) };
    fdt::platform(room, &layout::image_range())
}
