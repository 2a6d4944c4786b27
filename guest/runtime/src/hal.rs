//! virtio-drivers' [`Hal`] for an identity-mapped guest: physical address ==
//! virtual address, DMA buffers from the heap, no IOMMU and no bounce
//! buffers.

use core::alloc::Layout;
use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

use crate::arch;

/// The identity-mapping HAL.
pub struct IdentityHal;

fn dma_layout(pages: usize) -> Layout {
    Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).expect("DMA layout")
}

// SAFETY: what `Hal` requires of implementations holds:
// - `dma_alloc` returns a fresh, zeroed, page-aligned heap allocation of
//   `pages` pages; it aliases nothing until `dma_dealloc` frees it, and its
//   physical address is its address because all memory is identity-mapped
//   (see the arch boot code).
// - `mmio_phys_to_virt` returns the identity-mapped address of a BAR region,
//   after checking that it lies inside the mapped range; the PCI transport is
//   the only user of that region.
// - `share` returns the buffer's own address: the device can reach all RAM
//   directly (no IOMMU, no memory encryption), so nothing needs copying.
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = dma_layout(pages);
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            alloc::alloc::handle_alloc_error(layout)
        };
        (ptr.as_ptr() as PhysAddr, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller passes back what `dma_alloc` returned for the
        // same number of pages, so the layout matches the allocation.
        unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), dma_layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        let end = paddr.checked_add(size as PhysAddr);
        assert!(
            end.is_some_and(|end| end <= arch::IDENTITY_MAP_END),
            "MMIO region {paddr:#x}+{size:#x} is outside the identity map (below {:#x})",
            arch::IDENTITY_MAP_END
        );
        NonNull::new(paddr as *mut u8).expect("MMIO region at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
