/*
 * memcpy(dst x0, src x1, n x2) -> dst, replacing compiler_builtins' generic
 * one (a weak symbol) in the aarch64 guest; see memcpy.rs for why.
 *
 * 32 bytes per iteration with two ldp/stp pairs, whatever the alignment of
 * either pointer (the MMU is on, SCTLR_EL1.A is clear and both buffers are
 * in Normal memory, so unaligned accesses are allowed). The 0..31 bytes
 * left are copied as at most one 16-byte pair from the front and the last
 * 16 bytes of the buffers, which may overlap bytes already copied (same
 * values: memcpy's buffers do not overlap). Below 16 bytes, one byte at a
 * time.
 */
.section .text.memcpy, "ax"
.global memcpy
.type memcpy, %function
.p2align 4
memcpy:
    mov x3, x0
    cmp x2, #16
    b.lo 3f
    add x6, x1, x2          /* end of source */
    add x7, x0, x2          /* end of destination */
    subs x2, x2, #32
    b.lo 2f
1:  ldp x4, x5, [x1]
    ldp x8, x9, [x1, #16]
    add x1, x1, #32
    stp x4, x5, [x3]
    stp x8, x9, [x3, #16]
    add x3, x3, #32
    subs x2, x2, #32
    b.hs 1b
2:  /* x2 + 32 bytes (0..31) left, and at least 16 were copied or are left. */
    adds x2, x2, #16
    b.le 4f
    ldp x4, x5, [x1]
    stp x4, x5, [x3]
4:  ldp x4, x5, [x6, #-16]
    stp x4, x5, [x7, #-16]
    ret
3:  cbz x2, 5f
6:  ldrb w4, [x1], #1
    strb w4, [x3], #1
    subs x2, x2, #1
    b.ne 6b
5:  ret
.size memcpy, . - memcpy
