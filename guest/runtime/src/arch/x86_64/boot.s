/*
 * x86_64 entry through the PVH boot protocol (Xen's hvm_start_info, which
 * QEMU's -kernel implements for ELF images carrying the note below).
 *
 * Machine state on entry (xen/include/public/arch-x86/hvm/start_info.h):
 * 32-bit protected mode, paging off, flat 4 GiB CS/DS/ES/SS, interrupts
 * off, EBX = physical address of the hvm_start_info structure. No stack.
 *
 * What this code does, in order:
 *   1. builds identity page tables for 0..4 GiB with 2 MiB pages (the
 *      image, RAM, the q35 PCI ECAM at 0xB000_0000 and the BARs SeaBIOS
 *      assigns below 4 GiB, the local APIC/IOAPIC),
 *   2. enables PAE, long mode and paging,
 *   3. loads a GDT with a 64-bit code segment and far-jumps to 64-bit code,
 *   4. loads data segments and the stack, and calls
 *      `rust_start(start_info_paddr)` (System V ABI: first argument in RDI).
 *
 * The page tables and the stack live in .bss. They are not zeroed here:
 * QEMU's ELF loader zero-fills the part of each PT_LOAD segment beyond its
 * file size, and every page-table entry that must be non-zero is written
 * below anyway.
 *
 * The image may be linked position-independent (x86_64-unknown-none's
 * default, for a service crate without `-C relocation-model=static`) but
 * is always loaded at its link address (1 MiB, linker.ld). The 32-bit code
 * and the PVH note therefore take every address from an absolute alias
 * that linker.ld defines (`__boot_*_abs` = ABSOLUTE(anchor)) plus an
 * offset within the anchor's section, which the linker resolves without
 * a dynamic relocation; and the 64-bit code applies the image's
 * R_X86_64_RELATIVE relocations (none in a non-PIE build) before any Rust
 * code runs.
 *
 * Rust constants passed as `const` operands of global_asm!:
 *   STACK_SIZE   layout::STACK_SIZE
 */

/* PVH ELF note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY (18), desc =
 * the 32-bit physical entry point (8 bytes, read as a 64-bit value). */
.section .note.Xen, "a", @note
.balign 4
.long 4                         /* namesz: "Xen\0" */
.long 8                         /* descsz */
.long 18                        /* type: XEN_ELFNOTE_PHYS32_ENTRY */
.asciz "Xen"
.balign 4
.quad __boot_text_abs
.balign 4

.section .text.boot, "ax"
.code32
.global pvh_start32
pvh_start32:
    cld

    /* PML4[0] -> PDPT (covers 0..512 GiB). Flags 0x3 = Present | Writable. */
    movl $(__boot_tables_abs + (pdpt - __boot_pml4)), %eax
    orl $0x3, %eax
    movl %eax, __boot_tables_abs
    movl $0, __boot_tables_abs + 4

    /* PDPT[0..4] -> the four page directories, one per GiB. */
    movl $(__boot_tables_abs + (pd - __boot_pml4)), %eax
    orl $0x3, %eax
    xorl %ecx, %ecx
1:  movl %eax, __boot_tables_abs + (pdpt - __boot_pml4)(, %ecx, 8)
    movl $0, __boot_tables_abs + (pdpt - __boot_pml4) + 4(, %ecx, 8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    /* PD entries 0..2048: 2 MiB pages mapping virtual == physical.
     * Flags 0x83 = Present | Writable | PS (2 MiB page). PWT/PCD are 0
     * (write-back by PAT); the MTRRs SeaBIOS programs make the PCI hole
     * uncacheable. */
    xorl %ecx, %ecx
2:  movl %ecx, %eax
    shll $21, %eax
    orl $0x83, %eax
    movl %eax, __boot_tables_abs + (pd - __boot_pml4)(, %ecx, 8)
    movl $0, __boot_tables_abs + (pd - __boot_pml4) + 4(, %ecx, 8)
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    /* CR3 = physical address of the PML4 (PWT = PCD = 0). */
    movl $__boot_tables_abs, %eax
    movl %eax, %cr3

    /* CR4: set PAE (bit 5), required for long mode. */
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4

    /* EFER (MSR 0xC0000080): set LME (bit 8), long mode enable. */
    movl $0xC0000080, %ecx
    rdmsr
    orl $(1 << 8), %eax
    wrmsr

    /* CR0: set PG (bit 31) and keep PE (bit 0); with EFER.LME this
     * activates long mode (EFER.LMA becomes 1). */
    movl %cr0, %eax
    orl $((1 << 31) | (1 << 0)), %eax
    movl %eax, %cr0

    lgdt __boot_gdt_abs + (gdt_pointer - __boot_gdt)
    ljmp $0x08, $(__boot_text_abs + (start64 - pvh_start32))

.code64
start64:
    /* Data segments: selector 0x10 (flat data). FS/GS unused. */
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs

    leaq __stack_end(%rip), %rsp

    /* Relocations of a position-independent build: for each
     * R_X86_64_RELATIVE (type 8) entry of .rela.dyn (24 bytes: r_offset,
     * r_info, r_addend), *r_offset = r_addend (no load bias). A static
     * build has none. */
    leaq __rela_start(%rip), %rsi
    leaq __rela_end(%rip), %rdx
4:  cmpq %rdx, %rsi
    jae 6f
    cmpl $8, 8(%rsi)
    jne 5f
    movq (%rsi), %rax
    movq 16(%rsi), %rcx
    movq %rcx, (%rax)
5:  addq $24, %rsi
    jmp 4b
6:
    /* rust_start(start_info_paddr): zero-extend EBX into RDI. */
    movl %ebx, %edi
    call rust_start
3:  cli
    hlt
    jmp 3b

.section .rodata.boot, "a"
.balign 16
.global __boot_gdt
__boot_gdt:
gdt:
    .quad 0                     /* 0x00: null descriptor */
    .quad 0x00AF9A000000FFFF    /* 0x08: code, 64-bit (L=1), present, DPL 0 */
    .quad 0x00CF92000000FFFF    /* 0x10: data, writable, present, DPL 0 */
gdt_end:
gdt_pointer:
    .word gdt_end - gdt - 1     /* limit */
    .quad __boot_gdt_abs        /* base (lgdt in 32-bit mode reads 4 bytes) */

.section .bss.boot, "aw", @nobits
.balign 4096
.global __boot_pml4
__boot_pml4:
pml4:
    .skip 4096
pdpt:
    .skip 4096
pd:
    .skip 4 * 4096

.section .bss.stack, "aw", @nobits
.balign 4096
.global __stack_start
__stack_start:
    .skip {STACK_SIZE}
.global __stack_end
__stack_end:
