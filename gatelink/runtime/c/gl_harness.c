/*
 * gl_harness.c: gatelink's tables on real silicon (docs/runtime-c.md, "The Linux harness").
 * Built by `gatelink harness` with gcc -m32; a 32-bit Linux process plays RDOS:
 *
 *  - the images gatelink scanned are mapped at the addresses they were tabled for: 32-bit code
 *    (flat, selector 0x23) and 16-bit code in an LDT code segment made with modify_ldt;
 *  - SIGSEGV (#GP, #NP), SIGILL (#UD) and SIGTRAP (INT3) handlers are the kernel's fault
 *    handler: gl_fault_begin with SIGUSR2 blocked (interrupts disabled), then SIGUSR2 unblocked
 *    and gl_fault_finish; a fault that is not the runtime's is a crash (a violation);
 *  - gates resolve to real far-callable thunks (one per gate: push gate; jmp common) whose
 *    common code checks the gate, the return address and selector, the flags, the registers
 *    and the stack the caller handed over;
 *  - sync steps use membarrier(PRIVATE_EXPEDITED_SYNC_CORE) where the kernel offers it, else
 *    the signal handshake; the retire sync is always the handshake (SIGUSR2 to every other
 *    worker, whose handler runs cpuid and acknowledges), because only a handshake that a
 *    faulting thread cannot acknowledge before it has read the site's state gives the retire
 *    sync its meaning (docs/runtime-c.md explains why membarrier alone does not).
 *
 * Nothing here knows a plan: every byte stored into a site comes from the table through
 * gltab.c. Usage: gl_harness MANIFEST [--calls N] [--threads N] [--mode lazy|upfront|mixed]
 * [--seed S] [--bench]. Output: "key value" lines (the Python side formats the report).
 * Exit: 0 no violation, 1 violations, 3 the kernel refused something the harness needs.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>
#include <asm/ldt.h>

#include "gl_arch.h"
#include "gltab.h"

#if !defined(__i386__)
#error "gl_harness.c is a 32-bit program (gcc -m32)"
#endif

#define MEMBARRIER_CMD_QUERY_ 0
#define MEMBARRIER_SYNC_CORE_ (1 << 5)
#define MEMBARRIER_REGISTER_SYNC_CORE_ (1 << 6)

#define USER_CS 0x23u
#define LDT_CODE16 1u /* LDT entry 1; entry 0 stays empty: selectors 4..7 are stubs' selectors */
#define SEL_CODE16 ((LDT_CODE16 << 3) | 4u | 3u)
#define THUNK_BASE 0x30000000u
#define THUNK_STRIDE 16u
#define MAX_GATES 65536u
#define FLAG_MASK 0xCD5u /* CF PF AF ZF SF OF DF: what a call must hand over unchanged */
#define SIGSYNC SIGUSR2
#define MAX_THREADS 64

enum { V_WRONG_TARGET, V_WRONG_RETURN, V_FLAGS, V_REGISTERS, V_STACK, V_MISSED, V_DOUBLE, V_CRASH, V_COUNT };
static const char *const vnames[V_COUNT] = {"wrong_target", "wrong_return", "flags", "registers",
                                            "stack", "missed_call", "double_call", "crash"};

/* ---- one site as the harness calls it (from the manifest, computed by gatelink) ----------- */
typedef struct hsite {
    uint32_t bits, index, code, gate, ret_off, pushes, far; /* far: 1 far form, 0 near form */
    char shape[4];
    gl_runtime *rt;
    volatile uint32_t waited; /* faults that waited for another thread's plan, this round */
} hsite;

/* ---- a worker; the first fields are read and written by the assembly below ---------------- */
typedef struct thr {
    uint32_t pad0;        /* 0 */
    uint32_t can[6];      /* 4: eax edx ebx esi edi ebp handed to the call */
    uint32_t esp0;        /* 28: esp right before the call into the site's block */
    uint32_t flags_in;    /* 32 */
    uint32_t entry;       /* 36: near entry of a 32-bit block */
    uint32_t flags_out;   /* 40 */
    uint32_t out[6];      /* 44: eax edx ebx esi edi ebp after the call */
    uint32_t esp_out;     /* 68 */
    uint32_t ecx_out;     /* 72 */
    uint32_t far_off;     /* 76: far entry of a 16-bit block */
    uint16_t far_sel;     /* 80 */
    uint16_t pad1;
    /* expectations of the target */
    const hsite *site;
    uint32_t hits, seen_gate, seen_eip, seen_cs, seen_flags, seen_esp, bad_regs, seen_far;
    int in_call;
    sigjmp_buf jb;
    /* identity, sync acknowledgement, statistics */
    int id;
    pid_t tid;
    volatile uint32_t ack;
    volatile uint32_t progress; /* lockstep rounds: index of the site this worker is at */
    uint64_t calls, patched, waited, defaults;
    uint64_t by_signal[3]; /* faults the runtime handled: SIGSEGV (#GP), SIGILL (#UD), SIGTRAP (INT3) */
    uint64_t v[V_COUNT];
    uint32_t rng;
} thr;

typedef char check_layout[(__builtin_offsetof(thr, esp0) == 28 && __builtin_offsetof(thr, flags_in) == 32 &&
                           __builtin_offsetof(thr, entry) == 36 && __builtin_offsetof(thr, out) == 44 &&
                           __builtin_offsetof(thr, esp_out) == 68 && __builtin_offsetof(thr, far_off) == 76 &&
                           __builtin_offsetof(thr, far_sel) == 80) ? 1 : -1];

/* The frame the target's common code hands to C: pushal, pushfl, then what the thunk and the
 * call pushed. */
typedef struct frame {
    uint32_t edi, esi, ebp, esp_, ebx, edx, ecx, eax;
    uint32_t eflags;
    uint32_t gate;
    uint32_t ret_eip;
    uint32_t ret_cs; /* far calls only */
} frame;

