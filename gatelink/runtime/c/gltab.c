/*
 * gltab.c: the gatelink C reference runtime (docs/runtime-c.md). Freestanding C99: no libc,
 * no allocation, no floating point. The table is hostile input until gl_table_open accepted
 * it: every count, offset, index and reference is bounded (in 64-bit arithmetic) before use.
 */
#include "gltab.h"
#include "gl_arch.h"

/* The up-front loop's helpers are inlined into it (a million sites: calls add up). */
#if defined(__GNUC__) || defined(__clang__)
#define GL_HOT static inline __attribute__((always_inline))
#else
#define GL_HOT static inline
#endif

/* ---- byte access (the table need not be aligned; no wide lvalues at unaligned addresses) --- */

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | (uint16_t)p[1] << 8); }
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static int all_zero(const uint8_t *p, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static void copy_bytes(uint8_t *dst, const uint8_t *src, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        dst[i] = src[i];
}

static int same_bytes(const uint8_t *a, const volatile uint8_t *b, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* ---- format constants (docs/table-format.md) ------------------------------------------------ */

#define HEADER_SIZE 160u
#define REGION_SIZE 32u
#define SITE_SIZE 64u
#define PLAN_SIZE 48u
#define STEP_SIZE 24u
#define DOMAIN_SIZE 24u
#define RANGE_SIZE 12u
#define MAX_TOTAL (1u << 30)
#define MAX_REGIONS (1u << 16)
#define MAX_SITES (1u << 24)
#define MAX_PLANS 65534u
#define MAX_STEPS (1u << 20)
#define MAX_DOMAINS 64u
#define MAX_RANGES (1u << 16)
#define MAX_STRINGS (1u << 20)
#define MAX_BUILD (1u << 16)
#define MAX_NAME 255u
#define MAX_POLICY_ITEMS 256u
#define MAX_DOMAIN_VALUES (1u << 17)
#define NO_PLAN 0xFFFFu
#define NO_SYNCS 0xFFu
#define NO_SELECTOR 0xFFFFFFFFu
#define SHAPE_COUNT 15u
#define FLAG_BITS 0x0Fu

/* Site length of each shape code: A B C D E F G H I L7 L8 L7P L8P U5 U7 (gatelink/catalog.py). */
static const uint8_t shape_length[SHAPE_COUNT] = {9, 9, 9, 9, 9, 8, 10, 10, 9, 7, 8, 9, 10, 5, 7};

/* Atom kinds and the byte indices valid for each (0 constant: any value). */
enum { A_CONST = 0, A_OFF = 1, A_SEL = 2, A_REL = 3, A_GATE = 4 };
static const uint8_t atom_bytes[5] = {0, 4, 2, 4, 4};
static const uint8_t field_size[4] = {0, 4, 2, 4};

static int atom_valid(uint16_t a)
{
    uint32_t kind = a >> 8, v = a & 0xFF;
    if (kind == A_CONST)
        return 1;
    return kind <= A_GATE && v < atom_bytes[kind];
}

/* ---- CRC-32/ISO-HDLC (zlib's crc32) --------------------------------------------------------- */

static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu,
    0xe963a535u, 0x9e6495a3u, 0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u,
    0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u, 0x1db71064u, 0x6ab020f2u,
    0xf3b97148u, 0x84be41deu, 0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u,
    0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu, 0x14015c4fu, 0x63066cd9u,
    0xfa0f3d63u, 0x8d080df5u, 0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u,
    0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu, 0x35b5a8fau, 0x42b2986cu,
    0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u,
    0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u,
    0xcfba9599u, 0xb8bda50fu, 0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u,
    0x2f6f7c87u, 0x58684c11u, 0xc1611dabu, 0xb6662d3du, 0x76dc4190u, 0x01db7106u,
    0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu, 0x086d3d2du,
    0x91646c97u, 0xe6635c01u, 0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u, 0x65b0d9c6u, 0x12b7e950u,
    0x8bbeb8eau, 0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u,
    0x4db26158u, 0x3ab551ceu, 0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u,
    0xa4d1c46du, 0xd3d6f4fbu, 0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u,
    0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u, 0x5005713cu, 0x270241aau,
    0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u, 0xce61e49fu,
    0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u,
    0xb7bd5c3bu, 0xc0ba6cadu, 0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au,
    0xead54739u, 0x9dd277afu, 0x04db2615u, 0x73dc1683u, 0xe3630b12u, 0x94643b84u,
    0x0d6d6a3eu, 0x7a6a5aa8u, 0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu, 0xf762575du, 0x806567cbu,
    0x196c3671u, 0x6e6b06e7u, 0xfed41b76u, 0x89d32be0u, 0x10da7a5au, 0x67dd4accu,
    0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u, 0xd6d6a3e8u, 0xa1d1937eu,
    0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u,
    0x316e8eefu, 0x4669be79u, 0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u,
    0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu, 0xc5ba3bbeu, 0xb2bd0b28u,
    0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u, 0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du,
    0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au, 0x9c0906a9u, 0xeb0e363fu,
    0x72076785u, 0x05005713u, 0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u,
    0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u, 0x86d3d2d4u, 0xf1d4e242u,
    0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u,
    0x616bffd3u, 0x166ccf45u, 0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u,
    0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu, 0xaed16a4au, 0xd9d65adcu,
    0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u,
    0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u, 0xcdd70693u,
    0x54de5729u, 0x23d967bfu, 0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du,
};

static uint32_t crc32_update(uint32_t c, const uint8_t *p, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c;
}

/* ---- SHA-256 (FIPS 180-4), for the identity check ------------------------------------------- */

typedef struct sha256 {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    uint32_t fill;
} sha256;

static const uint32_t sha_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};

#define ROR(x, n) ((x) >> (n) | (x) << (32 - (n)))

