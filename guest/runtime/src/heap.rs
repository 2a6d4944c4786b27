//! The global allocator: `talc` over one RAM range, wrapped to count the
//! bytes in use and the peak ([`HeapStats`]).
//!
//! The heap is the RAM above the image in the region that holds it, as the
//! boot memory map reports it, so it grows with the memory the VM is given.

use core::alloc::{GlobalAlloc, Layout};
use core::ops::Range;
use core::sync::atomic::{AtomicUsize, Ordering};

use talc::{ErrOnOom, Span, Talc, Talck};

/// Heap figures in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapStats {
    /// Size of the heap.
    pub size: u64,
    /// Bytes allocated now.
    pub used: u64,
    /// Most bytes ever allocated at once.
    pub peak: u64,
}

/// `talc` behind a spin lock, with usage counters.
struct CountingHeap {
    talc: Talck<spin::Mutex<()>, ErrOnOom>,
    size: AtomicUsize,
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl CountingHeap {
    fn add(&self, bytes: usize) {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(used, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every method delegates to `Talck`'s `GlobalAlloc` implementation
// with the caller's arguments unchanged, and only updates counters besides.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        let ptr = unsafe { self.talc.alloc(layout) };
        if !ptr.is_null() {
            self.add(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        let ptr = unsafe { self.talc.alloc_zeroed(layout) };
        if !ptr.is_null() {
            self.add(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { self.talc.dealloc(ptr, layout) };
        self.sub(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        let new = unsafe { self.talc.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Count the new block before the old one goes, so that the
            // peak includes a moving reallocation's two blocks.
            if new != ptr {
                self.add(new_size);
                self.sub(layout.size());
            } else if new_size >= layout.size() {
                self.add(new_size - layout.size());
            } else {
                self.sub(layout.size() - new_size);
            }
        }
        new
    }
}

#[global_allocator]
static HEAP: CountingHeap = CountingHeap {
    talc: Talc::new(ErrOnOom).lock(),
    size: AtomicUsize::new(0),
    used: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

/// Gives `range` and `low` (a second range, possibly empty) to the
/// allocator; returns the usable size of both.
///
/// # Safety
///
/// Both ranges must be RAM, identity-mapped, writable, disjoint, used by
/// nothing else for the rest of the program, and this must be called once.
pub(crate) unsafe fn init(range: Range<usize>, low: Range<usize>) -> usize {
    let mut size = 0;
    for r in [range, low] {
        if r.is_empty() {
            continue;
        }
        let span = Span::from_base_size(r.start as *mut u8, r.len());
        // SAFETY: the caller promised the memory is ours alone and valid.
        let claimed = unsafe { HEAP.talc.lock().claim(span) };
        size += claimed.map(|s| s.size()).unwrap_or(0);
    }
    HEAP.size.store(size, Ordering::Relaxed);
    size
}

/// Heap figures now.
pub fn stats() -> HeapStats {
    HeapStats {
        size: HEAP.size.load(Ordering::Relaxed) as u64,
        used: HEAP.used.load(Ordering::Relaxed) as u64,
        peak: HEAP.peak.load(Ordering::Relaxed) as u64,
    }
}
