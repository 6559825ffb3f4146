/*
 * gltab.h: the gatelink C reference runtime (docs/runtime-c.md).
 *
 * Reads a gatelink patch table (docs/table-format.md), patches gate sites up front
 * (gl_apply) or on first fault (gl_fault_begin / gl_fault_finish), with the semantics of the
 * Python reference runtime (docs/runtime.md): the same patched bytes, the same stores, the
 * same resume points.
 *
 * Freestanding C99: no libc, no allocation. The caller owns every buffer: the table bytes, one
 * 32-bit state word per site, the region placement. The OS supplies three hooks (gl_os): where a
 * gate resolves, how to serialise every other core (a sync), and optionally how to wait and
 * how to trace.
 */
#ifndef GLTAB_H
#define GLTAB_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define GL_FORMAT_VERSION 1

/* ---- status codes (0 success, negative failure); gl_strerror() names them ---------------- */
enum {
    GL_OK = 0,
    GL_E_SIZE = -1,       /* truncated, trailing bytes, or total_size out of range */
    GL_E_MAGIC = -2,      /* not a gatelink table (magic, version, header_size) */
    GL_E_CRC = -3,        /* CRC-32 mismatch */
    GL_E_HEADER = -4,     /* a header field out of range (format, model, forms, counts) */
    GL_E_LAYOUT = -5,     /* section offsets/sizes not the specified layout, or padding not zero */
    GL_E_REGION = -6,     /* a malformed region */
    GL_E_STEP = -7,       /* a malformed step */
    GL_E_DOMAIN = -8,     /* a malformed domain or range */
    GL_E_PLAN = -9,       /* a malformed or inconsistent plan */
    GL_E_SITE = -10,      /* a malformed site (order, bounds, plans, original bytes) */
    GL_E_POLICY = -11,    /* a malformed policy record */
    GL_E_STRING = -12,    /* a string reference outside the pool or not NUL-terminated */
    GL_E_IDENTITY = -13,  /* the image is not the table's (file size, code SHA-256) */
    GL_E_ARG = -14,       /* a bad argument (index out of range, NULL) */
    GL_E_NOPLAN = -15,    /* the site has no plan for its target's form (nor its fallback's) */
    GL_E_RESOLVE = -16,   /* the OS resolver gave no target */
    GL_E_VALUE = -17,     /* a target value outside the proven domain, or a policy-invalid selector */
    GL_E_MISMATCH = -18,  /* the site's bytes are not its original bytes */
    GL_E_PATCHED = -19    /* gl_apply: every selected site already holds its final bytes */
};

/* ---- codes of the table format ------------------------------------------------------------- */
enum { GL_FORM_FAR = 0, GL_FORM_CALLGATE = 1, GL_FORM_NEAR = 2, GL_FORM_PUSHCS = 3, GL_FORM_NONE = 0xFF };
enum { GL_KIND_UNKNOWN = 0, GL_KIND_OS = 1, GL_KIND_USER = 2, GL_KIND_SERVER = 3 };
enum { GL_FLAG_EAGER = 1, GL_FLAG_LAZY = 2, GL_FLAG_NEEDS_SYNC = 4, GL_FLAG_PADDED = 8 };

/* ---- site states (one 32-bit word per site, in site order; docs/runtime.md) ---------------- */
enum { GL_UNTOUCHED = 0, GL_PATCHING = 1, GL_DONE = 2, GL_FOREIGN = 3 };

/* ---- how the CPU reported a trap: where the trapping instruction starts -------------------- */
enum {
    GL_TRAP_FAULT = 0, /* #GP, #UD, #NP...: the address is the instruction's first byte */
    GL_TRAP_INT3 = 1,  /* #BP from INT3: the address is after the CC byte */
    GL_TRAP_INT = 2    /* INT n on a policy vector: the address is after CD n */
};

/* ---- what a fault handler does next ---------------------------------------------------------- */
enum {
    GL_ACT_DEFAULT = 0, /* not the patcher's fault: chain to the previous handler */
    GL_ACT_PATCHED = 1, /* this call ran the plan: resume at *resume */
    GL_ACT_WAITED = 2,  /* another core ran it: resume at *resume */
    GL_ACT_CONTINUE = 3 /* gl_fault_begin only: enable interrupts and call gl_fault_finish */
};

/* ---- why the runtime asks for a sync ---------------------------------------------------------- */
enum {
    GL_SYNC_STEP = 0,   /* a sync step of a plan */
    GL_SYNC_RETIRE = 1, /* the retire sync before DONE (the plan did not end with a sync) */
    GL_SYNC_REARM = 2   /* gl_rearm, after restoring the original bytes */
};

/* ---- trace operations (gl_os.trace, optional) ---------------------------------------------- */
enum { GL_TRACE_STORE = 0, GL_TRACE_SYNC = 1 };