static void sha_block(sha256 *s, const uint8_t *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, h, t1, t2;
    uint32_t i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3];
    e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
    for (i = 0; i < 64; i++) {
        t1 = h + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + sha_k[i] + w[i];
        t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
    s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha_init(sha256 *s)
{
    static const uint32_t h0[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    uint32_t i;
    for (i = 0; i < 8; i++)
        s->h[i] = h0[i];
    s->len = 0;
    s->fill = 0;
}

static void sha_update(sha256 *s, const uint8_t *p, uint32_t n)
{
    s->len += n;
    while (n) {
        if (s->fill == 0 && n >= 64) {
            sha_block(s, p);
            p += 64;
            n -= 64;
            continue;
        }
        s->buf[s->fill++] = *p++;
        n--;
        if (s->fill == 64) {
            sha_block(s, s->buf);
            s->fill = 0;
        }
    }
}

static void sha_final(sha256 *s, uint8_t out[32])
{
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80, zero = 0, lenb[8];
    uint32_t i;
    sha_update(s, &pad, 1);
    while (s->fill != 56)
        sha_update(s, &zero, 1);
    for (i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_update(s, lenb, 8);
    for (i = 0; i < 32; i++)
        out[i] = (uint8_t)(s->h[i / 4] >> (24 - 8 * (i % 4)));
}

/* ---- validation ----------------------------------------------------------------------------- */

static uint64_t align8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

/* A string reference: off + len < pool size, len <= 255, NUL right after. */
static int string_ok(const gl_table *t, uint32_t off, uint32_t len)
{
    return len <= MAX_NAME && (uint64_t)off + len < t->strings_size && t->strings[off + len] == 0;
}

GL_HOT uint32_t slot_of(const gl_table *t, uint32_t form)
{
    uint32_t k;
    for (k = 0; k < t->form_count; k++)
        if (t->forms[k] == form)
            return k;
    return 0xFF;
}

static const uint8_t *domain_entry(const gl_table *t, uint32_t slot, uint32_t field)
{
    uint32_t i;
    for (i = 0; i < t->domain_count; i++) {
        const uint8_t *d = t->domains + (uint64_t)i * DOMAIN_SIZE;
        if (d[0] == slot && d[1] == field)
            return d;
    }
    return 0;
}

static int check_header(gl_table *t, const uint8_t *p, size_t size)
{
    uint32_t total, k;
    uint64_t pos;
    uint32_t offs[9];
    uint64_t sizes[9];
    static const uint32_t hoff[9] = {88, 92, 96, 100, 104, 108, 112, 120, 128};
    if (size < HEADER_SIZE)
        return (size >= 4 && (p[0] != 'G' || p[1] != 'L' || p[2] != 'T' || p[3] != 'B')) ? GL_E_MAGIC : GL_E_SIZE;
    if (p[0] != 'G' || p[1] != 'L' || p[2] != 'T' || p[3] != 'B' || rd16(p + 4) != GL_FORMAT_VERSION ||
        rd16(p + 6) != HEADER_SIZE)
        return GL_E_MAGIC;
    total = rd32(p + 8);
    if (total < HEADER_SIZE || total > MAX_TOTAL || (uint64_t)total != (uint64_t)size)
        return GL_E_SIZE;
    {
        static const uint8_t zero4[4] = {0, 0, 0, 0};
        uint32_t c = crc32_update(0xFFFFFFFFu, p, 12);
        c = crc32_update(c, zero4, 4);
        c = crc32_update(c, p + 16, total - 16) ^ 0xFFFFFFFFu;
        if (c != rd32(p + 12))
            return GL_E_CRC;
    }
    t->p = p;
    t->size = total;
    t->image_format = p[16];
    t->model_chunk = p[17];
    t->model_order = p[18];
    t->form_count = p[19];
    if (t->image_format < 1 || t->image_format > 7)
        return GL_E_HEADER;
    switch (t->model_chunk) {
    case 1: case 2: case 4: case 8: case 16: case 32: case 64: break;
    default: return GL_E_HEADER;
    }
    if (t->model_order > 1 || t->form_count < 1 || t->form_count > 4)
        return GL_E_HEADER;
    for (k = 0; k < 4; k++) {
        t->forms[k] = p[20 + k];
        if (k < t->form_count) {
            uint32_t j;
            if (t->forms[k] > GL_FORM_PUSHCS)
                return GL_E_HEADER;
            for (j = 0; j < k; j++)
                if (t->forms[j] == t->forms[k])
                    return GL_E_HEADER;
        } else if (t->forms[k] != 0xFF) {
            return GL_E_HEADER;
        }
    }
    t->file_size = rd64(p + 24);
    t->code_sha256 = p + 32;
    t->region_count = rd32(p + 64);
    t->site_count = rd32(p + 68);
    t->plan_count = rd32(p + 72);
    t->step_count = rd32(p + 76);
    t->domain_count = rd32(p + 80);
    t->range_count = rd32(p + 84);
    t->policy_size = rd32(p + 116);
    t->strings_size = rd32(p + 124);
    if (t->region_count > MAX_REGIONS || t->site_count > MAX_SITES || t->plan_count > MAX_PLANS ||
        t->step_count > MAX_STEPS || t->domain_count > MAX_DOMAINS || t->range_count > MAX_RANGES ||
        t->strings_size > MAX_STRINGS || rd32(p + 132) > MAX_BUILD || rd32(p + 132) < 1 ||
        t->policy_size > total)
        return GL_E_HEADER;
    if (!all_zero(p + 136, 24))
        return GL_E_HEADER;
    /* The layout is fixed by the counts: each section starts at the previous one's end rounded
     * up to 8, in the specified order, the gaps are zero and the table ends after build info. */
    sizes[0] = (uint64_t)t->region_count * REGION_SIZE;
    sizes[1] = (uint64_t)t->site_count * SITE_SIZE;
    sizes[2] = (uint64_t)t->plan_count * PLAN_SIZE;
    sizes[3] = (uint64_t)t->step_count * STEP_SIZE;
    sizes[4] = (uint64_t)t->domain_count * DOMAIN_SIZE;
    sizes[5] = (uint64_t)t->range_count * RANGE_SIZE;
    sizes[6] = t->policy_size;
    sizes[7] = t->strings_size;
    sizes[8] = rd32(p + 132);
    pos = HEADER_SIZE;
    for (k = 0; k < 9; k++) {
        uint64_t start = align8(pos);
        offs[k] = rd32(p + hoff[k]);
        if ((uint64_t)offs[k] != start || start + sizes[k] > total)
            return GL_E_LAYOUT;
        if (!all_zero(p + pos, (uint32_t)(start - pos)))
            return GL_E_LAYOUT;
        pos = start + sizes[k];
    }
    if (pos != total)
        return GL_E_LAYOUT;
    t->regions = p + offs[0];
    t->sites = p + offs[1];
    t->plans = p + offs[2];
    t->steps = p + offs[3];
    t->domains = p + offs[4];
    t->ranges = p + offs[5];
    t->policy = p + offs[6];
    t->strings = p + offs[7];
    return GL_OK;
}

static int check_regions(const gl_table *t)
{
    uint32_t i, j;
    int flat = t->image_format == 1 || t->image_format == 2 || t->image_format == 6 || t->image_format == 7;
    for (i = 0; i < t->region_count; i++) {
        const uint8_t *r = t->regions + (uint64_t)i * REGION_SIZE;
        uint64_t addr = rd64(r);
        uint32_t foff = rd32(r + 8), size = rd32(r + 12);
        if (!all_zero(r + 25, 7) || (r[24] != 16 && r[24] != 32 && r[24] != 64))
            return GL_E_REGION;
        if ((uint64_t)foff + size > t->file_size)
            return GL_E_REGION;
        if (size && addr > UINT64_MAX - size + 1)
            return GL_E_REGION; /* addresses wrap around */
        if (!string_ok(t, rd32(r + 16), rd32(r + 20)))
            return GL_E_STRING;
    }
    if (!flat)
        return GL_OK;
    /* Flat images: the address ranges of non-empty regions must not overlap. Pairwise for the
     * few regions real images have; past 1024 regions, only increasing address order (which
     * implies it) is accepted, so a hostile table cannot make this quadratic. */
    for (i = 0; i < t->region_count; i++) {
        const uint8_t *a = t->regions + (uint64_t)i * REGION_SIZE;
        uint64_t a0 = rd64(a), a1 = a0 + rd32(a + 12);
        if (!rd32(a + 12))
            continue;
        if (t->region_count > 1024) {
            if (i + 1 < t->region_count) {
                const uint8_t *b = a + REGION_SIZE;
                if (rd32(b + 12) && rd64(b) < a1)
                    return GL_E_REGION;
            }
            continue;
        }
        for (j = i + 1; j < t->region_count; j++) {
            const uint8_t *b = t->regions + (uint64_t)j * REGION_SIZE;
            uint64_t b0 = rd64(b), b1 = b0 + rd32(b + 12);
            if (rd32(b + 12) && a0 < b1 && b0 < a1)
                return GL_E_REGION;
        }
    }
    return GL_OK;
}

static int check_steps(const gl_table *t)
{
    uint32_t i, j;
    for (i = 0; i < t->step_count; i++) {
        const uint8_t *s = t->steps + (uint64_t)i * STEP_SIZE;
        if (s[3] || !all_zero(s + 20, 4))
            return GL_E_STEP;
        if (s[0] == 1) {
            if (s[1] || s[2] || !all_zero(s + 4, 16))
                return GL_E_STEP;
        } else if (s[0] == 0) {
            uint32_t w = s[2];
            if (w != 1 && w != 2 && w != 4 && w != 8)
                return GL_E_STEP;
            for (j = 0; j < 8; j++) {
                uint16_t a = rd16(s + 4 + 2 * j);
                if (j < w ? !atom_valid(a) : a != 0)
                    return GL_E_STEP;
            }
        } else {
            return GL_E_STEP;
        }
    }
    return GL_OK;
}

static int check_domains(const gl_table *t)
{
    uint32_t i, next_range = 0, prev = 0;
    uint64_t values = 0;
    for (i = 0; i < t->domain_count; i++) {
        const uint8_t *d = t->domains + (uint64_t)i * DOMAIN_SIZE;
        uint32_t slot = d[0], field = d[1], size = d[2], kind = d[3];
        uint32_t first = rd32(d + 4), count = rd32(d + 8), key = slot << 8 | field;
        if (!all_zero(d + 20, 4) || slot >= t->form_count || field < 1 || field > 3 || size != field_size[field])
            return GL_E_DOMAIN;
        if (i && key <= prev)
            return GL_E_DOMAIN; /* sorted by (slot, field), no duplicates */
        prev = key;
        if (!string_ok(t, rd32(d + 12), rd32(d + 16)))
            return GL_E_STRING;
        if (kind == 0) {
            if (first || count)
                return GL_E_DOMAIN;
        } else if (kind == 1) {
            uint32_t k;
            uint64_t last_hi = 0;
            if (count < 1 || first != next_range || (uint64_t)first + count > t->range_count)
                return GL_E_DOMAIN;
            next_range = first + count;
            for (k = first; k < first + count; k++) {
                const uint8_t *r = t->ranges + (uint64_t)k * RANGE_SIZE;
                uint32_t lo = rd32(r), hi = rd32(r + 4), step = rd32(r + 8);
                if (step < 1 || lo > hi || (hi - lo) % step || (size == 2 && hi > 0xFFFF) ||
                    (k > first && (uint64_t)lo <= last_hi))
                    return GL_E_DOMAIN;
                values += (uint64_t)((hi - lo) / step) + 1;
                if (values > MAX_DOMAIN_VALUES)
                    return GL_E_DOMAIN;
                last_hi = hi;
            }
        } else {
            return GL_E_DOMAIN;
        }
    }
    if (next_range != t->range_count)
        return GL_E_DOMAIN;
    return GL_OK;
}

static int check_plans(const gl_table *t)
{
    uint32_t i, expect_first = 0;
    for (i = 0; i < t->plan_count; i++) {
        const uint8_t *p = t->plans + (uint64_t)i * PLAN_SIZE;
        uint32_t shape = p[0], form = p[1], bits = p[2], len = p[3], resume = p[4], rel_end = p[5];
        uint32_t syncs = p[6], writes = p[7], first = rd32(p + 8), count = rd16(p + 12);
        uint32_t k, j, nsync = 0, nwrite = 0, slot, uses_rel = 0;
        uint16_t last[16];
        uint32_t written = 0;
        if (p[14] || p[15])
            return GL_E_PLAN;
        if (shape >= SHAPE_COUNT || form > GL_FORM_PUSHCS || (bits != 16 && bits != 32))
            return GL_E_PLAN;
        slot = slot_of(t, form);
        if (slot == 0xFF || len != shape_length[shape] || resume >= len)
            return GL_E_PLAN;
        if (first != expect_first || count < 1 || (uint64_t)first + count > t->step_count)
            return GL_E_PLAN;
        expect_first = first + count;
        for (k = 0; k < count; k++) {
            const uint8_t *s = t->steps + (uint64_t)(first + k) * STEP_SIZE;
            if (s[0] == 1) {
                nsync++;
                continue;
            }
            nwrite++;
            if ((uint32_t)s[1] + s[2] > len)
                return GL_E_PLAN;
            for (j = 0; j < s[2]; j++) {
                last[s[1] + j] = rd16(s + 4 + 2 * j);
                written |= 1u << (s[1] + j);
            }
        }
        if (nsync != syncs || nwrite != writes || syncs > 3 || writes < 1)
            return GL_E_PLAN;
        for (j = 0; j < 16; j++) {
            uint16_t a = rd16(p + 16 + 2 * j);
            if (j >= len) {
                if (a)
                    return GL_E_PLAN;
                continue;
            }
            if (!atom_valid(a))
                return GL_E_PLAN;
            if ((written >> j) & 1) {
                if (last[j] != a)
                    return GL_E_PLAN; /* the writes leave byte j different from the final */
            } else if ((a >> 8) >= A_OFF && (a >> 8) <= A_REL) {
                return GL_E_PLAN; /* a target byte no step writes */
            }
            if ((a >> 8) >= A_OFF && (a >> 8) <= A_REL) {
                if (!domain_entry(t, slot, a >> 8))
                    return GL_E_PLAN; /* a field with no proven domain */
                uses_rel |= (a >> 8) == A_REL;
            }
        }
        if (uses_rel != (rel_end != 0) || rel_end > len)
            return GL_E_PLAN;
    }
    if (expect_first != t->step_count)
        return GL_E_PLAN;
    return GL_OK;
}

/* Region data used by the site checks: kept in the caller's order, read on demand. */
static int check_sites(const gl_table *t)
{
    uint32_t i, k;
    uint32_t prev_reg = 0;
    uint64_t prev_addr = 0, prev_end = 0;
    for (i = 0; i < t->site_count; i++) {
        const uint8_t *s = t->sites + (uint64_t)i * SITE_SIZE;
        uint64_t addr = rd64(s), raddr, rel;
        uint32_t foff = rd32(s + 8), reg = rd32(s + 12), sel = rd32(s + 20);
        uint32_t len = s[24], shape = s[25], kind = s[26], conf = s[27], flags = s[28];
        uint32_t gate = rd32(s + 16), rsize;
        int needs_sync = 0;
        const uint8_t *r;
        if (!all_zero(s + 29, 3) || !all_zero(s + 60, 4))
            return GL_E_SITE;
        if (reg >= t->region_count || len < 1 || len > 16)
            return GL_E_SITE;
        r = t->regions + (uint64_t)reg * REGION_SIZE;
        raddr = rd64(r);
        rsize = rd32(r + 12);
        if (addr < raddr)
            return GL_E_SITE;
        rel = addr - raddr;
        if (rel > rsize || len > rsize - rel)
            return GL_E_SITE;
        if ((uint64_t)foff != (uint64_t)rd32(r + 8) + rel)
            return GL_E_SITE;
        if (i) {
            if (reg < prev_reg || (reg == prev_reg && addr <= prev_addr))
                return GL_E_SITE; /* not sorted, or a duplicate */
            if (reg == prev_reg && addr < prev_end)
                return GL_E_SITE; /* overlaps the previous site */
        }
        prev_reg = reg;
        prev_addr = addr;
        prev_end = addr + len;
        if (shape >= SHAPE_COUNT || len != shape_length[shape] || kind > 3 || conf > 1)
            return GL_E_SITE;
        if (sel != NO_SELECTOR && sel > 0xFFFF)
            return GL_E_SITE;
        if ((flags & ~FLAG_BITS) || !(flags & GL_FLAG_EAGER) == !(flags & GL_FLAG_LAZY))
            return GL_E_SITE;
        if (!all_zero(s + 32 + len, 16 - len))
            return GL_E_SITE;
        for (k = 0; k < 4; k++) {
            uint32_t pi = rd16(s + 48 + 2 * k), sy = s[56 + k], j, written = 0;
            const uint8_t *p;
            if (k >= t->form_count || pi == NO_PLAN) {
                if (pi != NO_PLAN || sy != NO_SYNCS)
                    return GL_E_SITE;
                continue;
            }
            if (pi >= t->plan_count)
                return GL_E_SITE;
            p = t->plans + (uint64_t)pi * PLAN_SIZE;
            if (p[1] != t->forms[k] || p[0] != shape || p[3] != len || p[2] != r[24] || sy != p[6])
                return GL_E_SITE;
            /* bytes the plan never writes: its final must be what the site already holds */
            for (j = 0; j < rd16(p + 12); j++) {
                const uint8_t *st = t->steps + (uint64_t)(rd32(p + 8) + j) * STEP_SIZE;
                if (st[0] == 0)
                    written |= ((1u << st[2]) - 1) << st[1];
            }
            for (j = 0; j < len; j++) {
                uint16_t a;
                uint8_t b;
                if ((written >> j) & 1)
                    continue;
                a = rd16(p + 16 + 2 * j);
                b = (a >> 8) == A_GATE ? (uint8_t)(gate >> (8 * (a & 0xFF))) : (uint8_t)a;
                if (b != s[32 + j])
                    return GL_E_SITE;
            }
            needs_sync |= p[6] > 0;
        }
        if (!(flags & GL_FLAG_NEEDS_SYNC) != !needs_sync)
            return GL_E_SITE;
    }
    return GL_OK;
}

static int check_policy(gl_table *t)
{
    const uint8_t *p = t->policy;
    uint32_t i, n;
    const uint8_t *q;
    if (t->policy_size < 20)
        return GL_E_POLICY;
    t->pol_ud2 = p[8];
    t->pol_int3 = p[9];
    t->pol_invalid_count = rd16(p + 10);
    t->pol_rule_count = rd16(p + 12);
    t->pol_gate_count = rd16(p + 14);
    t->pol_vector_count = rd16(p + 16);
    if (rd16(p + 18) || t->pol_ud2 > 1 || t->pol_int3 > 1)
        return GL_E_POLICY;
    if (t->pol_invalid_count > MAX_POLICY_ITEMS || t->pol_rule_count > MAX_POLICY_ITEMS ||
        t->pol_gate_count > MAX_POLICY_ITEMS || t->pol_vector_count > MAX_POLICY_ITEMS)
        return GL_E_POLICY;
    n = 20u + 4u * t->pol_invalid_count + 8u * t->pol_rule_count + 4u * t->pol_gate_count + t->pol_vector_count;
    if (n != t->policy_size)
        return GL_E_POLICY;
    if (!string_ok(t, rd32(p), rd32(p + 4)))
        return GL_E_STRING;
    q = p + 20;
    t->pol_invalid = q;
    for (i = 0; i < t->pol_invalid_count; i++, q += 4)
        if (rd16(q) > rd16(q + 2))
            return GL_E_POLICY;
    t->pol_rules = q;
    for (i = 0; i < t->pol_rule_count; i++, q += 8) {
        uint32_t mask = q[0], ti = q[1], rpl = q[2], mn = rd16(q + 4), mx = rd16(q + 6);
        if ((mask & ~0xFu) || q[3] || ti > 1 || rpl > 3 || mn > 0x1FFF || mx > 0x1FFF)
            return GL_E_POLICY;
        if ((!(mask & 1) && ti) || (!(mask & 2) && rpl) || (!(mask & 4) && mn) || (!(mask & 8) && mx))
            return GL_E_POLICY;
    }
    t->pol_gates = q;
    for (i = 0; i < t->pol_gate_count; i++, q += 4)
        if (rd16(q) > rd16(q + 2))
            return GL_E_POLICY;
    t->pol_vectors = q;
    return GL_OK;
}

uint32_t gl_table_size(const void *bytes, size_t size)
{
    const uint8_t *p = (const uint8_t *)bytes;
    if (!p || size < 12 || p[0] != 'G' || p[1] != 'L' || p[2] != 'T' || p[3] != 'B')
        return 0;
    return rd32(p + 8);
}

int gl_table_open(gl_table *t, const void *bytes, size_t size)
{
    int rc;
    if (!t || !bytes)
        return GL_E_ARG;
    t->p = 0; /* not a table until every check passed */
    rc = check_header(t, (const uint8_t *)bytes, size);
    if (rc == GL_OK) rc = check_regions(t);
    if (rc == GL_OK) rc = check_steps(t);
    if (rc == GL_OK) rc = check_domains(t);
    if (rc == GL_OK) rc = check_plans(t);
    if (rc == GL_OK) rc = check_sites(t);
    if (rc == GL_OK) rc = check_policy(t);
    if (rc != GL_OK)
        t->p = 0;
    return rc;
}

int gl_table_identity(const gl_table *t, uint64_t file_size, const uint8_t *const *region_bytes)
{
    sha256 s;
    uint8_t d[32];
    uint32_t i;
    if (file_size != t->file_size)
        return GL_E_IDENTITY;
    sha_init(&s);
    for (i = 0; i < t->region_count; i++)
        sha_update(&s, region_bytes[i], gl_region_size(t, i));
    sha_final(&s, d);
    for (i = 0; i < 32; i++)
        if (d[i] != t->code_sha256[i])
            return GL_E_IDENTITY;
    return GL_OK;
}

/* ---- accessors ---------------------------------------------------------------------------- */

uint64_t gl_region_address(const gl_table *t, uint32_t i) { return rd64(t->regions + (uint64_t)i * REGION_SIZE); }
uint32_t gl_region_file_offset(const gl_table *t, uint32_t i) { return rd32(t->regions + (uint64_t)i * REGION_SIZE + 8); }
uint32_t gl_region_size(const gl_table *t, uint32_t i) { return rd32(t->regions + (uint64_t)i * REGION_SIZE + 12); }
uint8_t gl_region_bitness(const gl_table *t, uint32_t i) { return t->regions[(uint64_t)i * REGION_SIZE + 24]; }

static inline void site_decode(const gl_table *t, uint32_t i, gl_site *out)
{
    const uint8_t *s = t->sites + (uint64_t)i * SITE_SIZE;
    uint32_t k;
    out->address = rd64(s);
    out->file_offset = rd32(s + 8);
    out->region = rd32(s + 12);
    out->gate = rd32(s + 16);
    out->selector = rd32(s + 20);
    out->length = s[24];
    out->shape = s[25];
    out->gate_kind = s[26];
    out->confidence = s[27];
    out->flags = s[28];
    copy_bytes(out->original, s + 32, 16);
    for (k = 0; k < 4; k++) {
        out->plans[k] = rd16(s + 48 + 2 * k);
        out->syncs[k] = s[56 + k];
    }
}

void gl_site_get(const gl_table *t, uint32_t i, gl_site *out) { site_decode(t, i, out); }

uint32_t gl_table_find(const gl_table *t, uint32_t region, uint64_t address)
{
    uint32_t lo = 0, hi = t->site_count; /* first entry whose key is > (region, address) */
    const uint8_t *s;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        const uint8_t *m = t->sites + (uint64_t)mid * SITE_SIZE;
        uint32_t r = rd32(m + 12);
        if (r < region || (r == region && rd64(m) <= address))
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return GL_NO_SITE;
    s = t->sites + (uint64_t)(lo - 1) * SITE_SIZE;
    if (rd32(s + 12) != region || address - rd64(s) >= s[24])
        return GL_NO_SITE;
    return lo - 1;
}

int gl_in_domain(const gl_table *t, uint32_t slot, uint32_t field, uint32_t value)
{
    const uint8_t *d = domain_entry(t, slot, field);
    uint32_t lo, hi, first, count;
    if (!d)
        return 1; /* no entry: any 32-bit value */
    if (d[3] == 0)
        return d[2] >= 4 || value < (1u << (8 * d[2]));
    first = rd32(d + 4);
    count = rd32(d + 8);
    lo = first;
    hi = first + count; /* the first range whose lo is > value */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (rd32(t->ranges + (uint64_t)mid * RANGE_SIZE) <= value)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == first)
        return 0;
    {
        const uint8_t *r = t->ranges + (uint64_t)(lo - 1) * RANGE_SIZE;
        uint32_t rlo = rd32(r), rhi = rd32(r + 4), step = rd32(r + 8);
        return value <= rhi && (value - rlo) % step == 0;
    }
}

int gl_policy_invalid(const gl_table *t, uint32_t sel)
{
    uint32_t i;
    if (sel <= 7)
        return 1;
    for (i = 0; i < t->pol_invalid_count; i++) {
        const uint8_t *q = t->pol_invalid + 4 * i;
        if (rd16(q) <= sel && sel <= rd16(q + 2))
            return 1;
    }
    for (i = 0; i < t->pol_rule_count; i++) {
        const uint8_t *q = t->pol_rules + 8 * i;
        uint32_t mask = q[0];
        if ((mask & 1) && ((sel >> 2) & 1) != q[1])
            continue;
        if ((mask & 2) && (sel & 3) != q[2])
            continue;
        if ((mask & 4) && (sel >> 3) < rd16(q + 4))
            continue;
        if ((mask & 8) && (sel >> 3) > rd16(q + 6))
            continue;
        return 1;
    }
    return 0;
}

/* ---- binding: target, plan, filled bytes ------------------------------------------------------ */

#define UNPLANNED 1 /* internal: the site has no plan in any form */

/* Field values of one fill; `have` has bit (1 << atom kind) for each value present. */
typedef struct fill_values {
    uint32_t v[5];
    uint32_t have;
} fill_values;

GL_HOT int fill_atoms(uint8_t *out, const uint8_t *atoms, uint32_t n, const fill_values *fv)
{
    uint32_t j, need = 0;
    for (j = 0; j < n; j++) {
        uint32_t kind = atoms[2 * j + 1], lo = atoms[2 * j];
        need |= 1u << kind;
        /* a constant is its low byte; a field atom is byte `lo` of the field's value */
        out[j] = (uint8_t)(kind ? fv->v[kind] >> (8 * (lo & 3)) : lo);
    }
    /* every field the template uses must be one the target gives (bit 0: constants) */
    return !(need & ~(fv->have | 1u));
}

/* plans[k] of a site entry */
#define SITE_PLAN(sp, k) rd16((sp) + 48 + 2 * (k))

GL_HOT int has_any_plan(const uint8_t *sp)
{
    return SITE_PLAN(sp, 0) != NO_PLAN || SITE_PLAN(sp, 1) != NO_PLAN || SITE_PLAN(sp, 2) != NO_PLAN ||
           SITE_PLAN(sp, 3) != NO_PLAN;
}

/* The site's target and plan (docs/runtime.md, "Resolution"): the gate's own target when the
 * table has a plan for its form, else the kind's fallback when it has one for that. */
GL_HOT int resolve_site(const gl_runtime *rt, uint32_t i, const uint8_t *sp, gl_target *tg, uint32_t *slot)
{
    const gl_table *t = rt->table;
    int fb;
    if (!has_any_plan(sp))
        return UNPLANNED;
    for (fb = 0; fb < 2; fb++) {
        uint32_t k;
        tg->form = GL_FORM_NONE;
        if (!rt->os.resolve(rt->os.ctx, t, i, sp[26], rd32(sp + 16), fb, tg))
            return fb ? GL_E_NOPLAN : GL_E_RESOLVE;
        k = tg->form <= GL_FORM_PUSHCS ? slot_of(t, tg->form) : 0xFF;
        if (k != 0xFF && SITE_PLAN(sp, k) != NO_PLAN) {
            *slot = k;
            return GL_OK;
        }
    }
    return GL_E_NOPLAN;
}

/* What gl_apply already checked, so that a million sites do not repeat the same domain and
 * policy checks: per form slot, whether off / rel accept any value, and the last selector found
 * valid. (Only positive answers are cached.) */
#define SEL_WAYS 4
typedef struct check_cache {
    uint8_t any_known[4], off_any[4], rel_any[4], sel_n[4];
    uint32_t sel[4][SEL_WAYS];
} check_cache;

static int sel_cached(const check_cache *cc, uint32_t slot, uint32_t sel)
{
    uint32_t k;
    for (k = 0; k < cc->sel_n[slot]; k++)
        if (cc->sel[slot][k] == sel)
            return 1;
    return 0;
}

static int any_value(const gl_table *t, uint32_t slot, uint32_t field)
{
    const uint8_t *d = domain_entry(t, slot, field);
    return !d || (d[3] == 0 && d[2] >= 4);
}

/* Check the target's values against the slot's proven domains and the policy; fill fv. */
GL_HOT int target_values(const gl_table *t, uint32_t slot, const gl_target *tg, uint64_t code, uint32_t rel_end,
                         uint32_t gate, fill_values *fv, check_cache *cc)
{
    fv->have = 1u << A_GATE;
    fv->v[A_GATE] = gate;
    if (cc && !cc->any_known[slot]) {
        cc->off_any[slot] = (uint8_t)any_value(t, slot, A_OFF);
        cc->rel_any[slot] = (uint8_t)any_value(t, slot, A_REL);
        cc->any_known[slot] = 1;
    }
    switch (tg->form) {
    case GL_FORM_FAR:
        if (!(cc && cc->off_any[slot]) && !gl_in_domain(t, slot, A_OFF, tg->offset))
            return GL_E_VALUE;
        fv->v[A_OFF] = tg->offset;
        fv->have |= 1u << A_OFF;
        /* the selector is checked as for a call gate */
        /* falls through */
    case GL_FORM_CALLGATE:
        if (!(cc && sel_cached(cc, slot, tg->selector))) {
            if (!gl_in_domain(t, slot, A_SEL, tg->selector) || gl_policy_invalid(t, tg->selector))
                return GL_E_VALUE;
            if (cc) /* remember it; past SEL_WAYS selectors, replace the first */
                cc->sel[slot][cc->sel_n[slot] < SEL_WAYS ? cc->sel_n[slot]++ : 0] = tg->selector;
        }
        fv->v[A_SEL] = tg->selector;
        fv->have |= 1u << A_SEL;
        return GL_OK;
    default: { /* near, pushcs: rel32 from the end of the call */
        uint32_t rel = (uint32_t)(tg->target - (code + rel_end));
        if (!(cc && cc->rel_any[slot]) && !gl_in_domain(t, slot, A_REL, rel))
            return GL_E_VALUE;
        fv->v[A_REL] = rel;
        fv->have |= 1u << A_REL;
        return GL_OK;
    }
    }
}

static int bind(const gl_runtime *rt, uint32_t i, gl_patch *out, int steps, check_cache *cc)
{
    const gl_table *t = rt->table;
    gl_site s;
    gl_target tg;
    fill_values fv;
    uint32_t slot = 0, k, reg;
    const uint8_t *p;
    uint64_t delta;
    int rc;
    site_decode(t, i, &s);
    rc = resolve_site(rt, i, t->sites + (uint64_t)i * SITE_SIZE, &tg, &slot);
    if (rc != GL_OK)
        return rc;
    p = t->plans + (uint64_t)s.plans[slot] * PLAN_SIZE;
    reg = s.region;
    delta = s.address - gl_region_address(t, reg);
    out->site = i;
    out->memory = rt->place[reg].memory + (uintptr_t)delta;
    out->code = rt->place[reg].code + delta;
    out->length = s.length;
    out->resume = p[4];
    out->form = tg.form;
    rc = target_values(t, slot, &tg, out->code, p[5], s.gate, &fv, cc);
    if (rc != GL_OK)
        return rc;
    copy_bytes(out->original, s.original, 16);
    if (!fill_atoms(out->final, p + 16, s.length, &fv))
        return GL_E_NOPLAN;
    out->step_count = 0;
    if (!steps)
        return GL_OK;
    out->step_count = (uint8_t)rd16(p + 12);
    for (k = 0; k < out->step_count; k++) {
        const uint8_t *st = t->steps + (uint64_t)(rd32(p + 8) + k) * STEP_SIZE;
        gl_step *o = &out->steps[k];
        o->kind = st[0];
        o->offset = st[1];
        o->width = st[2];
        if (o->kind == 0 && !fill_atoms(o->data, st + 4, o->width, &fv))
            return GL_E_NOPLAN;
    }
    return GL_OK;
}

/* The final bytes of site i (the up-front path: no steps, nothing copied that is not needed). */
typedef struct final_view {
    uintptr_t memory;
    const uint8_t *original; /* in the table */
    uint8_t length, form;
    uint8_t final[16];
} final_view;

GL_HOT int bind_final(const gl_runtime *rt, uint32_t i, final_view *out, check_cache *cc)
{
    const gl_table *t = rt->table;
    const uint8_t *sp = t->sites + (uint64_t)i * SITE_SIZE;
    gl_target tg;
    fill_values fv;
    uint32_t slot = 0, reg;
    const uint8_t *p;
    uint64_t delta;
    int rc;
    rc = resolve_site(rt, i, sp, &tg, &slot);
    if (rc != GL_OK)
        return rc;
    p = t->plans + (uint64_t)SITE_PLAN(sp, slot) * PLAN_SIZE;
    reg = rd32(sp + 12);
    delta = rd64(sp) - gl_region_address(t, reg);
    out->memory = rt->place[reg].memory + (uintptr_t)delta;
    out->original = sp + 32;
    out->length = sp[24];
    out->form = tg.form;
    rc = target_values(t, slot, &tg, rt->place[reg].code + delta, p[5], rd32(sp + 16), &fv, cc);
    if (rc != GL_OK)
        return rc;
    return fill_atoms(out->final, p + 16, sp[24], &fv) ? GL_OK : GL_E_NOPLAN;
}

GL_HOT int plain_same(const uint8_t *a, const uint8_t *b, uint32_t n)
{
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) /* rd32 compiles to one (unaligned) load on x86 */
        if (rd32(a + i) != rd32(b + i))
            return 0;
    for (; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* Plain byte copy for up front; GCC and Clang turn the 4-byte steps into single moves. */
GL_HOT void plain_copy(uint8_t *dst, const uint8_t *src, uint32_t n)
{
    uint32_t i = 0;
#if defined(__GNUC__) || defined(__clang__)
    for (; i + 4 <= n; i += 4)
        __builtin_memcpy(dst + i, src + i, 4);
#endif
    for (; i < n; i++)
        dst[i] = src[i];
}

int gl_bind(const gl_runtime *rt, uint32_t site, gl_patch *out)
{
    int rc;
    if (!rt || !out || site >= rt->table->site_count)
        return GL_E_ARG;
    rc = bind(rt, site, out, 1, 0);
    return rc == UNPLANNED ? GL_E_NOPLAN : rc;
}

/* ---- the runtime ------------------------------------------------------------------------------ */

int gl_runtime_init(gl_runtime *rt, const gl_table *t, const gl_place *place, uint32_t *state, const gl_os *os,
                    int initial)
{
    uint32_t i;
    gl_patch p;
    if (!rt || !t || !t->p || !place || (!state && t->site_count) || !os || !os->resolve || !os->sync)
        return GL_E_ARG;
    rt->table = t;
    rt->place = place;
    rt->state = state;
    rt->os = *os;
    rt->foreign = 0;
    for (i = 0; i < t->site_count; i++) {
        uint32_t st = GL_UNTOUCHED;
        if (bind(rt, i, &p, 1, 0) != GL_OK) /* with the steps: every template must fill */
            st = GL_FOREIGN;
        else if (initial == GL_INIT_MEMORY) {
            const volatile uint8_t *m = (const volatile uint8_t *)p.memory;
            st = same_bytes(p.original, m, p.length) ? GL_UNTOUCHED
                 : same_bytes(p.final, m, p.length)  ? GL_DONE
                                                     : GL_FOREIGN;
        }
        rt->foreign += st == GL_FOREIGN;
        state[i] = st;
    }
    return GL_OK;
}

/* Put back the original bytes of the sites gl_apply wrote below site `end` (all or nothing). */
static void unapply(gl_runtime *rt, int which, uint32_t end)
{
    const gl_table *t = rt->table;
    uint32_t i, j;
    final_view f;
    for (i = 0; i < end; i++) {
        const uint8_t *s = t->sites + (uint64_t)i * SITE_SIZE;
        if ((which == GL_APPLY_EAGER && !(s[28] & GL_FLAG_EAGER)) || rt->state[i] != GL_DONE)
            continue;
        if (bind_final(rt, i, &f, 0) != GL_OK)
            continue;
        for (j = 0; j < f.length; j++)
            ((uint8_t *)f.memory)[j] = f.original[j];
        rt->state[i] = GL_UNTOUCHED;
    }
}

int gl_apply(gl_runtime *rt, int which, gl_apply_result *res)
{
    const gl_table *t = rt->table;
    uint32_t i, j, n = t->site_count, bad = GL_NO_SITE, nbad = 0, already = 0, planned = 0;
    final_view f;
    check_cache cc;
    int rc;
    for (i = 0; i < 4; i++) {
        res->per_form[i] = 0;
        cc.any_known[i] = cc.sel_n[i] = 0;
    }
    res->patched = res->lazy = res->unplanned = 0;
    res->bad_site = GL_NO_SITE;
    /* One pass: check each selected site and write its final. Up front no code runs yet, so
     * these are plain writes. After the first site that does not hold its original bytes, only
     * check (to tell "already patched" from "mismatch"), and put back what was written. */
    for (i = 0; i < n; i++) {
        const uint8_t *s = t->sites + (uint64_t)i * SITE_SIZE;
        uint8_t *m;
        if (which == GL_APPLY_EAGER && !(s[28] & GL_FLAG_EAGER)) {
            res->lazy++;
            continue;
        }
        rc = bind_final(rt, i, &f, &cc);
        if (rc == UNPLANNED) {
            res->unplanned++;
            continue;
        }
        if (rc != GL_OK) {
            unapply(rt, which, bad == GL_NO_SITE ? i : bad);
            res->patched = 0;
            for (j = 0; j < 4; j++)
                res->per_form[j] = 0;
            res->bad_site = i;
            return rc;
        }
        planned++;
        m = (uint8_t *)f.memory;
        if (!plain_same(f.original, m, f.length)) {
            if (bad == GL_NO_SITE)
                bad = i;
            nbad++;
            already += plain_same(f.final, m, f.length);
            continue;
        }
        if (bad != GL_NO_SITE)
            continue;
        plain_copy(m, f.final, f.length);
        rt->state[i] = GL_DONE;
        res->patched++;
        res->per_form[f.form]++;
    }
    if (nbad) {
        unapply(rt, which, bad);
        res->patched = 0;
        for (i = 0; i < 4; i++)
            res->per_form[i] = 0;
        res->bad_site = bad;
        return already == planned ? GL_E_PATCHED : GL_E_MISMATCH;
    }
    return GL_OK;
}

static void do_sync(gl_runtime *rt, uint32_t site, int why)
{
    if (rt->os.trace)
        rt->os.trace(rt->os.ctx, GL_TRACE_SYNC, site, 0, 0, 0);
    rt->os.sync(rt->os.ctx, why);
}

static void do_store(gl_runtime *rt, uint32_t site, uintptr_t base, uint32_t offset, const uint8_t *d, uint32_t width)
{
    uintptr_t a = base + offset;
    if (rt->os.trace)
        rt->os.trace(rt->os.ctx, GL_TRACE_STORE, site, offset, d, width);
    switch (width) {
    case 1: gl_store1(a, d[0]); break;
    case 2: gl_store2(a, rd16(d)); break;
    case 4: gl_store4(a, rd32(d)); break;
    default: gl_store8(a, rd32(d), rd32(d + 4)); break;
    }
}

void gl_run_steps(gl_runtime *rt, const gl_patch *p)
{
    uint32_t k;
    for (k = 0; k < p->step_count; k++) {
        const gl_step *s = &p->steps[k];
        if (s->kind == 1)
            do_sync(rt, p->site, GL_SYNC_STEP);
        else
            do_store(rt, p->site, p->memory, s->offset, s->data, s->width);
    }
}

/* The site holding code address P: in `region`, or the first region whose code holds P. */
static uint32_t find_code(const gl_runtime *rt, uint64_t P, int region)
{
    const gl_table *t = rt->table;
    uint32_t r = region >= 0 ? (uint32_t)region : 0, end = region >= 0 ? (uint32_t)region + 1 : t->region_count;
    if (region >= 0 && (uint32_t)region >= t->region_count)
        return GL_NO_SITE;
    for (; r < end; r++) {
        uint64_t code = rt->place[r].code, off;
        uint32_t i;
        if (P < code || (off = P - code) >= gl_region_size(t, r))
            continue;
        i = gl_table_find(t, r, gl_region_address(t, r) + off);
        if (i != GL_NO_SITE)
            return i;
    }
    return GL_NO_SITE;
}

int gl_fault_begin(const gl_runtime *rt, uint64_t address, int trap, int region, gl_fault_ctx *f)
{
    const gl_table *t = rt->table;
    uint32_t i, s;
    f->site = GL_NO_SITE;
    f->state = GL_FOREIGN;
    if ((trap == GL_TRAP_INT3 && !t->pol_int3) || (trap == GL_TRAP_INT && !t->pol_vector_count))
        return GL_ACT_DEFAULT;
    f->point = address - (trap == GL_TRAP_INT3 ? 1 : trap == GL_TRAP_INT ? 2 : 0);
    i = find_code(rt, f->point, region);
    if (i == GL_NO_SITE)
        return GL_ACT_DEFAULT;
    f->site = i;
    s = gl_load32(&rt->state[i]); /* the first read: it decides whose fault this is */
    f->state = s;
    if (s == GL_UNTOUCHED) {
        if (bind(rt, i, &f->patch, 1, 0) != GL_OK)
            return GL_ACT_DEFAULT;
        if (trap != GL_TRAP_FAULT || f->point != f->patch.code + f->patch.resume)
            return GL_ACT_DEFAULT; /* not the stub's own trap: a real fault */
        return GL_ACT_CONTINUE;
    }
    return s == GL_PATCHING ? GL_ACT_CONTINUE : GL_ACT_DEFAULT;
}

int gl_fault_finish(gl_runtime *rt, gl_fault_ctx *f, uint64_t *resume)
{
    volatile uint32_t *w;
    if (f->site == GL_NO_SITE)
        return GL_ACT_DEFAULT;
    w = &rt->state[f->site];
    if (f->state == GL_UNTOUCHED) {
        if (gl_cas32(w, GL_UNTOUCHED, GL_PATCHING)) {
            const gl_patch *p = &f->patch;
            if (!same_bytes(p->original, (const volatile uint8_t *)p->memory, p->length)) {
                gl_store32_release(w, GL_FOREIGN); /* changed by someone else: never patch it */
                return GL_ACT_DEFAULT;
            }
            gl_run_steps(rt, p);
            if (!p->step_count || p->steps[p->step_count - 1].kind != 1)
                do_sync(rt, p->site, GL_SYNC_RETIRE); /* no core can hold an older view after it */
            gl_store32_release(w, GL_DONE);
            *resume = f->point;
            return GL_ACT_PATCHED;
        }
        /* lost the claim: the winner owns the site now */
    }
    while (gl_load32(w) == GL_PATCHING) {
        if (rt->os.pause)
            rt->os.pause(rt->os.ctx);
        else
            gl_cpu_pause();
    }
    if (gl_load32(w) == GL_DONE) {
        *resume = f->point;
        return GL_ACT_WAITED;
    }
    return GL_ACT_DEFAULT;
}

int gl_fault(gl_runtime *rt, uint64_t address, int trap, int region, uint64_t *resume, uint32_t *site)
{
    gl_fault_ctx f;
    int act = gl_fault_begin(rt, address, trap, region, &f);
    if (act == GL_ACT_CONTINUE)
        act = gl_fault_finish(rt, &f, resume);
    if (site)
        *site = f.site;
    return act;
}

int gl_rearm(gl_runtime *rt, uint32_t site)
{
    volatile uint32_t *w;
    gl_patch p;
    uint32_t pos = 0;
    if (site >= rt->table->site_count)
        return 0;
    w = &rt->state[site];
    if (!gl_cas32(w, GL_DONE, GL_PATCHING))
        return 0;
    if (bind(rt, site, &p, 0, 0) != GL_OK || !same_bytes(p.final, (const volatile uint8_t *)p.memory, p.length)) {
        gl_store32_release(w, GL_DONE);
        return 0;
    }
    /* the original bytes as naturally aligned 8/4/2/1-byte stores (none crosses a line) */
    while (pos < p.length) {
        uint32_t n;
        for (n = 8; n; n >>= 1)
            if (pos + n <= p.length && ((p.memory + pos) & (n - 1)) == 0)
                break;
        do_store(rt, site, p.memory, pos, p.original + pos, n);
        pos += n;
    }
    do_sync(rt, site, GL_SYNC_REARM);
    gl_store32_release(w, GL_UNTOUCHED);
    return 1;
}

const char *gl_strerror(int code)
{
    static const char *const names[] = {
        "ok", "truncated or wrong size", "not a gatelink table (magic, version or header size)",
        "CRC-32 mismatch", "header field out of range", "section layout not as specified",
        "malformed region", "malformed step", "malformed domain", "malformed plan", "malformed site",
        "malformed policy", "bad string reference", "not the table's image (identity)", "bad argument",
        "no plan for the target's form", "no target for the gate", "target value outside the proven domain",
        "site bytes are not the original bytes", "already patched"};
    if (code > 0 || code < GL_E_PATCHED)
        return "unknown";
    return names[-code];
}