void gl_h_call32(thr *t);
void gl_h_call16(thr *t);
void gl_h_far_common(void);
void gl_h_near_common(void);
void gl_h_bench_far_target(void);
void gl_h_bench_near_target(void);
void gl_h_target(frame *f, uint32_t far);

/* Call t->entry with the registers and flags of t (esp saved in t->esp0 for the check), then
 * store what came back; `call` is the one instruction the 32-bit and 16-bit callers differ in. */
#define GL_H_CALLER(name, call)                                                                    \
    ".globl " name "\n" name ":\n"                                                                 \
    "  pushl %ebp\n  pushl %ebx\n  pushl %esi\n  pushl %edi\n"                                     \
    "  movl 20(%esp), %ecx\n"                                                                      \
    "  movl 4(%ecx), %eax\n  movl 8(%ecx), %edx\n  movl 12(%ecx), %ebx\n"                          \
    "  movl 16(%ecx), %esi\n  movl 20(%ecx), %edi\n  movl 24(%ecx), %ebp\n"                        \
    "  movl %esp, 28(%ecx)\n"                                                                      \
    "  pushl 32(%ecx)\n  popfl\n"                                                                  \
    "  " call "\n"                                                                                 \
    "  pushfl\n  popl 40(%ecx)\n"                                                                  \
    "  movl %eax, 44(%ecx)\n  movl %edx, 48(%ecx)\n  movl %ebx, 52(%ecx)\n"                        \
    "  movl %esi, 56(%ecx)\n  movl %edi, 60(%ecx)\n  movl %ebp, 64(%ecx)\n"                        \
    "  movl %esp, 68(%ecx)\n  movl %ecx, 72(%ecx)\n"                                               \
    "  cld\n"                                                                                      \
    "  popl %edi\n  popl %esi\n  popl %ebx\n  popl %ebp\n"                                         \
    "  ret\n"

/* The targets' common code: [esp] gate, then the return eip (and cs for a far call); flags
 * saved before anything else; gl_h_target(frame, far) on a 16-byte aligned stack. */
#define GL_H_COMMON(name, far, ret)                                                                \
    ".globl " name "\n" name ":\n"                                                                 \
    "  pushfl\n  pushal\n"                                                                         \
    "  movl %esp, %ebx\n  andl $-16, %esp\n  subl $8, %esp\n"                                      \
    "  pushl $" far "\n  pushl %ebx\n  cld\n  call gl_h_target\n"                                  \
    "  movl %ebx, %esp\n  popal\n  popfl\n"                                                        \
    "  leal 4(%esp), %esp\n"                                                                       \
    "  " ret "\n"

__asm__(".text\n"
        GL_H_CALLER("gl_h_call32", "call *36(%ecx)")
        GL_H_CALLER("gl_h_call16", "lcall *76(%ecx)")
        GL_H_COMMON("gl_h_far_common", "1", "lret")
        GL_H_COMMON("gl_h_near_common", "0", "ret")
        ".globl gl_h_bench_far_target\n"
        "gl_h_bench_far_target:\n"
        "  lret\n"
        ".globl gl_h_bench_near_target\n"
        "gl_h_bench_near_target:\n"
        "  ret\n");

/* ---- globals ------------------------------------------------------------------------------- */
static hsite *sites;
static uint32_t nsites;
static gl_table tab[2];         /* 0: 32-bit image, 1: 16-bit image */
static gl_runtime rt[2];
static gl_place place[2];
static uint32_t *states[2];
static uint8_t *img_map[2], *img_orig[2];
static size_t img_size[2];
static uint32_t img_base[2];    /* mapping address */
static int have_img[2];
static thr *workers[MAX_THREADS];
static int nworkers;
static __thread thr *self;
static int sync_membarrier;     /* 1: membarrier SYNC_CORE for sync steps */
static int retire_membarrier;   /* --retire-membarrier: the unsound variant (a demonstration) */
static volatile uint32_t sync_gen;
static volatile uint64_t n_sync_step, n_sync_retire, n_handshakes;
static int bench_mode;          /* targets are the minimal bench targets */
static volatile int bench_single; /* bench: no other worker to sync with */

#define DETAIL_MAX 24
static char details[DETAIL_MAX][200];
static volatile uint32_t ndetails;

static void die3(const char *what)
{
    fprintf(stderr, "gl_harness: %s: %s\n", what, strerror(errno));
    exit(3);
}

static void detail(const char *fmt, uint32_t a, uint32_t b, uint32_t c, uint32_t d)
{
    uint32_t k = __sync_fetch_and_add(&ndetails, 1);
    if (k < DETAIL_MAX)
        snprintf(details[k], sizeof details[k], fmt, a, b, c, d);
}

static void violation(thr *t, int kind)
{
    t->v[kind]++;
}

static uint32_t xr(uint32_t *s)
{
    uint32_t x = *s;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x ? x : 0x9E3779B9u;
}

/* ---- the target: what every gate's thunk reaches ------------------------------------------ */
void gl_h_target(frame *f, uint32_t far)
{
    thr *t = self;
    const hsite *s = t->site;
    uint32_t expect_esp;
    t->hits++;
    if (t->hits > 1)
        return; /* a second call in one site run: counted after the return */
    t->seen_gate = f->gate;
    t->seen_eip = f->ret_eip;
    t->seen_cs = far ? f->ret_cs & 0xFFFF : 0;
    t->seen_far = far;
    t->seen_flags = f->eflags;
    t->seen_esp = (uint32_t)(uintptr_t)&f->gate;
    t->bad_regs = f->eax != t->can[0] || f->edx != t->can[1] || f->ebx != t->can[2] || f->esi != t->can[3] ||
                  f->edi != t->can[4] || f->ebp != t->can[5] || f->ecx != (uint32_t)(uintptr_t)t;
    if (!s)
        return;
    expect_esp = t->esp0 - (s->bits == 16 ? 8 : 4) - s->pushes - (far ? 8 : 4) - 4;
    if (t->seen_esp != expect_esp)
        t->bad_regs |= 2;
}

