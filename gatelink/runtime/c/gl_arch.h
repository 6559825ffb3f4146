/*
 * gl_arch.h: the few x86 instructions the gatelink C runtime needs (i386 and x86-64), as
 * inline assembly, each with the memory-ordering reason it is correct.
 *
 * The ordering model is x86-TSO (Intel SDM vol. 3, 8.2): loads are not reordered with older
 * loads, stores are not reordered with older stores or loads, locked instructions are full
 * barriers. Instruction fetch is NOT covered by TSO: another core may still execute bytes it
 * fetched before our store until it serialises (cross-modifying code, SDM 8.1.3); that is what
 * the plans' sync steps and the retire sync are for, not these primitives.
 *
 * Every primitive takes the address as an integer or byte pointer and names the access size in
 * the instruction itself, so no C lvalue of a wider type is ever formed at an address that may
 * be unaligned (plans' stores are never split across a 64-byte line but need not be naturally
 * aligned; a locked access that stays within one cache line is atomic on every x86 since P6).
 */
#ifndef GL_ARCH_H
#define GL_ARCH_H

#include <stdint.h>

#if !defined(__i386__) && !defined(__x86_64__)
#error "gl_arch.h: the gatelink C runtime patches x86 code and runs on x86 (i386 or x86-64)"
#endif

/* The claim: compare-and-swap of a site's 32-bit state word. `lock cmpxchg` is a full
 * barrier, so no store of the plan (issued after a successful claim) can become visible
 * before the claim, and the claim cannot be satisfied from a stale value. Returns 1 when the
 * word held `old` and now holds `new`. */
static inline int gl_cas32(volatile uint32_t *word, uint32_t old, uint32_t new_value)
{
    uint32_t prev;
    __asm__ __volatile__("lock; cmpxchgl %2, %1"
                         : "=a"(prev), "+m"(*word)
                         : "r"(new_value), "0"(old)
                         : "memory", "cc");
    return prev == old;
}

/* A state read. A plain aligned 32-bit load is atomic; under TSO it is an acquire load (later
 * loads are not hoisted above it), and the "memory" clobber keeps the compiler from caching it
 * across the waiter's loop or hoisting later accesses above it. */
static inline uint32_t gl_load32(const volatile uint32_t *word)
{
    uint32_t v;
    __asm__ __volatile__("movl %1, %0" : "=r"(v) : "m"(*word) : "memory");
    return v;
}

/* DONE / UNTOUCHED / FOREIGN: a plain aligned store. x86 stores are release stores (never
 * reordered with older loads or stores), so a core that reads DONE also sees every byte of the
 * plan; the "memory" clobber keeps the compiler from sinking earlier stores below it. */
static inline void gl_store32_release(volatile uint32_t *word, uint32_t v)
{
    __asm__ __volatile__("movl %1, %0" : "=m"(*word) : "r"(v) : "memory");
}

/* A plan's store of 1, 2 or 4 bytes: `xchg` with a memory operand is implicitly locked, so the
 * store is one atomic access even when it is not naturally aligned (it never crosses a line),
 * and it is a full barrier: the plan's stores become visible in program order, after the
 * claim, and before the DONE store. (A plain `mov` would be atomic only when aligned.) */
static inline void gl_store1(uintptr_t addr, uint8_t v)
{
    __asm__ __volatile__("xchgb %b0, (%1)" : "+q"(v) : "r"(addr) : "memory");
}

static inline void gl_store2(uintptr_t addr, uint16_t v)
{
    __asm__ __volatile__("xchgw %w0, (%1)" : "+r"(v) : "r"(addr) : "memory");
}

static inline void gl_store4(uintptr_t addr, uint32_t v)
{
    __asm__ __volatile__("xchgl %0, (%1)" : "+r"(v) : "r"(addr) : "memory");
}

/* A plan's 8-byte store: `lock cmpxchg8b` (the only single-instruction atomic 8-byte store on
 * every i586+ CPU without SSE), retried until the compare succeeds: the first attempt loads the
 * current value into EDX:EAX (a failed cmpxchg8b writes nothing a fetch could see: it is a
 * locked read-modify-write of the same value), the second stores. Full barrier, like xchg. */
static inline void gl_store8(uintptr_t addr, uint32_t lo, uint32_t hi)
{
    uint32_t old_lo = 0, old_hi = 0;
    __asm__ __volatile__("1: lock; cmpxchg8b (%4)\n\t"
                         "jnz 1b"
                         : "+a"(old_lo), "+d"(old_hi)
                         : "b"(lo), "c"(hi), "S"(addr)
                         : "memory", "cc");
}

/* A waiter's spin hint: `pause` frees the sibling hyperthread and avoids the memory-order
 * machine clear when the awaited store arrives. Not a barrier; gl_load32 does the reading. */
static inline void gl_cpu_pause(void)
{
    __asm__ __volatile__("pause" ::: "memory");
}

/* A serialising instruction (cpuid): the executing core discards every instruction it fetched
 * before and fetches afresh. What a sync's IPI handler runs on every other core. */
static inline void gl_serialize(void)
{
    uint32_t a = 0, b, c = 0, d;
    __asm__ __volatile__("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d) : : "memory");
    (void)b;
    (void)d;
}

#endif /* GL_ARCH_H */