/* A validated table: pointers into the caller's bytes, which must stay mapped and unchanged. */
typedef struct gl_table {
    const uint8_t *p;
    uint32_t size;
    uint8_t image_format, model_chunk, model_order, form_count;
    uint8_t forms[4];
    uint64_t file_size;
    const uint8_t *code_sha256; /* 32 bytes */
    uint32_t region_count, site_count, plan_count, step_count, domain_count, range_count;
    const uint8_t *regions, *sites, *plans, *steps, *domains, *ranges, *policy, *strings;
    uint32_t policy_size, strings_size;
    /* the policy, decoded: counts and where its arrays start */
    uint8_t pol_ud2, pol_int3;
    uint16_t pol_invalid_count, pol_rule_count, pol_gate_count, pol_vector_count;
    const uint8_t *pol_invalid, *pol_rules, *pol_gates, *pol_vectors;
} gl_table;

/* One site, decoded (gl_site). */
typedef struct gl_site {
    uint64_t address;     /* table address of its first byte */
    uint32_t file_offset;
    uint32_t region;
    uint32_t gate;
    uint32_t selector;    /* 0xFFFFFFFF for the UD2 shapes */
    uint8_t length, shape, gate_kind, confidence, flags;
    uint8_t original[16];
    uint16_t plans[4];    /* 0xFFFF: no plan in that form slot */
    uint8_t syncs[4];
} gl_site;

/* Where the OS wants a gate to go. `form` is a GL_FORM_*; the "undefined" form of the Python
 * registry is a far call to the undefined-gate handler: give GL_FORM_FAR. */
typedef struct gl_target {
    uint8_t form;
    uint16_t selector; /* far, callgate */
    uint32_t offset;   /* far */
    uint64_t target;   /* near, pushcs: code address of the entry, in the site's code segment */
} gl_target;

/* Per region of the table: where its first byte is in memory (where the runtime stores) and
 * its code address (the EIP the CPU runs it at, what faults report, what rel32 is relative to). */
typedef struct gl_place {
    uintptr_t memory;
    uint64_t code;
} gl_place;

/* The OS's hooks.
 *
 * resolve(ctx, table, site, gate_kind, gate, fallback, out): where gate `gate` of kind
 *   `gate_kind` (GL_KIND_*) goes, for site index `site` (gl_site_get tells the rest). Called with
 *   fallback 0 (the gate's own target); when the table has no plan for that form at this site,
 *   again with fallback 1 (the kind's fallback, e.g. a near call for a 5-byte UD2 stub). Return
 *   1 and fill *out, or 0 (no target). Must not block: it runs in the fault handler with
 *   interrupts disabled.
 * sync(ctx, why): serialise every other core: each finishes its current instruction and
 *   fetches afresh before this returns (an IPI whose handler runs cpuid or iret, waiting for
 *   every acknowledgement). Runs with interrupts enabled; why is a GL_SYNC_*.
 * pause(ctx): optional; called in a waiter's loop (NULL: the pause instruction).
 * trace(ctx, op, site, offset, data, width): optional; called before each store and sync of
 *   a plan (debugging, differential tests). */
typedef struct gl_os {
    void *ctx;
    int (*resolve)(void *ctx, const gl_table *t, uint32_t site, uint32_t gate_kind, uint32_t gate, int fallback,
                   gl_target *out);
    void (*sync)(void *ctx, int why);
    void (*pause)(void *ctx);
    void (*trace)(void *ctx, int op, uint32_t site, uint32_t offset, const uint8_t *data, uint32_t width);
} gl_os;

/* A site's plan made concrete: every template atom filled. */
#define GL_MAX_STEPS 19 /* 3 syncs + 16 writes */
typedef struct gl_step {
    uint8_t kind;   /* 0 write, 1 sync */
    uint8_t offset; /* write: first byte inside the site */
    uint8_t width;  /* write: 1, 2, 4 or 8 */
    uint8_t data[8];
} gl_step;

typedef struct gl_patch {
    uint32_t site;
    uintptr_t memory; /* memory address of the site's first byte */
    uint64_t code;    /* its code address */
    uint8_t length, resume, step_count, form;
    uint8_t original[16];
    uint8_t final[16];
    gl_step steps[GL_MAX_STEPS];
} gl_patch;

/* The runtime over one table. Fill it with gl_runtime_init. */
typedef struct gl_runtime {
    const gl_table *table;
    const gl_place *place;     /* table->region_count entries */
    volatile uint32_t *state;  /* table->site_count words, owned by the caller */
    gl_os os;
    uint32_t foreign;          /* sites made FOREIGN by gl_runtime_init (no plan, refused value, bytes) */
} gl_runtime;

/* Up-front results. */
typedef struct gl_apply_result {
    uint32_t patched;   /* sites written */
    uint32_t lazy;      /* sites left for their first fault (GL_APPLY_EAGER) */
    uint32_t unplanned; /* selected sites the table has no plan for */
    uint32_t bad_site;  /* on GL_E_MISMATCH / GL_E_VALUE / GL_E_NOPLAN / GL_E_RESOLVE: the site */
    uint32_t per_form[4];
} gl_apply_result;

enum { GL_APPLY_EAGER = 0, GL_APPLY_ALL = 1 };
enum { GL_INIT_MEMORY = 0, GL_INIT_UNTOUCHED = 1 };