static uint32_t site_cs(const hsite *s) { return s->bits == 16 ? SEL_CODE16 : USER_CS; }

/* One call of one site, checked. */
static void call_site(thr *t, const hsite *s)
{
    uint32_t k, fl;
    for (k = 0; k < 6; k++)
        t->can[k] = xr(&t->rng);
    fl = xr(&t->rng) & (0x1u | 0x4u | 0x10u | 0x40u | 0x80u | 0x800u);
    t->flags_in = fl | 0x202u; /* reserved bit 1, IF; DF, TF, AC clear */
    t->site = s;
    t->hits = 0;
    t->in_call = 1;
    if (sigsetjmp(t->jb, 0)) {
        /* a crash inside the call: the handler recorded it; unblock what it left blocked */
        sigset_t m;
        sigemptyset(&m);
        sigaddset(&m, SIGSEGV);
        sigaddset(&m, SIGILL);
        sigaddset(&m, SIGTRAP);
        sigaddset(&m, SIGSYNC);
        pthread_sigmask(SIG_UNBLOCK, &m, NULL);
        t->in_call = 0;
        t->calls++;
        return;
    }
    if (s->bits == 16) {
        t->far_off = s->code;
        t->far_sel = (uint16_t)SEL_CODE16;
        gl_h_call16(t);
    } else {
        t->entry = s->code;
        gl_h_call32(t);
    }
    t->in_call = 0;
    t->calls++;
    if (t->hits == 0) {
        violation(t, V_MISSED);
        detail("missed call: site %u (code %#x): no target reached", s->index, s->code, 0, 0);
        return;
    }
    if (t->hits > 1) {
        violation(t, V_DOUBLE);
        detail("double call: site %u (code %#x) reached its target %u times", s->index, s->code, t->hits, 0);
    }
    if (t->seen_gate != s->gate) {
        violation(t, V_WRONG_TARGET);
        detail("wrong target: site %u (code %#x) called gate %u, expected %u", s->index, s->code, t->seen_gate,
               s->gate);
    }
    if (t->seen_eip != s->code + s->ret_off || t->seen_far != s->far || (s->far && t->seen_cs != site_cs(s))) {
        violation(t, V_WRONG_RETURN);
        detail("wrong return: site %u returns to %#x cs %#x, expected %#x", s->index, t->seen_eip, t->seen_cs,
               s->code + s->ret_off);
    }
    if ((t->seen_flags & FLAG_MASK) != (t->flags_in & FLAG_MASK) ||
        (t->flags_out & FLAG_MASK) != (t->flags_in & FLAG_MASK)) {
        violation(t, V_FLAGS);
        detail("flags: site %u handed %#x to its target, returned %#x, caller set %#x", s->index, t->seen_flags,
               t->flags_out, t->flags_in);
    }
    if ((t->bad_regs & 1) || t->ecx_out != (uint32_t)(uintptr_t)t || t->out[0] != t->can[0] ||
        t->out[1] != t->can[1] || t->out[2] != t->can[2] || t->out[3] != t->can[3] || t->out[4] != t->can[4] ||
        t->out[5] != t->can[5]) {
        violation(t, V_REGISTERS);
        detail("registers: site %u (code %#x) changed a register", s->index, s->code, 0, 0);
    }
    if ((t->bad_regs & 2) || t->esp_out != t->esp0) {
        violation(t, V_STACK);
        detail("stack: site %u target esp %#x, caller esp %#x after %#x", s->index, t->seen_esp, t->esp0,
               t->esp_out);
    }
}

/* ---- syncs ---------------------------------------------------------------------------------- */
static void on_sync(int sig)
{
    uint32_t g;
    (void)sig;
    g = gl_load32(&sync_gen);
    gl_serialize(); /* this core fetches afresh from here on */
    if (self)
        gl_store32_release(&self->ack, g);
}

/* Send SIGSYNC to every other worker and wait until each has serialised and acknowledged. */
static void handshake(void)
{
    uint32_t gen = __sync_add_and_fetch(&sync_gen, 1);
    int k;
    pid_t pid = getpid();
    __sync_fetch_and_add(&n_handshakes, 1);
    for (k = 0; k < nworkers; k++)
        if (workers[k] != self)
            syscall(SYS_tgkill, pid, workers[k]->tid, SIGSYNC);
    for (k = 0; k < nworkers; k++) {
        unsigned spins = 0;
        if (workers[k] == self)
            continue;
        while ((int32_t)(gl_load32(&workers[k]->ack) - gen) < 0) {
            gl_cpu_pause();
            if (++spins % 64 == 0)
                sched_yield();
        }
    }
}

static void os_sync(void *ctx, int why)
{
    (void)ctx;
    if (bench_single)
        return; /* one thread: nothing to serialise */
    if (why == GL_SYNC_STEP) {
        __sync_fetch_and_add(&n_sync_step, 1);
        if (sync_membarrier) {
            syscall(SYS_membarrier, MEMBARRIER_SYNC_CORE_, 0, 0);
            return;
        }
    } else {
        __sync_fetch_and_add(&n_sync_retire, 1);
        if (why == GL_SYNC_RETIRE && retire_membarrier && sync_membarrier) {
            syscall(SYS_membarrier, MEMBARRIER_SYNC_CORE_, 0, 0);
            return;
        }
    }
    handshake();
}

static void os_pause(void *ctx)
{
    (void)ctx;
    gl_cpu_pause();
    sched_yield(); /* the owner may be preempted on a loaded machine */
}

static int os_resolve(void *ctx, const gl_table *t, uint32_t site, uint32_t kind, uint32_t gate, int fallback,
                      gl_target *out)
{
    (void)ctx;
    (void)t;
    (void)site;
    (void)kind;
    if (gate >= MAX_GATES)
        return 0;
    if (bench_mode) {
        out->form = fallback ? GL_FORM_NEAR : GL_FORM_FAR;
        out->selector = USER_CS;
        out->offset = (uint32_t)(uintptr_t)gl_h_bench_far_target;
        out->target = (uint32_t)(uintptr_t)gl_h_bench_near_target;
        return 1;
    }
    /* every gate has its own thunk, so the target knows which gate called */
    out->form = fallback ? GL_FORM_NEAR : GL_FORM_FAR;
    out->selector = USER_CS;
    out->offset = THUNK_BASE + THUNK_STRIDE * gate;
    out->target = THUNK_BASE + MAX_GATES * THUNK_STRIDE + THUNK_STRIDE * gate;
    return 1;
}

/* ---- the fault handler ------------------------------------------------------------------------ */
static volatile uint64_t n_outside;

static void on_trap(int sig, siginfo_t *si, void *ucv)
{
    ucontext_t *uc = (ucontext_t *)ucv;
    thr *t = self;
    uint32_t eip = (uint32_t)uc->uc_mcontext.gregs[REG_EIP];
    uint32_t cs = (uint32_t)uc->uc_mcontext.gregs[REG_CS] & 0xFFFF;
    int trap = sig == SIGTRAP ? GL_TRAP_INT3 : GL_TRAP_FAULT;
    int which = cs == SEL_CODE16 ? 1 : cs == USER_CS ? 0 : -1;
    int act = GL_ACT_DEFAULT;
    gl_fault_ctx f;
    uint64_t resume = 0;
    sigset_t m;
    f.site = GL_NO_SITE;
    if (which >= 0 && have_img[which])
        act = gl_fault_begin(&rt[which], eip, trap, 0, &f);
    /* the state is read: "enable interrupts" so that syncs of other threads complete */
    sigemptyset(&m);
    sigaddset(&m, SIGSYNC);
    pthread_sigmask(SIG_UNBLOCK, &m, NULL);
    if (act == GL_ACT_CONTINUE)
        act = gl_fault_finish(&rt[which], &f, &resume);
    if (act == GL_ACT_PATCHED || act == GL_ACT_WAITED) {
        uc->uc_mcontext.gregs[REG_EIP] = (greg_t)(uint32_t)resume;
        if (t) {
            t->by_signal[sig == SIGSEGV ? 0 : sig == SIGILL ? 1 : 2]++;
            if (act == GL_ACT_PATCHED)
                t->patched++;
            else {
                t->waited++;
                if (t->site)
                    ((hsite *)t->site)->waited++;
            }
        }
        return;
    }
    /* not the runtime's: the default handler. Every fault in this process is a crash. */
    if (t && t->in_call) {
        t->defaults++;
        violation(t, V_CRASH);
        detail("crash: signal %u at %#x:%#x, site index %d", (uint32_t)sig, cs, eip,
               f.site == GL_NO_SITE ? 0xFFFFFFFFu : f.site);
        siglongjmp(t->jb, 1);
    }
    {
        char msg[160];
        int n = snprintf(msg, sizeof msg, "gl_harness: fatal signal %d at %#x:%#x (addr %p) outside any call\n", sig,
                         cs, eip, si ? si->si_addr : 0);
        if (write(2, msg, (size_t)n) < 0) { /* nothing more to do */ }
        _exit(70);
    }
}

/* ---- barrier (spinning: a parked worker keeps acknowledging syncs) ------------------------- */
static volatile uint32_t bar_count, bar_gen;
static int bar_parties;

static void barrier(void)
{
    uint32_t g = gl_load32(&bar_gen);
    if (__sync_add_and_fetch(&bar_count, 1) == (uint32_t)bar_parties) {
        bar_count = 0;
        __sync_fetch_and_add(&bar_gen, 1);
        return;
    }
    while (gl_load32(&bar_gen) == g)
        sched_yield();
}

/* ---- rounds ---------------------------------------------------------------------------------- */
static uint32_t *order_shared;
static volatile int round_shared, stop_all;

static void *worker_main(void *arg)
{
    thr *t = (thr *)arg;
    uint32_t *order = malloc(sizeof(uint32_t) * (nsites ? nsites : 1));
    self = t;
    t->tid = (pid_t)syscall(SYS_gettid);
    barrier(); /* registered */
    for (;;) {
        uint32_t k;
        barrier(); /* the controller re-armed the sites */
        if (stop_all)
            break;
        gl_serialize(); /* cross-modifying code: fetch the re-armed bytes afresh */
        if (round_shared) {
            for (k = 0; k < nsites; k++)
                order[k] = order_shared[k];
        } else {
            for (k = 0; k < nsites; k++)
                order[k] = k;
            for (k = nsites; k > 1; k--) {
                uint32_t j = xr(&t->rng) % k, x = order[k - 1];
                order[k - 1] = order[j];
                order[j] = x;
            }
        }
        for (k = 0; k < nsites; k++) {
            if (round_shared) {
                /* lockstep: every worker reaches site k together, then a random few hundred
                 * cycles of skew, so that first faults on one site race each other's plans */
                int w;
                uint32_t j, d = xr(&t->rng) % 256;
                gl_store32_release(&t->progress, k);
                for (w = 0; w < nworkers; w++) {
                    unsigned spins = 0;
                    while (workers[w] != t && gl_load32(&workers[w]->progress) < k) {
                        gl_cpu_pause();
                        if (++spins % 8192 == 0)
                            sched_yield(); /* the other worker is not running: let it */
                    }
                }
                for (j = 0; j < d; j++)
                    gl_cpu_pause();
            }
            call_site(t, &sites[order[k]]);
        }
        gl_store32_release(&t->progress, 0xFFFFFFFFu); /* done: nobody waits for this worker */
        barrier(); /* round done */
    }
    free(order);
    return NULL;
}

static void rearm_all(void)
{
    int w;
    for (w = 0; w < 2; w++) {
        uint32_t i;
        if (!have_img[w])
            continue;
        memcpy(img_map[w], img_orig[w], img_size[w]);
        for (i = 0; i < tab[w].site_count; i++)
            if (states[w][i] != GL_FOREIGN)
                states[w][i] = GL_UNTOUCHED;
    }
}

