/*
 * aarch64 entry under QEMU `virt` with `-kernel` and an ELF image.
 *
 * Machine state on entry (QEMU hw/arm/boot.c, no firmware): EL1, MMU and
 * caches off, interrupts masked, x0 = 0 for an ELF image (QEMU passes the
 * device tree address only to Linux images; it has put the DTB at the base
 * of RAM, 0x4000_0000, below this image). No stack.
 *
 * What this code does, in order:
 *   1. allows FP/SIMD at EL1 (Rust code uses NEON registers),
 *   2. installs the exception vectors (every exception prints and exits),
 *   3. turns on the MMU and caches with the identity map of mmu.rs
 *      (device memory Device-nGnRE, RAM Normal write-back),
 *   4. sets the stack and calls `rust_start(x0)`.
 * No Rust code runs before step 3: with the MMU off every data access is
 * Device memory, where the unaligned accesses Rust may emit would fault.
 *
 * `.bss` is not zeroed: QEMU's ELF loader zero-fills it.
 *
 * Rust constants passed as `const` operands of global_asm!:
 *   MAIR      mmu::MAIR_EL1
 *   TCR       mmu::TCR_EL1
 *   SCTLR_SET mmu::SCTLR_SET   (bits set in SCTLR_EL1)
 *   SCTLR_CLR mmu::SCTLR_CLEAR (bits cleared in SCTLR_EL1)
 *   DEVICE_BLOCK, NORMAL_BLOCK   mmu::DEVICE_BLOCK, mmu::NORMAL_BLOCK
 *   RAM_FIRST, RAM_SPAN          the RAM blocks: RAM_FIRST ..= RAM_FIRST + RAM_SPAN
 */

.section .text.boot, "ax"
.global _start
_start:
    /* CPACR_EL1.FPEN (bits 21:20) = 0b11: no trapping of FP/SIMD
     * instructions at EL1 or EL0. Everything else 0 (no trace/SVE/SME). */
    mov x9, #(3 << 20)
    msr cpacr_el1, x9

    /* VBAR_EL1 = the 2 KiB-aligned vector table below. */
    adr x9, exception_vectors
    msr vbar_el1, x9

    /* SPSel = 1: use SP_EL1 at EL1 (QEMU enters in EL1h anyway). */
    msr spsel, #1
    isb

    /* MAIR_EL1: memory attributes by AttrIndx (see mmu.rs):
     * Attr0 = 0x04 Device-nGnRE, Attr1 = 0xff Normal, inner and outer
     * write-back, read- and write-allocate, non-transient. */
    ldr x9, ={MAIR}
    msr mair_el1, x9

    /* TCR_EL1 (see mmu.rs for each field): T0SZ = 25 (39-bit VA, walks
     * start at level 1), IRGN0/ORGN0 = write-back RA/WA, SH0 = inner
     * shareable, TG0 = 4 KiB granule, EPD1 = 1 (no TTBR1 walks),
     * IPS = 40-bit physical addresses. */
    ldr x9, ={TCR}
    msr tcr_el1, x9

    /* The level-1 identity map (mmu.rs) in .bss: entry i (0..512) maps
     * the 1 GiB at i << 30 as a NORMAL_BLOCK if i is a RAM block, else as
     * a DEVICE_BLOCK. Aligned 8-byte stores only: the MMU is off. */
    adrp x9, idmap
    add x9, x9, :lo12:idmap
    mov x10, #0
    ldr x11, ={DEVICE_BLOCK}
    ldr x12, ={NORMAL_BLOCK}
1:  sub x13, x10, #{RAM_FIRST}
    cmp x13, #{RAM_SPAN}
    csel x14, x12, x11, ls      /* unsigned: i - RAM_FIRST <= RAM_SPAN */
    orr x14, x14, x10, lsl #30
    str x14, [x9, x10, lsl #3]
    add x10, x10, #1
    cmp x10, #512
    b.ne 1b
    dsb ish

    /* TTBR0_EL1 = the level-1 table (ASID 0, CnP 0). */
    msr ttbr0_el1, x9

    /* No stale translations from before (QEMU starts clean, hardware may
     * not): invalidate the EL1&0 TLBs, then wait for it and for the
     * register writes above. */
    tlbi vmalle1
    dsb nsh
    isb

    /* SCTLR_EL1: set M (bit 0, MMU on), C (bit 2, data cache), SA (bit 3,
     * SP alignment check), I (bit 12, instruction cache); clear A (bit 1,
     * alignment faults), WXN (bit 19: the RAM block holds code and data). */
    mrs x9, sctlr_el1
    ldr x10, ={SCTLR_SET}
    orr x9, x9, x10
    ldr x10, ={SCTLR_CLR}
    bic x9, x9, x10
    msr sctlr_el1, x9
    isb

    /* The stack (layout::stack_range) and Rust. x0 is still the value the
     * loader passed. */
    adrp x9, __stack_end
    add x9, x9, :lo12:__stack_end
    mov sp, x9
    bl rust_start
1:  wfi
    b 1b

/*
 * Exception vectors: 16 entries of 128 bytes (ARM ARM D1.10.2), in groups
 * of four (synchronous, IRQ, FIQ, SError) for: current EL with SP_EL0,
 * current EL with SP_ELx, lower EL AArch64, lower EL AArch32. Nothing is
 * expected to arrive (interrupts stay masked), so each entry moves to the
 * exception stack (the faulting SP may be what failed) and calls
 * `exception_handler(entry index)`, which prints and exits.
 */
.macro vector index
.balign 0x80
    adrp x9, __exception_stack_end
    add x9, x9, :lo12:__exception_stack_end
    mov sp, x9
    mov x0, #\index
    bl exception_handler
2:  wfi
    b 2b
.endm

.section .text.vectors, "ax"
.balign 0x800
exception_vectors:
    vector 0
    vector 1
    vector 2
    vector 3
    vector 4
    vector 5
    vector 6
    vector 7
    vector 8
    vector 9
    vector 10
    vector 11
    vector 12
    vector 13
    vector 14
    vector 15

.section .bss.idmap, "aw", @nobits
.balign 4096
idmap:
    .skip 512 * 8

.section .bss.stack, "aw", @nobits
.balign 4096
.global __stack_start
__stack_start:
    .skip {STACK_SIZE}
.global __stack_end
__stack_end:
.balign 16
__exception_stack_start:
    .skip {EXCEPTION_STACK_SIZE}
__exception_stack_end:
