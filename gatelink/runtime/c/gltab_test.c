/*
 * gltab_test.c: a hosted driver for the C runtime (tests/test_runtime_c.py, benchmarks/silicon.py).
 * Not part of the runtime: it uses libc to read files and print.
 *
 *   gltab_test check TABLE                      validate; print the status code and its name
 *   gltab_test fuzz BUNDLE                      validate every table of a bundle (u32 count, then
 *                                               u32 length + bytes each); print one code per line
 *   gltab_test apply TABLE IMAGE TARGETS OUT all|eager [CORRUPT]
 *                                               identity, gl_apply, write the patched image; with
 *                                               CORRUPT=k, flip site k's first byte after the
 *                                               identity check and apply twice (all or nothing:
 *                                               the refused image must come out unchanged)
 *   gltab_test lazy TABLE IMAGE TARGETS SCRIPT OUT
 *                                               run a fault script (F address trap region | R site)
 *                                               and print every outcome, store and sync; write OUT
 *   gltab_test bench-apply TABLE IMAGE TARGETS REPS
 *                                               ns per site of gl_apply (all sites), best of REPS
 *
 * TARGETS: one line per (kind, gate, fallback): "kind gate fallback form selector offset target"
 * (decimal; form 255: none), sorted by (kind, gate, fallback); what the Python registry resolves.
 * The image is memory: region i's memory address is its file offset in the image buffer, its
 * code address its table address (the Python runtime's Placement.file).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gltab.h"

typedef struct entry {
    uint32_t kind, gate, fb;
    gl_target t;
} entry;

static entry *targets;
static size_t ntargets;
/* gates below 65536: direct index (kind, fallback, gate) -> entry + 1, as a kernel's gate table */
static uint32_t *dense;

static void die(const char *msg, const char *arg)
{
    fprintf(stderr, "gltab_test: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
    exit(2);
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf;
    long len;
    if (!f)
        die("cannot open", path);
    if (fseek(f, 0, SEEK_END) || (len = ftell(f)) < 0 || fseek(f, 0, SEEK_SET))
        die("cannot size", path);
    buf = malloc((size_t)len ? (size_t)len : 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len)
        die("cannot read", path);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

static void spill(const char *path, const uint8_t *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f))
        die("cannot write", path);
}

static void load_targets(const char *path)
{
    FILE *f = fopen(path, "r");
    size_t cap = 0;
    unsigned kind, gate, fb, form, sel;
    unsigned long off;
    unsigned long long tgt;
    if (!f)
        die("cannot open", path);
    while (fscanf(f, "%u %u %u %u %u %lu %llu", &kind, &gate, &fb, &form, &sel, &off, &tgt) == 7) {
        if (ntargets == cap) {
            cap = cap ? 2 * cap : 256;
            targets = realloc(targets, cap * sizeof *targets);
            if (!targets)
                die("out of memory", NULL);
        }
        targets[ntargets].kind = kind;
        targets[ntargets].gate = gate;
        targets[ntargets].fb = fb;
        targets[ntargets].t.form = (uint8_t)form;
        targets[ntargets].t.selector = (uint16_t)sel;
        targets[ntargets].t.offset = (uint32_t)off;
        targets[ntargets].t.target = tgt;
        ntargets++;
    }
    fclose(f);
    dense = calloc((size_t)4 * 2 * 65536, sizeof *dense);
    if (!dense)
        die("out of memory", NULL);
    for (cap = 0; cap < ntargets; cap++)
        if (targets[cap].kind < 4 && targets[cap].fb < 2 && targets[cap].gate < 65536)
            dense[(targets[cap].kind * 2 + targets[cap].fb) * 65536 + targets[cap].gate] = (uint32_t)cap + 1;
}