/* Patch one site up front (mixed mode): its final bytes while no worker runs. */
static void upfront_site(const hsite *s)
{
    gl_patch p;
    uint32_t j;
    if (gl_bind(s->rt, s->index, &p) != GL_OK)
        return;
    for (j = 0; j < p.length; j++)
        ((volatile uint8_t *)p.memory)[j] = p.final[j];
    s->rt->state[s->index] = GL_DONE;
}

/* ---- setup ----------------------------------------------------------------------------------- */
static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    uint8_t *b;
    long len;
    if (!f)
        die3(path);
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    b = malloc((size_t)len + 1);
    if (!b || fread(b, 1, (size_t)len, f) != (size_t)len)
        die3(path);
    fclose(f);
    *n = (size_t)len;
    return b;
}

static void *map_fixed(uint32_t addr, size_t size, int prot)
{
    void *p = mmap((void *)(uintptr_t)addr, size, prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p == MAP_FAILED || (uint32_t)(uintptr_t)p != addr) {
        fprintf(stderr, "gl_harness: cannot map %zu bytes at %#x: %s\n", size, addr, strerror(errno));
        exit(3);
    }
    return p;
}

static void load_image(int w, const char *img_path, const char *tab_path, uint32_t base)
{
    uint8_t *tb, *ib;
    size_t tn, in;
    size_t msize;
    int rc;
    const uint8_t *regions[1];
    gl_os os;
    ib = slurp(img_path, &in);
    tb = slurp(tab_path, &tn);
    rc = gl_table_open(&tab[w], tb, tn);
    if (rc != GL_OK) {
        fprintf(stderr, "gl_harness: %s: table refused: %s\n", tab_path, gl_strerror(rc));
        exit(3);
    }
    if (tab[w].region_count != 1) {
        fprintf(stderr, "gl_harness: %s: one region expected\n", tab_path);
        exit(3);
    }
    msize = (in + 4095) & ~(size_t)4095;
    img_map[w] = map_fixed(base, msize, PROT_READ | PROT_WRITE | PROT_EXEC);
    memcpy(img_map[w], ib, in);
    img_orig[w] = ib;
    img_size[w] = in;
    img_base[w] = base;
    regions[0] = img_map[w] + gl_region_file_offset(&tab[w], 0);
    if (gl_table_identity(&tab[w], in, regions) != GL_OK) {
        fprintf(stderr, "gl_harness: %s: not the table's image\n", img_path);
        exit(3);
    }
    place[w].memory = (uintptr_t)regions[0];
    place[w].code = gl_region_address(&tab[w], 0); /* what the table was built for */
    states[w] = calloc(tab[w].site_count + 1, sizeof(uint32_t));
    memset(&os, 0, sizeof os);
    os.resolve = os_resolve;
    os.sync = os_sync;
    os.pause = os_pause;
    rc = gl_runtime_init(&rt[w], &tab[w], &place[w], states[w], &os, GL_INIT_MEMORY);
    if (rc != GL_OK) {
        fprintf(stderr, "gl_harness: runtime init: %s\n", gl_strerror(rc));
        exit(3);
    }
    have_img[w] = 1;
}

static void make_ldt16(uint32_t base)
{
    struct user_desc d;
    memset(&d, 0, sizeof d);
    d.entry_number = LDT_CODE16;
    d.base_addr = base;
    d.limit = 0xFFFF;
    d.seg_32bit = 0;
    d.contents = MODIFY_LDT_CONTENTS_CODE;
    d.read_exec_only = 0;
    d.limit_in_pages = 0;
    d.seg_not_present = 0;
    d.useable = 1;
    if (syscall(SYS_modify_ldt, 0x11, &d, sizeof d) != 0)
        die3("modify_ldt refused (CONFIG_MODIFY_LDT_SYSCALL, CONFIG_X86_16BIT?)");
}

static void make_thunks(void)
{
    uint8_t *p = map_fixed(THUNK_BASE, 2 * MAX_GATES * THUNK_STRIDE, PROT_READ | PROT_WRITE | PROT_EXEC);
    uint32_t g, k;
    for (k = 0; k < 2; k++) {
        uint32_t common = k ? (uint32_t)(uintptr_t)gl_h_near_common : (uint32_t)(uintptr_t)gl_h_far_common;
        for (g = 0; g < MAX_GATES; g++) {
            uint8_t *q = p + (k * MAX_GATES + g) * THUNK_STRIDE;
            uint32_t at = THUNK_BASE + (k * MAX_GATES + g) * THUNK_STRIDE;
            uint32_t rel = common - (at + 10);
            q[0] = 0x68; /* push imm32: the gate */
            memcpy(q + 1, &g, 4);
            q[5] = 0xE9; /* jmp rel32 */
            memcpy(q + 6, &rel, 4);
            memset(q + 10, 0xCC, THUNK_STRIDE - 10);
        }
    }
}

static void install_handlers(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGSYNC); /* "interrupts disabled" until the state is read */
    if (sigaction(SIGSEGV, &sa, NULL) || sigaction(SIGILL, &sa, NULL) || sigaction(SIGTRAP, &sa, NULL))
        die3("sigaction");
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sync;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSYNC, &sa, NULL))
        die3("sigaction");
}

static void setup_membarrier(int want)
{
    long q = syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY_, 0, 0);
    sync_membarrier = 0;
    if (!want || q < 0 || !(q & MEMBARRIER_SYNC_CORE_) || !(q & MEMBARRIER_REGISTER_SYNC_CORE_))
        return;
    if (syscall(SYS_membarrier, MEMBARRIER_REGISTER_SYNC_CORE_, 0, 0) == 0)
        sync_membarrier = 1;
}