/* The context of one fault between gl_fault_begin and gl_fault_finish (on the handler's stack). */
typedef struct gl_fault_ctx {
    uint32_t site;   /* site index, or 0xFFFFFFFF outside every site */
    uint32_t state;  /* the first read of the site's state */
    uint64_t point;  /* P: the code address of the trapping instruction */
    gl_patch patch;  /* filled when the state was UNTOUCHED */
} gl_fault_ctx;

#define GL_NO_SITE 0xFFFFFFFFu
#define GL_ANY_REGION (-1)

/* ---- the table ------------------------------------------------------------------------------- */

/* total_size from a header (0 when `size` bytes hold no table header): how many bytes to map. */
uint32_t gl_table_size(const void *bytes, size_t size);

/* Validate `size` bytes as a table (docs/table-format.md, "What a loader must validate", and the
 * consistency of plans and sites) and fill *t. `size` must be exactly total_size. */
int gl_table_open(gl_table *t, const void *bytes, size_t size);

/* Identity: file_size and the SHA-256 of every region's bytes (region i's `size` bytes at
 * region_bytes[i], as loaded from the file, before relocation). GL_OK or GL_E_IDENTITY. */
int gl_table_identity(const gl_table *t, uint64_t file_size, const uint8_t *const *region_bytes);

/* Decode site i (i < site_count). */
void gl_site_get(const gl_table *t, uint32_t i, gl_site *out);

/* Region i: table address, size, bitness. */
uint64_t gl_region_address(const gl_table *t, uint32_t i);
uint32_t gl_region_size(const gl_table *t, uint32_t i);
uint32_t gl_region_file_offset(const gl_table *t, uint32_t i);
uint8_t gl_region_bitness(const gl_table *t, uint32_t i);

/* The site whose bytes hold table address `address` in `region` (binary search), or GL_NO_SITE. */
uint32_t gl_table_find(const gl_table *t, uint32_t region, uint64_t address);

/* Is `value` in the proven domain of `field` (1 off, 2 sel, 3 rel) of form slot `slot`? */
int gl_in_domain(const gl_table *t, uint32_t slot, uint32_t field, uint32_t value);

/* Does the table's policy treat far calls to `selector` as never valid (a trap)? */
int gl_policy_invalid(const gl_table *t, uint32_t selector);

/* ---- the runtime ----------------------------------------------------------------------------- */

/* Bind every site (resolve, check values) and set its state: GL_INIT_MEMORY from the bytes in
 * memory (original: UNTOUCHED, the final bytes: DONE, else FOREIGN), GL_INIT_UNTOUCHED without
 * reading. Sites with no plan, or whose target is refused, are FOREIGN (rt->foreign counts them). */
int gl_runtime_init(gl_runtime *rt, const gl_table *t, const gl_place *place, uint32_t *state, const gl_os *os,
                    int initial);

/* Site i's plan filled for its resolved target (GL_OK), or why not. */
int gl_bind(const gl_runtime *rt, uint32_t site, gl_patch *out);

/* Up front, before the code runs: every EAGER site (GL_APPLY_EAGER) or every site (GL_APPLY_ALL).
 * All or nothing: every selected site with a plan must bind and hold its original bytes; each
 * gets its final bytes (plain writes: no other core runs the code) and state DONE. At the first
 * site that does not hold its original bytes nothing more is written and what was written is
 * put back: GL_E_MISMATCH naming the site, or GL_E_PATCHED when all hold their final bytes. */
int gl_apply(gl_runtime *rt, int which, gl_apply_result *res);

/* The fault handler, in two halves (docs/runtime-c.md, "Interrupt discipline"):
 * gl_fault_begin runs with interrupts disabled, from the exception's entry: it finds the site,
 * reads its state once and decides. GL_ACT_DEFAULT: not ours. GL_ACT_CONTINUE: enable
 * interrupts, then gl_fault_finish claims and runs the plan or waits for the core that does,
 * and returns GL_ACT_PATCHED / GL_ACT_WAITED with *resume (write it into the saved EIP) or
 * GL_ACT_DEFAULT. `address` is what the CPU reported; `region` the region of the faulting code
 * segment, or GL_ANY_REGION (flat images). */
int gl_fault_begin(const gl_runtime *rt, uint64_t address, int trap, int region, gl_fault_ctx *f);
int gl_fault_finish(gl_runtime *rt, gl_fault_ctx *f, uint64_t *resume);

/* Both halves at once (for callers without an interrupt discipline, and tests). */
int gl_fault(gl_runtime *rt, uint64_t address, int trap, int region, uint64_t *resume, uint32_t *site);

/* Put a DONE site back to its original bytes and UNTOUCHED (test harnesses). The caller
 * guarantees no core executes inside the site meanwhile. 1 done, 0 not DONE or not final. */
int gl_rearm(gl_runtime *rt, uint32_t site);

/* Run a filled patch's steps against memory now (the store primitives and sync hook), without
 * any state protocol: what gl_fault_finish does once it owns the site. */
void gl_run_steps(gl_runtime *rt, const gl_patch *p);

/* A short name of a status code. */
const char *gl_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif /* GLTAB_H */