static int resolve(void *ctx, const gl_table *t, uint32_t site, uint32_t kind, uint32_t gate, int fallback,
                   gl_target *out)
{
    size_t lo = 0, hi = ntargets;
    (void)ctx;
    (void)t;
    (void)site;
    if (gate < 65536 && kind < 4 && fallback < 2) {
        uint32_t e = dense[(kind * 2 + (uint32_t)fallback) * 65536 + gate];
        if (!e || targets[e - 1].t.form == GL_FORM_NONE)
            return 0;
        *out = targets[e - 1].t;
        return 1;
    }
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const entry *e = &targets[mid];
        int c = e->kind != kind ? (e->kind < kind ? -1 : 1)
                : e->gate != gate    ? (e->gate < gate ? -1 : 1)
                : e->fb != (uint32_t)fallback ? (e->fb < (uint32_t)fallback ? -1 : 1)
                                              : 0;
        if (c == 0) {
            if (e->t.form == GL_FORM_NONE)
                return 0;
            *out = e->t;
            return 1;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

static void no_sync(void *ctx, int why)
{
    (void)ctx;
    (void)why;
}

static void trace(void *ctx, int op, uint32_t site, uint32_t offset, const uint8_t *data, uint32_t width)
{
    uint32_t i;
    (void)ctx;
    if (op == GL_TRACE_SYNC) {
        printf("Y %u\n", site);
        return;
    }
    printf("S %u %u ", site, offset);
    for (i = 0; i < width; i++)
        printf("%02x", data[i]);
    printf("\n");
}

typedef struct loaded {
    gl_table t;
    uint8_t *table, *image;
    size_t table_size, image_size;
    gl_place *place;
    uint32_t *state;
    gl_runtime rt;
} loaded;

static void load(loaded *L, const char *table, const char *image, const char *tg, int with_trace)
{
    const uint8_t **regions;
    uint32_t i;
    int rc;
    gl_os os;
    L->table = slurp(table, &L->table_size);
    L->image = slurp(image, &L->image_size);
    load_targets(tg);
    rc = gl_table_open(&L->t, L->table, L->table_size);
    if (rc != GL_OK)
        die("table refused", gl_strerror(rc));
    regions = calloc(L->t.region_count + 1, sizeof *regions);
    L->place = calloc(L->t.region_count + 1, sizeof *L->place);
    L->state = calloc(L->t.site_count + 1, sizeof *L->state);
    if (!regions || !L->place || !L->state)
        die("out of memory", NULL);
    for (i = 0; i < L->t.region_count; i++) {
        uint32_t fo = gl_region_file_offset(&L->t, i);
        if ((uint64_t)fo + gl_region_size(&L->t, i) > L->image_size)
            die("region outside the image", image);
        regions[i] = L->image + fo;
        L->place[i].memory = (uintptr_t)(L->image + fo);
        L->place[i].code = gl_region_address(&L->t, i);
    }
    if (gl_table_identity(&L->t, L->image_size, regions) != GL_OK)
        die("image mismatch", "identity");
    free(regions);
    memset(&os, 0, sizeof os);
    os.resolve = resolve;
    os.sync = no_sync;
    os.trace = with_trace ? trace : NULL;
    rc = gl_runtime_init(&L->rt, &L->t, L->place, L->state, &os, GL_INIT_MEMORY);
    if (rc != GL_OK)
        die("runtime init", gl_strerror(rc));
}

static int cmd_fuzz(const char *path)
{
    size_t n, pos = 4;
    uint8_t *b = slurp(path, &n);
    uint32_t count, k;
    if (n < 4)
        die("short bundle", path);
    memcpy(&count, b, 4);
    for (k = 0; k < count; k++) {
        uint32_t len;
        uint8_t *copy;
        gl_table t;
        int rc;
        if (pos + 4 > n)
            die("short bundle", path);
        memcpy(&len, b + pos, 4);
        pos += 4;
        if (pos + len > n)
            die("short bundle", path);
        /* an exact-size heap copy, so the sanitizer sees any read past the table */
        copy = malloc(len ? len : 1);
        if (!copy)
            die("out of memory", NULL);
        memcpy(copy, b + pos, len);
        pos += len;
        rc = gl_table_open(&t, copy, len);
        if (rc == GL_OK) {
            /* exercise the readers on an accepted table */
            uint32_t i, found = 0;
            for (i = 0; i < t.site_count; i++) {
                gl_site s;
                gl_site_get(&t, i, &s);
                found += gl_table_find(&t, s.region, s.address) == i;
                (void)gl_in_domain(&t, 0, 2, s.selector);
                (void)gl_policy_invalid(&t, s.selector & 0xFFFF);
            }
            if (found != t.site_count)
                rc = 99;
        }
        printf("%d\n", rc);
        free(copy);
    }
    free(b);
    return 0;
}

/* CPU time of this thread: on a shared machine, preemption does not count against the runtime */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    loaded L;
    if (argc >= 3 && !strcmp(argv[1], "check")) {
        size_t n;
        uint8_t *b = slurp(argv[2], &n);
        gl_table t;
        int rc = gl_table_open(&t, b, n);
        printf("%d %s\n", rc, gl_strerror(rc));
        return rc == GL_OK ? 0 : 1;
    }
    if (argc >= 3 && !strcmp(argv[1], "fuzz"))
        return cmd_fuzz(argv[2]);
    if (argc >= 7 && !strcmp(argv[1], "apply")) {
        gl_apply_result r;
        int rc;
        load(&L, argv[2], argv[3], argv[4], 0);
        if (argc >= 8) {
            /* all or nothing: a site that is not original refuses the whole apply */
            uint32_t k = (uint32_t)atoi(argv[7]);
            gl_site st;
            uint8_t *before;
            if (k >= L.t.site_count)
                die("no such site", argv[7]);
            gl_site_get(&L.t, k, &st);
            L.image[st.file_offset] ^= 0xFF;
            before = malloc(L.image_size);
            if (!before)
                die("out of memory", NULL);
            memcpy(before, L.image, L.image_size);
            rc = gl_apply(&L.rt, GL_APPLY_ALL, &r);
            printf("%d %s bad_site %d unchanged %d\n", rc, gl_strerror(rc), (int)r.bad_site,
                   !memcmp(before, L.image, L.image_size));
            L.image[st.file_offset] ^= 0xFF;
            rc = gl_apply(&L.rt, GL_APPLY_ALL, &r);
            memcpy(before, L.image, L.image_size);
            rc = gl_apply(&L.rt, GL_APPLY_ALL, &r); /* again: every site holds its final bytes */
            printf("%d %s unchanged %d\n", rc, gl_strerror(rc), !memcmp(before, L.image, L.image_size));
            return 0;
        }
        rc = gl_apply(&L.rt, strcmp(argv[6], "all") ? GL_APPLY_EAGER : GL_APPLY_ALL, &r);
        printf("%d %s patched %u lazy %u unplanned %u bad_site %d far %u callgate %u near %u pushcs %u\n", rc,
               gl_strerror(rc), r.patched, r.lazy, r.unplanned, (int)r.bad_site, r.per_form[0], r.per_form[1],
               r.per_form[2], r.per_form[3]);
        if (rc == GL_OK)
            spill(argv[5], L.image, L.image_size);
        return rc == GL_OK ? 0 : 1;
    }
    if (argc >= 7 && !strcmp(argv[1], "lazy")) {
        FILE *f;
        char op[4];
        load(&L, argv[2], argv[3], argv[4], 1);
        printf("foreign %u\n", L.rt.foreign);
        f = fopen(argv[5], "r");
        if (!f)
            die("cannot open", argv[5]);
        while (fscanf(f, "%3s", op) == 1) {
            if (op[0] == 'F') {
                unsigned long long a;
                int trap, region;
                uint64_t resume = 0;
                uint32_t site = GL_NO_SITE;
                int act;
                if (fscanf(f, "%llu %d %d", &a, &trap, &region) != 3)
                    die("bad script", argv[5]);
                act = gl_fault(&L.rt, a, trap, region, &resume, &site);
                if (act == GL_ACT_DEFAULT)
                    printf("O default %d\n", site == GL_NO_SITE ? -1 : (int)site);
                else
                    printf("O %s %u %llu\n", act == GL_ACT_PATCHED ? "patched" : "waited", site,
                           (unsigned long long)resume);
            } else if (op[0] == 'R') {
                unsigned site;
                if (fscanf(f, "%u", &site) != 1)
                    die("bad script", argv[5]);
                printf("R %d\n", gl_rearm(&L.rt, site));
            } else {
                die("bad script op", op);
            }
        }
        fclose(f);
        spill(argv[6], L.image, L.image_size);
        return 0;
    }
    if (argc >= 6 && !strcmp(argv[1], "bench-apply")) {
        int reps = atoi(argv[5]), k;
        double best = 1e30, t0;
        uint8_t *pristine;
        gl_apply_result r;
        load(&L, argv[2], argv[3], argv[4], 0);
        pristine = malloc(L.image_size);
        if (!pristine)
            die("out of memory", NULL);
        memcpy(pristine, L.image, L.image_size);
        for (k = 0; k < reps; k++) {
            int rc;
            memcpy(L.image, pristine, L.image_size);
            t0 = now();
            rc = gl_apply(&L.rt, GL_APPLY_ALL, &r);
            t0 = now() - t0;
            if (rc != GL_OK)
                die("apply failed", gl_strerror(rc));
            if (t0 < best)
                best = t0;
        }
        {
            double v0 = now();
            gl_table t2;
            int rc = gl_table_open(&t2, L.table, L.table_size);
            double v1 = now();
            printf("sites %u apply_ns_per_site %.2f open_ns_per_site %.2f rc %d\n", L.t.site_count,
                   best * 1e9 / (L.t.site_count ? L.t.site_count : 1),
                   (v1 - v0) * 1e9 / (L.t.site_count ? L.t.site_count : 1), rc);
        }
        return 0;
    }
    fprintf(stderr, "usage: gltab_test check|fuzz|apply|lazy|bench-apply ... (see the source)\n");
    return 2;
}