static void read_manifest(const char *path)
{
    FILE *f = fopen(path, "r");
    char kw[16];
    uint32_t cap = 0;
    if (!f)
        die3(path);
    while (fscanf(f, "%15s", kw) == 1) {
        if (!strcmp(kw, "image")) {
            unsigned w, base;
            char ip[512], tp[512];
            if (fscanf(f, "%u %511s %511s %x", &w, ip, tp, &base) != 4 || w > 1)
                die3("manifest");
            if (w == 1)
                make_ldt16(base);
            load_image((int)w, ip, tp, base);
        } else if (!strcmp(kw, "site")) {
            hsite s;
            memset(&s, 0, sizeof s);
            if (fscanf(f, "%u %u %x %u %u %u %u %3s", &s.bits, &s.index, &s.code, &s.gate, &s.ret_off, &s.pushes,
                       &s.far, s.shape) != 8)
                die3("manifest site");
            s.rt = &rt[s.bits == 16 ? 1 : 0];
            if (!have_img[s.bits == 16 ? 1 : 0] || s.index >= s.rt->table->site_count)
                die3("manifest site index");
            if (nsites == cap) {
                cap = cap ? 2 * cap : 256;
                sites = realloc(sites, cap * sizeof *sites);
            }
            sites[nsites++] = s;
        } else {
            die3("manifest keyword");
        }
    }
    fclose(f);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- figures (benchmarks/silicon.py) ------------------------------------------------------- */
static volatile int bench_ud_hits;
static void on_bench_ud(int sig, siginfo_t *si, void *ucv)
{
    ucontext_t *uc = (ucontext_t *)ucv;
    (void)sig;
    (void)si;
    uc->uc_mcontext.gregs[REG_EIP] += 2; /* step over ud2 */
    bench_ud_hits++;
}

/* A bare #GP round trip: the stub's own trap (far call to selector 2), stepped over. */
static void on_bench_skip_stub(int sig, siginfo_t *si, void *ucv)
{
    ucontext_t *uc = (ucontext_t *)ucv;
    (void)sig;
    (void)si;
    uc->uc_mcontext.gregs[REG_EIP] += 9;
}

/* An unpatched stub emulated on every fault: push cs:eip past the stub, enter the target. */
static uint32_t emul_stub_at, emul_stub_len;
static void on_bench_emulate(int sig, siginfo_t *si, void *ucv)
{
    ucontext_t *uc = (ucontext_t *)ucv;
    uint32_t eip = (uint32_t)uc->uc_mcontext.gregs[REG_EIP];
    uint32_t *sp;
    (void)sig;
    (void)si;
    if (eip != emul_stub_at) {
        char msg[96];
        uint32_t *q = (uint32_t *)(uintptr_t)(uint32_t)uc->uc_mcontext.gregs[REG_ESP];
        int n = snprintf(msg, sizeof msg, "gl_harness: bench: unexpected fault at %#x esp %p: %#x %#x\n", eip,
                         (void *)q, q[0], q[1]);
        if (write(2, msg, (size_t)n) < 0) { /* nothing more to do */ }
        _exit(71);
    }
    /* the kernel restores esp from sigcontext.sp (gregs[REG_ESP]); REG_UESP is only a copy */
    sp = (uint32_t *)(uintptr_t)((uint32_t)uc->uc_mcontext.gregs[REG_ESP] - 8);
    sp[0] = eip + emul_stub_len;
    sp[1] = USER_CS;
    uc->uc_mcontext.gregs[REG_ESP] = (greg_t)(uint32_t)(uintptr_t)sp;
    uc->uc_mcontext.gregs[REG_EIP] = (greg_t)(uint32_t)(uintptr_t)gl_h_bench_far_target;
}

typedef void (*vfn)(void);

static double time_calls(uint32_t entry, long n)
{
    double t0 = now();
    long i;
    vfn f = (vfn)(uintptr_t)entry;
    for (i = 0; i < n; i++)
        f();
    return (now() - t0) / (double)n;
}

static volatile vfn ptr_table[16];
static double time_indirect(long n)
{
    double t0 = now();
    long i;
    for (i = 0; i < n; i++)
        ptr_table[i & 15]();
    return (now() - t0) / (double)n;
}

static void *idle_worker(void *arg)
{
    thr *t = (thr *)arg;
    self = t;
    t->tid = (pid_t)syscall(SYS_gettid);
    barrier();
    while (!stop_all)
        gl_cpu_pause();
    return NULL;
}

static int run_bench(long reps)
{
    uint8_t *page = map_fixed(0x2f000000u, 4096, PROT_READ | PROT_WRITE | PROT_EXEC);
    struct sigaction sa;
    uint32_t i, k, nsync = 0, nnosync = 0;
    double best, t0, x;
    uint32_t far_off = (uint32_t)(uintptr_t)gl_h_bench_far_target;
    uint32_t hand, ud, emul, gp;
    long n = 2000000;
    thr *me = calloc(1, sizeof *me), *other = calloc(1, sizeof *other);
    pthread_t th;
    /* hand-written blocks: a direct far call (the patched form of shape A, 3E 67 9A off sel),
     * a bare ud2, and an unpatched stub that is emulated on each fault */
    hand = 0x2f000000u;
    page[0] = 0x3E; page[1] = 0x67; page[2] = 0x9A;
    memcpy(page + 3, &far_off, 4);
    page[7] = (uint8_t)USER_CS; page[8] = 0; page[9] = 0xC3;
    ud = 0x2f000040u;
    page[0x40] = 0x0F; page[0x41] = 0x0B; page[0x42] = 0xC3;
    emul = 0x2f000080u;
    page[0x80] = 0x3E; page[0x81] = 0x67; page[0x82] = 0x9A;
    page[0x83] = 5; page[0x84] = 0; page[0x85] = 0; page[0x86] = 0; page[0x87] = 2; page[0x88] = 0; page[0x89] = 0xC3;
    gp = 0x2f0000c0u; /* the same stub, stepped over by its handler: a bare #GP round trip */
    memcpy(page + 0xc0, page + 0x80, 10);
    emul_stub_at = emul;
    emul_stub_len = 9;
    for (k = 0; k < 16; k++)
        ptr_table[k] = (vfn)gl_h_bench_near_target;
    self = me;
    me->tid = (pid_t)syscall(SYS_gettid);
    workers[0] = me;
    nworkers = 1;
    bench_single = 1;
    /* steady state: patch every site up front, then call one far-form site of shape A */
    rearm_all();
    for (i = 0; i < nsites; i++)
        upfront_site(&sites[i]);
    {
        const hsite *a = NULL;
        for (i = 0; i < nsites && !a; i++)
            if (!strcmp(sites[i].shape, "A") && sites[i].bits == 32 && sites[i].code % 64 == 0)
                a = &sites[i];
        for (i = 0; i < nsites && !a; i++)
            if (sites[i].bits == 32)
                a = &sites[i];
        gl_serialize();
        best = 1e9;
        for (k = 0; k < (uint32_t)reps; k++) {
            x = time_calls(a->code, n);
            best = x < best ? x : best;
        }
        printf("patched_call_ns %.3f\n", best * 1e9);
        fflush(stdout);
        best = 1e9;
        for (k = 0; k < (uint32_t)reps; k++) {
            x = time_calls(hand, n);
            best = x < best ? x : best;
        }
        printf("direct_far_call_ns %.3f\n", best * 1e9);
        best = 1e9;
        for (k = 0; k < (uint32_t)reps; k++) {
            x = time_indirect(n);
            best = x < best ? x : best;
        }
        printf("indirect_call_ns %.3f\n", best * 1e9);
    }
    /* a bare signal round trip: ud2, SIGILL, step over it */
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_SIGINFO;
    sa.sa_sigaction = on_bench_ud;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGSYNC);
    sigaction(SIGILL, &sa, NULL);
    best = 1e9;
    for (k = 0; k < (uint32_t)reps; k++) {
        x = time_calls(ud, n / 20);
        best = x < best ? x : best;
    }
    printf("signal_round_trip_ud_us %.4f\n", best * 1e6);
    sa.sa_sigaction = on_bench_skip_stub;
    sigaction(SIGSEGV, &sa, NULL);
    best = 1e9;
    for (k = 0; k < (uint32_t)reps; k++) {
        x = time_calls(gp, n / 20);
        best = x < best ? x : best;
    }
    printf("signal_round_trip_gp_us %.4f\n", best * 1e6);
    {
        /* the emulation pushes onto the interrupted stack, where the kernel would otherwise
         * have put the signal frame: run this handler on its own stack, as a kernel does */
        stack_t ss;
        ss.ss_sp = malloc(65536);
        ss.ss_size = 65536;
        ss.ss_flags = 0;
        sigaltstack(&ss, NULL);
    }
    sa.sa_sigaction = on_bench_emulate;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, NULL);
    best = 1e9;
    for (k = 0; k < (uint32_t)reps; k++) {
        x = time_calls(emul, n / 20);
        best = x < best ? x : best;
    }
    printf("unpatched_stub_call_us %.4f\n", best * 1e6);
    install_handlers();
    /* lazy first-fault patches: fresh sites, each called once (one fault, one plan each) */
    for (int pass = 0; pass < 2; pass++) {
        double tot_ns = 0, tot_s = 0;
        uint64_t cnt_ns = 0, cnt_s = 0;
        if (pass == 1) {
            /* a second worker that only spins: every retire sync is a real handshake */
            other->id = 1;
            bar_parties = 2;
            pthread_create(&th, NULL, idle_worker, other);
            workers[1] = other;
            nworkers = 2;
            barrier();
            bench_single = 0;
        }
        for (k = 0; k < (uint32_t)reps; k++) {
            rearm_all();
            gl_serialize();
            for (i = 0; i < nsites; i++) {
                const hsite *s = &sites[i];
                gl_site info;
                int needs;
                if (s->bits != 32)
                    continue;
                gl_site_get(s->rt->table, s->index, &info);
                needs = (info.flags & GL_FLAG_NEEDS_SYNC) != 0;
                t0 = now();
                ((vfn)(uintptr_t)s->code)();
                x = now() - t0;
                if (needs) {
                    tot_s += x;
                    cnt_s++;
                } else {
                    tot_ns += x;
                    cnt_ns++;
                }
            }
        }
        nnosync = (uint32_t)cnt_ns;
        nsync = (uint32_t)cnt_s;
        printf("lazy_patch%s_nosync_us %.4f\nlazy_patch%s_sync_us %.4f\n", pass ? "_2threads" : "",
               cnt_ns ? tot_ns / (double)cnt_ns * 1e6 : 0.0, pass ? "_2threads" : "",
               cnt_s ? tot_s / (double)cnt_s * 1e6 : 0.0);
    }
    printf("lazy_sites_nosync %u\nlazy_sites_sync %u\n", nnosync / (uint32_t)reps, nsync / (uint32_t)reps);
    printf("sync_membarrier %d\n", sync_membarrier);
    stop_all = 1;
    pthread_join(th, NULL);
    return 0;
}

/* ---- main ------------------------------------------------------------------------------------ */
int main(int argc, char **argv)
{
    long calls = 100000;
    int threads = 2, mode = 0, k, w, bench = 0, use_membarrier = 1;
    uint32_t seed = 1;
    uint64_t rounds = 0, total_calls = 0, upfront = 0, races = 0, waits_total = 0, lockstep = 0;
    pthread_t th[MAX_THREADS];
    double t0;
    const char *manifest = NULL, *progress = NULL;
    double last_progress;
    for (k = 1; k < argc; k++) {
        if (!strcmp(argv[k], "--calls") && k + 1 < argc)
            calls = atol(argv[++k]);
        else if (!strcmp(argv[k], "--threads") && k + 1 < argc)
            threads = atoi(argv[++k]);
        else if (!strcmp(argv[k], "--mode") && k + 1 < argc) {
            const char *m = argv[++k];
            mode = !strcmp(m, "upfront") ? 1 : !strcmp(m, "mixed") ? 2 : 0;
        } else if (!strcmp(argv[k], "--seed") && k + 1 < argc)
            seed = (uint32_t)strtoul(argv[++k], NULL, 0);
        else if (!strcmp(argv[k], "--bench"))
            bench = 1;
        else if (!strcmp(argv[k], "--no-membarrier"))
            use_membarrier = 0;
        else if (!strcmp(argv[k], "--retire-membarrier"))
            retire_membarrier = 1;
        else if (!strcmp(argv[k], "--progress") && k + 1 < argc)
            progress = argv[++k];
        else if (!manifest)
            manifest = argv[k];
        else {
            fprintf(stderr, "usage: gl_harness MANIFEST [--calls N] [--threads N] [--mode lazy|upfront|mixed] "
                            "[--seed S] [--bench] [--no-membarrier]\n");
            return 2;
        }
    }
    if (!manifest || threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "gl_harness: a manifest and 1..%d threads\n", MAX_THREADS);
        return 2;
    }
    bench_mode = bench;
    make_thunks();
    read_manifest(manifest);
    setup_membarrier(use_membarrier);
    install_handlers();
    if (bench)
        return run_bench(calls > 0 && calls < 100 ? calls : 5);
    order_shared = malloc(sizeof(uint32_t) * (nsites ? nsites : 1));
    nworkers = threads;
    bar_parties = threads + 1;
    for (w = 0; w < threads; w++) {
        workers[w] = calloc(1, sizeof(thr));
        workers[w]->id = w;
        workers[w]->rng = seed * 2654435761u + (uint32_t)w * 40503u + 1u;
    }
    for (w = 0; w < threads; w++)
        if (pthread_create(&th[w], NULL, worker_main, workers[w]))
            die3("pthread_create");
    barrier(); /* every worker registered its tid */
    t0 = now();
    last_progress = t0;
    {
        uint32_t crng = seed ^ 0xA5A5A5A5u;
        while (total_calls < (uint64_t)calls) {
            uint32_t i;
            rearm_all();
            if (mode == 1) {
                for (i = 0; i < 2; i++) {
                    gl_apply_result r;
                    if (have_img[i] && gl_apply(&rt[i], GL_APPLY_ALL, &r) == GL_OK)
                        upfront += r.patched;
                }
            } else if (mode == 2) {
                for (i = 0; i < nsites; i++)
                    if (xr(&crng) & 1) {
                        upfront_site(&sites[i]);
                        upfront++;
                    }
            }
            round_shared = (xr(&crng) >> 7 & 1) != 0;
            lockstep += round_shared != 0;
            for (i = 0; i < nsites; i++)
                order_shared[i] = i;
            for (i = nsites; i > 1; i--) {
                uint32_t j = xr(&crng) % i, x = order_shared[i - 1];
                order_shared[i - 1] = order_shared[j];
                order_shared[j] = x;
            }
            for (i = 0; i < nsites; i++)
                sites[i].waited = 0;
            for (w = 0; w < threads; w++)
                workers[w]->progress = 0;
            barrier(); /* go */
            barrier(); /* every worker finished the round */
            for (i = 0; i < nsites; i++)
                races += sites[i].waited != 0;
            rounds++;
            total_calls += (uint64_t)threads * nsites;
            if (progress && now() - last_progress >= 10.0) {
                /* a line every 10 s: a long run can be watched (tail -f) */
                FILE *pf = fopen(progress, "a");
                uint64_t nv = 0;
                int kk;
                for (w = 0; w < threads; w++)
                    for (kk = 0; kk < V_COUNT; kk++)
                        nv += workers[w]->v[kk];
                if (pf) {
                    fprintf(pf, "%.0f s: %llu of %ld calls, %llu rounds, %llu races, %llu violations\n",
                            now() - t0, (unsigned long long)total_calls, calls, (unsigned long long)rounds,
                            (unsigned long long)races, (unsigned long long)nv);
                    fclose(pf);
                }
                last_progress = now();
            }
        }
        stop_all = 1;
        barrier();
    }
    for (w = 0; w < threads; w++)
        pthread_join(th[w], NULL);
    {
        uint64_t v[V_COUNT] = {0}, patched = 0, defaults = 0, tot = 0, nv = 0, bysig[3] = {0, 0, 0};
        int kk;
        for (w = 0; w < threads; w++) {
            thr *t = workers[w];
            tot += t->calls;
            patched += t->patched;
            waits_total += t->waited;
            defaults += t->defaults;
            for (kk = 0; kk < 3; kk++)
                bysig[kk] += t->by_signal[kk];
            for (kk = 0; kk < V_COUNT; kk++)
                v[kk] += t->v[kk];
        }
        printf("calls %llu\nrounds %llu\nsites %u\nthreads %d\nmode %s\nseconds %.3f\n", (unsigned long long)tot,
               (unsigned long long)rounds, nsites, threads, mode == 1 ? "upfront" : mode == 2 ? "mixed" : "lazy",
               now() - t0);
        printf("patches %llu\nwaits %llu\nraces %llu\nupfront %llu\nlockstep_rounds %llu\n",
               (unsigned long long)patched, (unsigned long long)waits_total, (unsigned long long)races,
               (unsigned long long)upfront, (unsigned long long)lockstep);
        printf("traps_gp %llu\ntraps_ud %llu\ntraps_int3 %llu\n", (unsigned long long)bysig[0],
               (unsigned long long)bysig[1], (unsigned long long)bysig[2]);
        printf("sync_mode %s\nsync_steps %llu\nretire_syncs %llu\nhandshakes %llu\n",
               sync_membarrier ? "membarrier" : "signals", (unsigned long long)n_sync_step,
               (unsigned long long)n_sync_retire, (unsigned long long)n_handshakes);
        for (kk = 0; kk < V_COUNT; kk++) {
            printf("violation %s %llu\n", vnames[kk], (unsigned long long)v[kk]);
            nv += v[kk];
        }
        for (kk = 0; kk < (int)ndetails && kk < DETAIL_MAX; kk++)
            printf("detail %s\n", details[kk]);
        printf("violations %llu\n", (unsigned long long)nv);
        fflush(stdout);
        return nv ? 1 : 0;
    }
}
