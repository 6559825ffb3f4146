"""Benchmark corpus: one large PE32 of real compiled i386 code with planted gate stubs and decoys.

Generates, from a seed, C sources of varied library-like functions (checksum and hash loops,
switch statements that compile to jump tables, string and constant tables, struct and list
walks, insertion sorts, small matrix kernels, number parsers, floating point, call chains),
plants RDOS gate stubs between the compiled instructions as inline ``asm`` (``.byte`` sequences
of the 32-bit shapes A, C, F, G, H, I and the legacy L7, L7P, U5, U7), plants decoys (stub bytes
inside displacements and immediates of real instructions, stub forms with a selector no shape
uses, 16-bit forms in 32-bit code, stub bytes in ``.rdata`` tables and strings and in ``.data``),
compiles the translation units in parallel with ``i686-w64-mingw32-gcc -O2`` and links one
PE32.

The truth never comes from gatelink. Every planted stub and decoy carries an assembler label
(``gl_s<id>_%=`` / ``gl_d<id>_%=``; ``%=`` keeps the names unique if gcc duplicates an ``asm``,
and every copy is then a planted site); their addresses are read back with
``i686-w64-mingw32-nm`` and turned into file offsets with the section headers (pefile). The
bytes at each address must be the planted bytes, and capstone, decoding linearly from the start
of the enclosing function, must land on each site (a far call with the planted selector and gate,
or UD2) and must never land on the start of a decoy's stub pattern. The same capstone pass checks
that no other far call to a selector 0..7 (or UD2 with a gate marker) starts at an instruction
boundary anywhere in the code: the planted sites are all the sites there are.

The result is cached under ``benchmarks/out/`` keyed by the parameters (and the generator
version and gcc version), so a rerun only re-hashes the file. The output is deterministic: fixed
seeds, sorted inputs, relative paths, ``-Wl,--no-insert-timestamp``.

    python benchmarks/corpus.py [--size-mib 64] [--stubs 4000] [--decoys N] [--seed 1] [--jobs N] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

GEN_VERSION = 4  # bump when the generated sources or the truth format change
CC = "i686-w64-mingw32-gcc"
NM = "i686-w64-mingw32-nm"
CFLAGS = ["-O2", "-fno-ident"]
OUT_ROOT = Path(__file__).resolve().parent / "out"
FUNCS_PER_TU = 160

# --- stub shapes (rdos-facts section 1), written out here independently of gatelink ------------
# Current shapes: id -> (bytes up to and including the far-call opcode 9A, selector). A 32-bit
# gate and the selector word follow; G and H end with 5D (pop ebp). The legacy L7/L7P and UD2
# forms U5/U7 are spelled out in make_stub.
CUR = {
    "A": (b"\x3e\x67\x9a", 2),
    "C": (b"\x3e\x67\x9a", 3),
    "F": (b"\x67\x9a", 3),
    "G": (b"\x55\x67\x9a", 3),
    "H": (b"\x55\x67\x9a", 4),
    "I": (b"\x3e\x67\x9a", 4),
}
SHAPE_WEIGHTS = (("A", 15), ("C", 15), ("F", 15), ("G", 15), ("H", 8), ("I", 8),
                 ("L7", 6), ("L7P", 6), ("U5", 6), ("U7", 6))


@dataclass(frozen=True)
class Stub:
    shape: str
    gate: int
    selector: int | None
    marker: int | None
    data: bytes
    call_at: int  # where the far call / UD2 starts inside the site
    call_len: int = 0  # length of the far call (0 for UD2 forms)


def make_stub(shape: str, gate: int, selector: int | None = None, marker: int | None = None) -> Stub:
    if shape in CUR:
        prefix, sel = CUR[shape]
        sel = sel if selector is None else selector
        data = prefix + gate.to_bytes(4, "little") + sel.to_bytes(2, "little")
        call_at = 0
        if shape in ("G", "H"):
            data += b"\x5d"
            call_at = 1
        return Stub(shape, gate, sel, None, data, call_at, len(prefix) - call_at + 6)
    if shape in ("L7", "L7P"):
        assert selector in (1, 2, 3) and gate < 0x10000
        data = b"\x9a" + gate.to_bytes(2, "little") + b"\0\0" + selector.to_bytes(2, "little")
        if shape == "L7P":
            data += b"\x90\x90"
        return Stub(shape, gate, selector, None, data, 0, 7)
    if shape == "U5":
        assert marker in (0xCA, 0xCB) and gate < 0x10000
        return Stub(shape, gate, None, marker, b"\x0f\x0b" + bytes([marker]) + gate.to_bytes(2, "little"), 0)
    if shape == "U7":
        assert marker in (0xD6, 0xD7)
        return Stub(shape, gate, None, marker, b"\x0f\x0b" + bytes([marker]) + gate.to_bytes(4, "little"), 0)
    raise ValueError(shape)


def _gate(rng: random.Random, wide: bool) -> int:
    r = rng.random()
    if r < 0.85:
        return rng.randint(1, 882)
    if r < 0.95 or not wide:
        return rng.randint(883, 0xFFFF)
    return rng.randint(0x10000, 0xFFFFFFFF)


def random_stub(rng: random.Random) -> Stub:
    shape = rng.choices([s for s, _ in SHAPE_WEIGHTS], [w for _, w in SHAPE_WEIGHTS])[0]
    if shape in CUR:
        return make_stub(shape, _gate(rng, True))
    if shape in ("L7", "L7P"):
        return make_stub(shape, _gate(rng, False), selector=rng.choice((1, 2, 3)))
    if shape == "U5":
        return make_stub(shape, _gate(rng, False), marker=rng.choice((0xCA, 0xCB)))
    return make_stub(shape, _gate(rng, True), marker=rng.choice((0xD6, 0xD7)))


# --- C generation --------------------------------------------------------------------------------

PRELUDE = """\
typedef unsigned int u32;
typedef int i32;
typedef unsigned short u16;
typedef unsigned char u8;
struct item { u32 key; u32 flags; i32 value; struct item *next; u16 kind; u8 tag[6]; };
struct ctx { u32 state; u32 count; i32 acc; struct item *head; u8 *buf; u32 len; const char *name; u32 regs[8]; };
extern unsigned int strlen(const char *);
extern int memcmp(const void *, const void *, unsigned int);
extern void *memcpy(void *, const void *, unsigned int);
static struct ctx g_ctx;
static u8 g_buf[256];
static struct item g_items[16];
static const char *g_str = "gatelink";
"""

WORDS = ("open", "close", "read", "write", "seek", "alloc", "free", "lock", "unlock", "wait", "signal",
         "create", "delete", "map", "unmap", "send", "recv", "poll", "timer", "thread", "process",
         "device", "port", "irq", "dma", "page", "heap", "file", "dir", "handle", "event", "queue",
         "pci", "usb", "disk", "net", "tcp", "udp", "ip", "dns", "crc", "hash", "key", "mouse")

# signatures: 0 = (struct ctx *, u32, u32), 1 = (const u8 *, u32, u32), 2 = (struct item *, i32)
SIG_DECL = {
    0: "u32 {n}(struct ctx *c, u32 a, u32 b)",
    1: "u32 {n}(const u8 *p, u32 n, u32 seed)",
    2: "u32 {n}(struct item *it, i32 k)",
}


def _call(sig: int, name: str, a: str, b: str) -> str:
    if sig == 0:
        return f"{name}(&g_ctx, {a}, {b})"
    if sig == 1:
        return f"{name}(g_buf, ({a}) & 255u, {b})"
    return f"{name}(g_items, (i32)(({a}) & 15u))"


class Gen:
    """Writes one translation unit. ``slot()`` marks places where a stub or decoy may go."""

    def __init__(self, tu: int, seed: int, callees: list[tuple[str, int]]):
        self.tu = tu
        self.rng = random.Random(seed * 1_000_003 + tu)
        self.callees = callees  # (name, signature) of functions from earlier units
        self.local: list[tuple[str, int]] = []
        self.top: list[str] = []
        self.slots = 0
        self.uid = 0

    def name(self, base: str) -> str:
        self.uid += 1
        return f"{base}_{self.tu}_{self.uid}"

    def k(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return f"{self.rng.randint(1, 255)}u"
        if r < 0.8:
            return f"0x{self.rng.randint(0x100, 0xFFFF):x}u"
        return f"0x{self.rng.getrandbits(32):08x}u"

    def expr(self, vs: list[str], depth: int = 0) -> str:
        """A random u32 expression over ``vs``; every subexpression is written once."""
        r = self.rng
        if depth > 2 or r.random() < 0.3:
            return r.choice(vs) if r.random() < 0.7 else self.k()
        op = r.choice(("+", "-", "^", "|", "&", "*", "<<", ">>", "rot", "rot", "?:"))
        if op in ("<<", ">>"):
            return f"(({self.expr(vs, depth + 1)}) {op} {r.randint(1, 31)})"
        if op == "rot":
            v = r.choice(vs)
            s = r.randint(1, 31)
            return f"(({v} << {s}) | ({v} >> {32 - s}))"
        if op == "?:":
            return f"((({r.choice(vs)}) & {1 << r.randint(0, 31)}u) ? ({self.expr(vs, depth + 1)}) : ({self.k()}))"
        return f"(({self.expr(vs, depth + 1)}) {op} ({self.expr(vs, depth + 1)}))"

    def stmts(self, vs: list[str], lhs: list[str], n: int) -> str:
        out = []
        for _ in range(n):
            v = self.rng.choice(lhs)
            op = self.rng.choice(("=", "+=", "^=", "-=", "|="))
            out.append(f"{v} {op} {self.expr(vs)};")
        return " ".join(out)

    def call(self, a: str, b: str) -> str:
        pool = self.local[-12:] + self.callees
        if not pool:
            return self.k()
        name, sig = self.rng.choice(pool)
        return _call(sig, name, a, b)

    def slot(self) -> str:
        self.slots += 1
        return "@SLOT@"

    # -- templates ----------------------------------------------------------------------------------

    def t_checksum(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("crc")
        tbl = self.name("tbl")
        vals = ", ".join(f"0x{r.getrandbits(32):08x}u" for _ in range(16))
        self.top.append(f"static const u32 {tbl}[16] = {{ {vals} }};")
        body = f"""{SIG_DECL[1].format(n=n)} {{
  u32 acc = seed ^ {self.k()}, x = 0, i;
  for (i = 0; i < n; i++) {{
    x = p[i];
    acc = (acc >> 4) ^ {tbl}[(acc ^ x) & 15u];
    acc = (acc >> 4) ^ {tbl}[(acc ^ (x >> 4)) & 15u];
    if ((acc & {(m := r.randint(1, 255))}u) == {r.randint(0, 255) & m}u) {{ {self.stmts(['acc', 'x', 'i'], ['acc'], r.randint(1, 3))} {self.slot()} }}
  }}
  {self.slot()}
  {self.stmts(['acc', 'x', 'n'], ['acc'], r.randint(1, 4))}
  return acc ^ {self.k()};
}}"""
        return body, 1

    def t_dispatch(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("dispatch")
        cases = []
        ncase = r.randint(8, 40)
        base = r.randint(0, 20)
        for i in range(ncase):
            parts = [self.stmts(["acc", "x", "a", "b", "c->count", "c->regs[1]"],
                                ["acc", "x", "c->state", "c->regs[" + str(r.randint(0, 7)) + "]"], r.randint(1, 3))]
            if r.random() < 0.25:
                parts.append(f"acc += {self.call('x', 'acc')};")
            if r.random() < 0.15:
                parts.append(self.slot())
            end = "break;" if r.random() < 0.85 else "/* fall through */"
            cases.append(f"    case {base + i}: {' '.join(parts)} {end}")
        body = f"""{SIG_DECL[0].format(n=n)} {{
  u32 acc = c->acc, x = a ^ {self.k()};
  switch (b) {{
{chr(10).join(cases)}
    default: acc = {self.expr(['acc', 'x', 'a'])}; {self.slot()} break;
  }}
  c->count++;
  c->acc = (i32)acc;
  return acc + x;
}}"""
        return body, 0

    def t_strtab(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("lookup")
        tbl = self.name("names")
        k = r.randint(6, 24)
        names = ", ".join(f'"{r.choice(WORDS)}_{r.choice(WORDS)}{r.randint(0, 99)}"' for _ in range(k))
        self.top.append(f"static const char *const {tbl}[{k}] = {{ {names} }};")
        body = f"""{SIG_DECL[0].format(n=n)} {{
  u32 acc = 0, x = a, i, j;
  const char *s = c->name ? c->name : g_str;
  for (i = 0; i < {k}u; i++) {{
    const char *t = {tbl}[i];
    for (j = 0; t[j] && s[j] == t[j]; j++) acc += (u32)t[j] * {r.randint(3, 99)}u;
    if (!t[j] && !s[j]) {{ x ^= i; {self.slot()} break; }}
    acc = (acc << 3) ^ (u32)strlen(t) ^ b;
  }}
  {self.stmts(['acc', 'x', 'b'], ['acc', 'x'], r.randint(1, 3))}
  return acc ^ x;
}}"""
        return body, 0

    def t_list(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("walk")
        body = f"""{SIG_DECL[2].format(n=n)} {{
  u32 acc = 0, x = (u32)k, count = 0;
  i32 best = -2147483647;
  while (it) {{
    if (it->kind == {r.randint(0, 9)}u) {{ it->flags |= {1 << r.randint(0, 15)}u; {self.slot()} }}
    else if ((it->key & {r.randint(1, 255)}u) > {r.randint(0, 200)}u) it->value += k;
    {self.stmts(['acc', 'x', 'it->key', 'it->flags', 'count'], ['acc', 'x'], r.randint(1, 3))}
    if (it->value > best) best = it->value;
    it->tag[count % 6u] = (u8)acc;
    count++;
    it = it->next;
  }}
  {self.slot()}
  return acc + (u32)best + count * {r.randint(3, 77)}u + x;
}}"""
        return body, 2

    def t_matrix(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("mat")
        d = r.randint(3, 8)
        body = f"""{SIG_DECL[0].format(n=n)} {{
  u32 m[{d}][{d}], v[{d}], acc = a, x = b, i, j;
  for (i = 0; i < {d}u; i++) {{
    v[i] = c->regs[i & 7u] ^ (i * {self.k()});
    for (j = 0; j < {d}u; j++) m[i][j] = (i + {r.randint(1, 9)}u) * (j ^ a) + {self.k()};
  }}
  for (i = 0; i < {d}u; i++) {{
    u32 s = 0;
    for (j = 0; j < {d}u; j++) s += m[i][j] * v[j];
    acc ^= s + (acc << {r.randint(1, 7)});
    if (s > {r.randint(1, 0x7fffffff)}u) {{ x += s; {self.slot()} }}
  }}
  {self.stmts(['acc', 'x'], ['acc'], r.randint(1, 3))}
  c->regs[{r.randint(0, 7)}] = acc;
  return acc ^ x;
}}"""
        return body, 0

    def t_parse(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("parse")
        body = f"""{SIG_DECL[1].format(n=n)} {{
  u32 acc = 0, x = seed, i = 0, base = {r.choice((8, 10, 16))}u, fields = 0;
  while (i < n) {{
    u32 ch = p[i++];
    u32 d;
    if (ch >= '0' && ch <= '9') d = ch - '0';
    else if (ch >= 'a' && ch <= 'f') d = ch - 'a' + 10u;
    else if (ch >= 'A' && ch <= 'F') d = ch - 'A' + 10u;
    else if (ch == ',' || ch == ';') {{ x ^= acc * {r.randint(3, 999)}u; acc = 0; fields++; continue; }}
    else if (ch == '#') {{ base = 16u; {self.slot()} continue; }}
    else break;
    if (d >= base) {{ x += {self.k()}; break; }}
    acc = acc * base + d;
  }}
  {self.stmts(['acc', 'x', 'fields'], ['x'], r.randint(1, 3))}
  return x + fields;
}}"""
        return body, 1

    def t_float(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("poly")
        coeffs = [f"{r.uniform(-9, 9):.6f}" for _ in range(r.randint(3, 9))]
        horner = "0.0"
        for co in coeffs:
            horner = f"({horner}) * t + {co}"
        body = f"""{SIG_DECL[0].format(n=n)} {{
  u32 acc = a, x = b, i;
  double t = (double)(i32)a / {r.randint(2, 999)}.0, s = 0.0;
  for (i = 0; i < (b & 15u); i++) {{
    s += {horner};
    t = t * {r.uniform(0.1, 0.9):.4f} + {r.uniform(-2, 2):.4f};
  }}
  if (s > {r.uniform(-100, 100):.3f}) {{ acc ^= (u32)(i32)s; {self.slot()} }}
  {self.stmts(['acc', 'x'], ['acc'], r.randint(1, 2))}
  c->acc += (i32)acc;
  return acc + x;
}}"""
        return body, 0

    def t_sort(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("sort")
        body = f"""{SIG_DECL[2].format(n=n)} {{
  u32 acc = 0, x = (u32)k, i, j, cnt = (u32)k & 15u;
  for (i = 1; i < cnt; i++) {{
    struct item tmp = it[i];
    j = i;
    while (j > 0 && it[j - 1].key > tmp.key) {{ it[j] = it[j - 1]; j--; }}
    it[j] = tmp;
    acc += tmp.key * {r.randint(3, 99)}u;
  }}
  for (i = 0; i < cnt; i++) {{
    if (it[i].flags & {1 << r.randint(0, 15)}u) {{ x ^= it[i].key; {self.slot()} }}
    {self.stmts(['acc', 'x', 'i'], ['acc'], r.randint(1, 2))}
  }}
  return acc ^ x;
}}"""
        return body, 2

    def t_hash(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("hash")
        body = f"""{SIG_DECL[1].format(n=n)} {{
  u32 acc = seed ^ {self.k()}, x = 0, i;
  for (i = 0; i + 4u <= n; i += 4u) {{
    x = (u32)p[i] | ((u32)p[i + 1] << 8) | ((u32)p[i + 2] << 16) | ((u32)p[i + 3] << 24);
    x *= {self.k()};
    x = (x << {r.randint(5, 27)}) | (x >> {32 - r.randint(5, 27)});
    acc ^= x;
    acc = ((acc << {r.randint(5, 27)}) | (acc >> {r.randint(5, 27)})) * 5u + {self.k()};
    if ((acc >> {r.randint(20, 30)}) == {r.randint(0, 3)}u) {{ {self.slot()} }}
  }}
  for (; i < n; i++) acc = (acc ^ p[i]) * {self.k()};
  acc ^= n; acc ^= acc >> 16; acc *= {self.k()}; acc ^= acc >> 13;
  {self.slot()}
  return acc;
}}"""
        return body, 1

    def t_state(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("fsm")
        states = r.randint(4, 12)
        cases = []
        for s in range(states):
            nxt = (s + 1) % states
            extra = self.slot() if r.random() < 0.2 else ""
            cases.append(f"      case {s}u: if (ch {r.choice(('<', '>', '!='))} {r.randint(32, 126)}u) st = {nxt}u; "
                         f"else {{ {self.stmts(['acc', 'x', 'ch'], ['acc', 'x'], 1)} }} {extra} break;")
        body = f"""{SIG_DECL[1].format(n=n)} {{
  u32 acc = seed, x = 0, st = 0, i;
  for (i = 0; i < n; i++) {{
    u32 ch = p[i];
    switch (st) {{
{chr(10).join(cases)}
      default: st = 0; break;
    }}
    x += st;
  }}
  return acc ^ (x << 1);
}}"""
        return body, 1

    def t_chain(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("chain")
        calls = []
        for _ in range(r.randint(2, 6)):
            calls.append(f"  acc += {self.call('x', 'acc')};")
            if r.random() < 0.4:
                calls.append(f"  if (acc & {1 << r.randint(0, 31)}u) {{ x = {self.expr(['acc', 'x', 'a'])}; {self.slot()} }}")
        body = f"""{SIG_DECL[0].format(n=n)} {{
  u32 acc = a, x = b;
  if (!c) return 0;
{chr(10).join(calls)}
  c->state = acc;
  memcpy(c->regs, &acc, sizeof acc);
  return acc ^ x;
}}"""
        return body, 0

    # -- composite functions: a sequence of blocks over shared variables ---------------------------
    # Variables in scope: c (struct ctx *), a, b, acc, x (u32), p (const u8 *), n (u32).

    def b_crc(self) -> str:
        r = self.rng
        tbl = self.name("ctbl")
        vals = ", ".join(f"0x{r.getrandbits(32):08x}u" for _ in range(16))
        self.top.append(f"static const u32 {tbl}[16] = {{ {vals} }};")
        return f"""  {{ u32 i;
    for (i = 0; i < n; i++) {{
      u32 ch = p[i];
      acc = (acc >> 4) ^ {tbl}[(acc ^ ch) & 15u];
      acc = (acc >> 4) ^ {tbl}[(acc ^ (ch >> 4)) & 15u];
      if ((acc & {(m := r.randint(1, 255))}u) == {r.randint(0, 255) & m}u) {{ {self.stmts(['acc', 'x', 'i', 'ch'], ['x'], r.randint(1, 2))} {self.slot()} }}
    }} }}"""

    def b_switch(self) -> str:
        r = self.rng
        cases = []
        ncase = r.randint(8, 48)
        lhs = ["acc", "x", "c->state", f"c->regs[{r.randint(0, 7)}]", f"c->regs[{r.randint(0, 7)}]"]
        for i in range(ncase):
            parts = [self.stmts(["acc", "x", "a", "b", "c->count", f"c->regs[{r.randint(0, 7)}]"], lhs, r.randint(1, 3))]
            if r.random() < 0.15:
                parts.append(f"acc += {self.call('x', 'acc')};")
            if r.random() < 0.12:
                parts.append(self.slot())
            cases.append(f"    case {i}: {' '.join(parts)} {'break;' if r.random() < 0.85 else ''}")
        sel = r.choice(("b", "x", "(acc >> 3)", "c->state", "(a ^ b)"))
        return f"""  switch ({sel} % {ncase + r.randint(0, 4)}u) {{
{chr(10).join(cases)}
    default: {self.stmts(['acc', 'x', 'a'], ['acc'], 1)} break;
  }}"""

    def b_strtab(self) -> str:
        r = self.rng
        tbl = self.name("names")
        k = r.randint(6, 24)
        names = ", ".join(f'"{r.choice(WORDS)}_{r.choice(WORDS)}{r.randint(0, 99)}"' for _ in range(k))
        self.top.append(f"static const char *const {tbl}[{k}] = {{ {names} }};")
        return f"""  {{ u32 i, j; const char *s = c->name ? c->name : g_str;
    for (i = 0; i < {k}u; i++) {{
      const char *t = {tbl}[i];
      for (j = 0; t[j] && s[j] == t[j]; j++) acc += (u32)t[j] * {r.randint(3, 99)}u;
      if (!t[j] && !s[j]) {{ x ^= i; {self.slot()} break; }}
      acc = (acc << 3) ^ (u32)strlen(t) ^ b;
    }} }}"""

    def b_list(self) -> str:
        r = self.rng
        return f"""  {{ struct item *it = c->head; u32 cnt = 0; i32 best = -2147483647;
    while (it) {{
      if (it->kind == {r.randint(0, 9)}u) {{ it->flags |= {1 << r.randint(0, 15)}u; {self.slot()} }}
      else if ((it->key & {r.randint(1, 255)}u) > {r.randint(0, 200)}u) it->value += (i32)a;
      {self.stmts(['acc', 'x', 'it->key', 'it->flags', 'cnt'], ['acc', 'x'], r.randint(1, 3))}
      if (it->value > best) best = it->value;
      it->tag[cnt % 6u] = (u8)acc;
      cnt++;
      it = it->next;
    }}
    acc += (u32)best + cnt * {r.randint(3, 77)}u; }}"""

    def b_matrix(self) -> str:
        r = self.rng
        d = r.randint(3, 8)
        return f"""  {{ u32 m[{d}][{d}], v[{d}], i, j;
    for (i = 0; i < {d}u; i++) {{
      v[i] = c->regs[i & 7u] ^ (i * {self.k()});
      for (j = 0; j < {d}u; j++) m[i][j] = (i + {r.randint(1, 9)}u) * (j ^ a) + {self.k()};
    }}
    for (i = 0; i < {d}u; i++) {{
      u32 s = 0;
      for (j = 0; j < {d}u; j++) s += m[i][j] * v[j];
      acc ^= s + (acc << {r.randint(1, 7)});
      if (s > {r.randint(1, 0x7fffffff)}u) {{ x += s; {self.slot()} }}
    }} }}"""

    def b_parse(self) -> str:
        r = self.rng
        return f"""  {{ u32 i = 0, base = {r.choice((8, 10, 16))}u, fields = 0, v = 0;
    while (i < n) {{
      u32 ch = p[i++], d;
      if (ch >= '0' && ch <= '9') d = ch - '0';
      else if (ch >= 'a' && ch <= 'f') d = ch - 'a' + 10u;
      else if (ch >= 'A' && ch <= 'F') d = ch - 'A' + 10u;
      else if (ch == ',' || ch == ';') {{ x ^= v * {r.randint(3, 999)}u; v = 0; fields++; continue; }}
      else if (ch == '#') {{ base = 16u; {self.slot()} continue; }}
      else break;
      if (d >= base) {{ x += {self.k()}; break; }}
      v = v * base + d;
    }}
    acc += v ^ fields; }}"""

    def b_float(self) -> str:
        r = self.rng
        horner = "0.0"
        for _ in range(r.randint(3, 9)):
            horner = f"({horner}) * t + {r.uniform(-9, 9):.6f}"
        return f"""  {{ u32 i; double t = (double)(i32)acc / {r.randint(2, 999)}.0, s = 0.0;
    for (i = 0; i < (b & 15u); i++) {{
      s += {horner};
      t = t * {r.uniform(0.1, 0.9):.4f} + {r.uniform(-2, 2):.4f};
    }}
    if (s > {r.uniform(-100, 100):.3f}) {{ acc ^= (u32)(i32)s; {self.slot()} }} }}"""

    def b_hash(self) -> str:
        r = self.rng
        return f"""  {{ u32 i;
    for (i = 0; i + 4u <= n; i += 4u) {{
      u32 w = (u32)p[i] | ((u32)p[i + 1] << 8) | ((u32)p[i + 2] << 16) | ((u32)p[i + 3] << 24);
      w *= {self.k()};
      w = (w << {(s := r.randint(5, 27))}) | (w >> {32 - s});
      acc ^= w;
      acc = ((acc << {(t := r.randint(5, 27))}) | (acc >> {32 - t})) * 5u + {self.k()};
      if ((acc >> {r.randint(20, 30)}) == {r.randint(0, 3)}u) {{ {self.slot()} }}
    }}
    for (; i < n; i++) acc = (acc ^ p[i]) * {self.k()};
    acc ^= n; acc ^= acc >> 16; acc *= {self.k()}; acc ^= acc >> 13; }}"""

    def b_fsm(self) -> str:
        r = self.rng
        states = r.randint(4, 12)
        cases = []
        for st in range(states):
            extra = self.slot() if r.random() < 0.15 else ""
            cases.append(f"        case {st}u: if (ch {r.choice(('<', '>', '!='))} {r.randint(32, 126)}u) st = {(st + 1) % states}u; "
                         f"else if (ch == {r.randint(32, 126)}u) st = {r.randint(0, states - 1)}u; "
                         f"else {{ {self.stmts(['acc', 'x', 'ch'], ['acc', 'x'], 1)} }} {extra} break;")
        return f"""  {{ u32 st = 0, i;
    for (i = 0; i < n; i++) {{
      u32 ch = p[i];
      switch (st) {{
{chr(10).join(cases)}
        default: st = 0; break;
      }}
      x += st;
    }} }}"""

    def b_calls(self) -> str:
        r = self.rng
        out = []
        for _ in range(r.randint(1, 4)):
            out.append(f"  acc += {self.call('x', 'acc')};")
            if r.random() < 0.4:
                out.append(f"  if (acc & {1 << r.randint(0, 31)}u) {{ x = {self.expr(['acc', 'x', 'a'])}; {self.slot()} }}")
        return "\n".join(out)

    def b_arith(self) -> str:
        r = self.rng
        out = [f"  {self.stmts(['acc', 'x', 'a', 'b', 'n'], ['acc', 'x'], r.randint(2, 6))}"]
        if r.random() < 0.5:
            cond = r.choice((f"(a & {1 << r.randint(0, 31)}u)", f"((a ^ b) > {r.randint(1, 0x7fffffff)}u)",
                             f"((c->count & {(m := r.randint(1, 255))}u) == {r.randint(0, 255) & m}u)"))
            out.append(f"  if {cond} {{ {self.stmts(['acc', 'x'], ['acc'], 2)} {self.slot()} }}"
                       f" else {{ {self.stmts(['acc', 'x', 'b'], ['x'], 2)} }}")
        return "\n".join(out)

    BLOCKS = ("b_crc", "b_switch", "b_strtab", "b_list", "b_matrix", "b_parse", "b_float", "b_hash", "b_fsm",
              "b_calls", "b_arith")
    BLOCK_WEIGHTS = (8, 22, 4, 6, 6, 6, 4, 8, 8, 10, 18)

    def t_composite(self) -> tuple[str, int]:
        r = self.rng
        n = self.name("fn")
        blocks = [getattr(self, b)() for b in r.choices(self.BLOCKS, self.BLOCK_WEIGHTS, k=r.randint(3, 12))]
        body = f"""{SIG_DECL[0].format(n=n)} {{
  u32 acc = a ^ {self.k()}, x = b;
  const u8 *p = c->buf;
  u32 n = c->len & 4095u;
{chr(10).join(blocks)}
  c->acc += (i32)acc;
  return acc ^ x;
}}"""
        return body, 0

    TEMPLATES = ("t_checksum", "t_dispatch", "t_strtab", "t_list", "t_matrix", "t_parse", "t_float",
                 "t_sort", "t_hash", "t_state", "t_chain", "t_composite")
    WEIGHTS = (3, 4, 2, 2, 2, 2, 2, 2, 3, 3, 2, 60)

    def functions(self, count: int) -> list[tuple[str, str, int]]:
        """(name, C text with @SLOT@ markers, signature) for ``count`` functions."""
        out = []
        for _ in range(count):
            t = self.rng.choices(self.TEMPLATES, self.WEIGHTS)[0]
            text, sig = getattr(self, t)()
            name = re.match(r"u32 (\w+)\(", text).group(1)  # type: ignore[union-attr]
            self.local.append((name, sig))
            out.append((name, text, sig))
        return out


# --- planted items ---------------------------------------------------------------------------------


def stub_stmt(sid: int, st: Stub, rng: random.Random) -> str:
    """An inline asm statement holding the stub, with a label at its first byte."""
    data = ",".join(f"0x{b:02x}" for b in st.data)
    label = f"gl_s{sid}_%="
    tail = ""
    if st.shape == "L7":
        tail = "\\n\\tmovl %%eax, %%eax"  # keep a following nop pair from turning L7 into L7P
    v = rng.randrange(3)
    if v == 0:
        return (f'{{ u32 r_; u8 cf_; __asm__ __volatile__("{label}:\\n\\t.byte {data}{tail}" : "=a"(r_), "=@ccc"(cf_) '
                f': "b"(x), "c"(acc) : "edx", "memory"); if (cf_) acc = 0; else acc += r_; }}')
    if v == 1:
        return f'__asm__ __volatile__("{label}:\\n\\t.byte {data}{tail}" : : : "eax", "ecx", "edx", "memory");'
    return (f'{{ u32 r_; __asm__ __volatile__("{label}:\\n\\t.byte {data}{tail}" : "=a"(r_) : "a"(x), "d"(acc) '
            f': "ecx", "memory"); acc ^= r_; }}')


@dataclass(frozen=True)
class Decoy:
    kind: str
    look: str  # the shape (or family) the bytes resemble
    pat_at: int  # offset of the stub pattern from the label
    pattern: bytes  # the stub-like bytes
    expect: bytes | None  # the exact bytes expected at the label (code decoys)
    stmt: str  # C statement (code decoys) or top-level definition (data decoys)
    note: str


def _looks_like(d: Decoy) -> bool:
    """The decoy's bytes really have the form they imitate (a far call to a selector 0..7 with the
    shape's fixed bytes, or UD2 and a gate marker)."""
    p = d.pattern
    if d.kind == "bad-selector":
        q = p.index(0x9A)
        return p[:q + 1] == bytes.fromhex(d.look) and p[q + 5] <= 7 and p[q + 6] == 0
    if d.kind == "wrong-bitness":
        return p[:3] == b"\x67\x66\x9a" and p[7] in (1, 2, 3) and p[8] == 0
    if d.look in CUR:
        prefix, sel = CUR[d.look]
        n = len(prefix) + 6
        suffix = b"\x5d" if d.look in ("G", "H") else b""
        return p[:len(prefix)] == prefix and p[n - 2] == sel and p[n - 1] == 0 and p[n:] == suffix
    if d.look == "L7":
        return len(p) == 7 and p[0] == 0x9A and p[3:5] == b"\0\0" and p[5] in (1, 2, 3) and p[6] == 0
    if d.look in ("U5", "U7"):
        return p[:2] == b"\x0f\x0b" and p[2] in ((0xCA, 0xCB) if d.look == "U5" else (0xD6, 0xD7))
    return False


def _le(b: bytes) -> int:
    return int.from_bytes(b, "little")


def code_decoy(did: int, rng: random.Random) -> Decoy:
    label = f"gl_d{did}_%="
    kind = rng.choices(("displacement", "immediate", "bad-selector", "wrong-bitness"), (40, 35, 13, 12))[0]
    if kind == "displacement":
        look = rng.choice(("A", "C", "I", "F", "G", "H", "L7", "U5", "U7"))
        g = _gate(rng, True).to_bytes(4, "little")
        if look in ("A", "C", "I"):
            sel = CUR[look][1]
            pat = b"\x3e\x67\x9a" + g + bytes([sel, 0])
            # cmp dword [esi+edi+disp32], imm32: 81 BC 3E d32 i32 (SIB byte 3E)
            disp, imm = pat[1:5], pat[5:9]
            asm = f"cmpl $0x{_le(imm):x}, 0x{_le(disp):x}(%%esi,%%edi,1)"
            expect = b"\x81\xbc" + pat
            return Decoy(kind, look, 2, pat, expect, _dstmt(label, asm, "S", "D"), "SIB, disp32 and imm32 of cmp")
        if look in ("G", "H"):
            sel = CUR[look][1]
            pat = b"\x55\x67\x9a" + g + bytes([sel, 0]) + b"\x5d"
            disp, imm = pat[1:5], pat[5:9]
            asm = f"pushl %%ebp\\n\\tcmpl $0x{_le(imm):x}, 0x{_le(disp):x}(%%ebp,%%edx,2)\\n\\tpopl %%ebp"
            expect = b"\x55\x81\xbc" + pat
            return Decoy(kind, look, 3, pat, expect, _dstmt(label, asm, "d", "a"), "SIB, disp32, imm32 of cmp, then pop ebp")
        if look == "F":
            pat = b"\x67\x9a" + g + b"\x03\x00"
            disp, imm = pat[0:4], pat[4:8]
            asm = f"cmpl $0x{_le(imm):x}, 0x{_le(disp):x}(%%ecx)"
            expect = b"\x81\xb9" + pat
            return Decoy(kind, look, 2, pat, expect, _dstmt(label, asm, "c", "a"), "disp32 and imm32 of cmp")
        if look == "L7":
            pat = b"\x9a" + g[:2] + b"\0\0" + bytes([rng.choice((1, 2, 3)), 0])
            disp, imm = bytes([rng.randint(0x10, 0xEF)]) + pat[0:3], pat[3:7]
            asm = f"cmpl $0x{_le(imm):x}, 0x{_le(disp):x}(%%ecx)"
            expect = b"\x81\xb9" + disp + imm
            return Decoy(kind, look, 3, pat, expect, _dstmt(label, asm, "c", "a"), "disp32 and imm32 of cmp")
        marker = rng.choice((0xCA, 0xCB) if look == "U5" else (0xD6, 0xD7))
        pat = b"\x0f\x0b" + bytes([marker]) + (g[:2] if look == "U5" else g)
        raw = (pat + bytes(rng.randint(1, 255) for _ in range(8)))[:8]
        disp, imm = raw[0:4], raw[4:8]
        asm = f"cmpl $0x{_le(imm):x}, 0x{_le(disp):x}(%%ecx)"
        expect = b"\x81\xb9" + raw
        return Decoy(kind, look, 2, pat, expect, _dstmt(label, asm, "c", "a"), "disp32 and imm32 of cmp")
    if kind == "immediate":
        look = rng.choice(("A", "C", "I", "F", "G", "H"))
        g0, g3, x = rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)
        if look == "F":
            # mov eax, imm32 (67 9A g0 g1 in the top bytes); add eax, imm32 (05 g3 03 00 x)
            g1 = rng.randint(0, 255)
            mov = bytes([0x67, 0x9A, g0, g1])
            add = bytes([g3, 0x03, 0x00, x])
            asm = f"movl $0x{_le(mov):x}, %%eax\\n\\taddl $0x{_le(add):x}, %%eax"
            expect = b"\xb8" + mov + b"\x05" + add
            pat = expect[1:9]
            return Decoy(kind, look, 1, pat, expect, _dstmt(label, asm, "a", "d", clobber_a=True),
                         "mov eax, imm32 then add eax, imm32")
        sel = CUR[look][1]
        if look in ("G", "H"):
            mov = bytes([rng.randint(0, 255), 0x55, 0x67, 0x9A])  # 9A ends the mov: 69 D0 i0 i1 is the gate
            imm = bytes([g0, g3, sel, 0x00])
            asm = (f"pushl %%ebp\\n\\tmovl $0x{_le(mov):x}, %%eax\\n\\timull $0x{_le(imm):x}, %%eax, %%edx"
                   f"\\n\\tpopl %%ebp")
            expect = b"\x55\xb8" + mov + b"\x69\xd0" + imm + b"\x5d"
            return Decoy(kind, look, 3, expect[3:13], expect, _dstmt(label, asm, "a", "d", clobber_a=True, clobber_d=True),
                         "push ebp; mov eax, imm32; imul edx, eax, imm32; pop ebp")
        mov = bytes([0x3E, 0x67, 0x9A, g0])
        imm = bytes([g3, sel, 0x00, x])
        asm = f"movl $0x{_le(mov):x}, %%eax\\n\\timull $0x{_le(imm):x}, %%eax, %%edx"
        expect = b"\xb8" + mov + b"\x69\xd0" + imm
        return Decoy(kind, look, 1, expect[1:10], expect, _dstmt(label, asm, "a", "d", clobber_a=True, clobber_d=True),
                     "mov eax, imm32 then imul edx, eax, imm32")
    if kind == "bad-selector":
        fam = rng.choice(("3E 67 9A", "67 9A", "55 67 9A"))
        g = _gate(rng, True).to_bytes(4, "little")
        if fam == "3E 67 9A":
            sel = rng.choice((0, 1, 5, 6, 7))
            pat = b"\x3e\x67\x9a" + g + bytes([sel, 0])
        elif fam == "67 9A":
            sel = rng.choice((0, 1, 2, 4, 5, 6, 7))
            pat = b"\x67\x9a" + g + bytes([sel, 0])
        else:
            sel = rng.choice((0, 1, 2, 5, 6, 7))
            pat = b"\x55\x67\x9a" + g + bytes([sel, 0]) + b"\x5d"
        data = ",".join(f"0x{b:02x}" for b in pat)
        stmt = f'__asm__ __volatile__("{label}:\\n\\t.byte {data}" : : : "eax", "ecx", "edx", "memory");'
        return Decoy(kind, fam, 0, pat, pat, stmt, f"far call to selector {sel} at an instruction boundary")
    # wrong-bitness: a 16-bit form (B, D, E) in 32-bit code
    look, sel = rng.choice((("B", 2), ("D", 1), ("E", 3)))
    pat = b"\x67\x66\x9a" + _gate(rng, False).to_bytes(4, "little") + bytes([sel, 0])
    data = ",".join(f"0x{b:02x}" for b in pat)
    stmt = f'__asm__ __volatile__("{label}:\\n\\t.byte {data}" : : : "eax", "ecx", "edx", "memory");'
    return Decoy(kind, look, 0, pat, pat, stmt, "16-bit form in 32-bit code")


def _dstmt(label: str, asm: str, r1: str, r2: str, clobber_a: bool = False, clobber_d: bool = False) -> str:
    """Extended asm for a code decoy: ``x`` and ``acc`` go in registers ``r1`` and ``r2``; a register
    the instructions overwrite is an in/out operand when it carries an input, else a clobber."""
    written = {r for r, w in (("a", clobber_a), ("d", clobber_d)) if w}
    outs, ins = [], []
    for r, v in ((r1, "x"), (r2, "acc")):
        (outs if r in written else ins).append(f'"{"+" if r in written else ""}{r}"({v})')
    clob = ['"cc"', '"memory"'] + [f'"e{r}x"' for r in sorted(written - {r1, r2})]
    return (f'__asm__ __volatile__("{label}:\\n\\t{asm}" : {", ".join(outs)} : {", ".join(ins)} : '
            f'{", ".join(clob)});')


def data_decoy(did: int, rng: random.Random) -> Decoy:
    """Stub bytes in a constant table or string (.rdata) or an initialised array (.data)."""
    look = rng.choice(("A", "C", "F", "G", "H", "I", "L7", "U7"))
    g = _gate(rng, look not in ("L7",))
    if look == "L7":
        st = make_stub("L7", g & 0xFFFF, selector=rng.choice((1, 2, 3)))
    elif look == "U7":
        st = make_stub("U7", g, marker=rng.choice((0xD6, 0xD7)))
    else:
        st = make_stub(look, g)
    where = rng.choice(("rdata-table", "rdata-string", "data"))
    pre = bytes(rng.randint(1, 255) for _ in range(rng.randint(0, 12)))
    post = bytes(rng.randint(0, 255) for _ in range(rng.randint(1, 12)))
    blob = pre + st.data + post
    name = f"gl_d{did}"
    if where == "rdata-string":
        # a message string with the stub bytes escaped into it (zeros included)
        text = "".join(f"\\x{b:02x}" for b in blob)
        word = rng.choice(WORDS)
        top = f'const char {name}[] = "{word}: \\"" "{text}" "\\" failed";'
        pat_at = len(word) + 3 + len(pre)
        note = ".rdata string"
    else:
        vals = ", ".join(f"0x{b:02x}" for b in blob)
        const = "const " if where == "rdata-table" else ""
        top = f"{const}u8 {name}[{len(blob)}] = {{ {vals} }};"
        pat_at = len(pre)
        note = ".rdata constant table" if const else ".data array"
    return Decoy("data-section", look, pat_at, st.data, None, top, note)


# --- one translation unit ---------------------------------------------------------------------------


def tu_source(tu: int, seed: int, nfuncs: int, stubs: list[tuple[int, Stub]], decoys: list[tuple[int, Decoy]],
              callees: list[tuple[str, int]]) -> tuple[str, list[tuple[str, int]]]:
    """C text of unit ``tu`` with the given stubs and decoys planted in random slots."""
    g = Gen(tu, seed, callees)
    funcs = g.functions(nfuncs)
    rng = random.Random(seed * 7_919 + tu)
    code_items: list[str] = []
    for sid, st in stubs:
        code_items.append(stub_stmt(sid, st, rng))
    data_tops: list[str] = []
    data_uses: list[str] = []
    for did, d in decoys:
        if d.kind == "data-section":
            data_tops.append(d.stmt)
            data_uses.append(f"gl_d{did}")
        else:
            code_items.append(d.stmt)
    rng.shuffle(code_items)
    # every slot position in the unit, in order; pick distinct ones for the items
    slot_total = sum(f[1].count("@SLOT@") for f in funcs)
    if len(code_items) > slot_total:
        raise RuntimeError(f"unit {tu}: {len(code_items)} items for {slot_total} slots")
    chosen = sorted(rng.sample(range(slot_total), len(code_items)))
    fill = dict(zip(chosen, code_items))
    out = [PRELUDE]
    decls = {n: s for n, s in callees}
    out.extend(SIG_DECL[s].format(n=n) + ";" for n, s in sorted(decls.items()))
    out.extend(g.top)
    out.extend(data_tops)
    k = 0
    for name, text, sig in funcs:
        parts = text.split("@SLOT@")
        buf = [parts[0]]
        for p in parts[1:]:
            buf.append(fill.get(k, ""))
            buf.append(p)
            k += 1
        out.append("".join(buf))
    if data_uses:
        # reference the data decoys from code, as a program would
        uses = " + ".join(f"(u32){n}[{i % 3}]" for i, n in enumerate(data_uses))
        out.append(f"u32 datause_{tu}(void) {{ return {uses}; }}")
    return "\n".join(out) + "\n", [(n, s) for n, _, s in funcs]


# --- building ------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    exe: Path
    truth_path: Path
    truth: dict
    build_seconds: float
    reused: bool


def _gcc_version() -> str:
    return subprocess.run([CC, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True, check=True).stdout.strip()


def corpus_key(size_mib: float, stubs: int, decoys: int, seed: int) -> str:
    size_mib = float(size_mib)  # 64 and 64.0 are the same corpus
    h = hashlib.sha256(json.dumps([GEN_VERSION, size_mib, stubs, decoys, seed, FUNCS_PER_TU, CFLAGS, _gcc_version()]).encode())
    return f"corpus-{size_mib:g}mib-{stubs}s-{decoys}d-seed{seed}-{h.hexdigest()[:10]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _compile(args: tuple[str, str]) -> tuple[str, int]:
    """Compile one unit in ``folder``; return (object name, its .text size)."""
    folder, stem = args
    r = subprocess.run([CC, *CFLAGS, "-c", f"{stem}.c", "-o", f"{stem}.o"], cwd=folder, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"compiling {stem}.c failed:\n{r.stderr[-4000:]}")
    return f"{stem}.o", _coff_text_size(Path(folder) / f"{stem}.o")


def _coff_text_size(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(20)
        nsec = struct.unpack_from("<H", head, 2)[0]
        opt = struct.unpack_from("<H", head, 16)[0]
        f.seek(20 + opt)
        total = 0
        for _ in range(nsec):
            sh = f.read(40)
            name = sh[:8].rstrip(b"\0")
            if name.startswith(b".text"):
                total += struct.unpack_from("<I", sh, 16)[0]
        return total


def build(size_mib: float = 64, stubs: int = 4000, decoys: int | None = None, seed: int = 1,
          jobs: int | None = None, force: bool = False, out_root: Path = OUT_ROOT, log=print) -> Corpus:
    """Build (or reuse) the corpus; returns the exe path and the verified truth."""
    decoys = stubs if decoys is None else decoys
    jobs = jobs or os.cpu_count() or 1
    key = corpus_key(size_mib, stubs, decoys, seed)
    folder = out_root / key
    exe = folder / "corpus.exe"
    truth_path = folder / "corpus.exe.truth.json"
    if not force and exe.exists() and truth_path.exists():
        truth = json.loads(truth_path.read_text())
        if truth.get("sha256") == _sha256(exe):
            return Corpus(exe, truth_path, truth, truth["build_seconds"], True)
        log("corpus: cached file does not match its truth; rebuilding")
    t0 = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    src = folder / "src"
    src.mkdir(parents=True)
    target = int(size_mib * (1 << 20))
    rng = random.Random(seed)

    # Calibrate: the first units (no plants) give the code size per unit, hence the unit count.
    calib = max(2, jobs)
    funcs_by_tu: list[list[tuple[str, int]]] = []

    def write_unit(tu: int, st: list[tuple[int, Stub]], de: list[tuple[int, Decoy]]) -> str:
        text, fs = tu_source(tu, seed, FUNCS_PER_TU, st, de, _callees(funcs_by_tu, random.Random(seed + tu)))
        funcs_by_tu.append(fs)
        (src / f"u{tu:04d}.c").write_text(text)
        return f"u{tu:04d}"

    def compile_all(stems: list[str]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        step = max(1, len(stems) // 10)
        with ThreadPoolExecutor(jobs) as ex:
            for i, r in enumerate(ex.map(_compile, [(str(src), n) for n in stems])):
                out.append(r)
                if len(stems) > 20 and (i + 1) % step == 0:
                    log(f"corpus: compiled {i + 1}/{len(stems)} units, {time.perf_counter() - t0:.0f} s")
        return out

    objs = compile_all([write_unit(tu, [], []) for tu in range(calib)])
    per_tu = sum(sz for _, sz in objs) / len(objs)
    nunits = max(calib + 1, -(-int(target * 1.02) // int(per_tu)))
    log(f"corpus: about {per_tu / 1024:.0f} KiB of code per unit of {FUNCS_PER_TU} functions; {nunits} units")

    # Plants: stubs and decoys spread evenly over the remaining units.
    stub_list = [(i, random_stub(rng)) for i in range(stubs)]
    decoy_list: list[tuple[int, Decoy]] = []
    for i in range(decoys):
        d = data_decoy(i, rng) if rng.random() < 0.3 else code_decoy(i, rng)
        decoy_list.append((i, d))
    nplant = nunits - calib
    per_unit_s: list[list[tuple[int, Stub]]] = [[] for _ in range(nplant)]
    per_unit_d: list[list[tuple[int, Decoy]]] = [[] for _ in range(nplant)]
    for i, item in enumerate(stub_list):
        per_unit_s[i * nplant // max(1, stubs)].append(item)
    for i, item in enumerate(decoy_list):
        per_unit_d[i * nplant // max(1, decoys)].append(item)
    stems = [write_unit(calib + k, per_unit_s[k], per_unit_d[k]) for k in range(nplant)]
    (src / "main.c").write_text("int main(void) { return 0; }\n")
    objs += compile_all(stems + ["main"])
    code = sum(sz for _, sz in objs)
    while code < target:
        # The estimate fell short: add plain units, in order, until the code is big enough. They
        # are compiled ``jobs`` at a time; the ones past the target are dropped, so the result is
        # the same as adding them one by one.
        batch = compile_all([write_unit(len(funcs_by_tu), [], []) for _ in range(jobs)])
        for o, sz in batch:
            if code >= target:
                continue
            objs.append((o, sz))
            code += sz
    t2 = time.perf_counter()
    log(f"corpus: compiled {len(objs)} units ({code / (1 << 20):.1f} MiB of code) in {t2 - t0:.0f} s with {jobs} jobs")
    obj_names = sorted(o for o, _ in objs)
    r = subprocess.run([CC, *CFLAGS, "-o", "../corpus.exe", *obj_names, "-Wl,--no-insert-timestamp",
                        "-Wl,-Map,../corpus.map"], cwd=src, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"link failed:\n{r.stderr[-4000:]}")
    t3 = time.perf_counter()
    log(f"corpus: linked in {t3 - t2:.0f} s")
    truth = make_truth(exe, {i: s for i, s in stub_list}, {i: d for i, d in decoy_list}, jobs, log)
    t4 = time.perf_counter()
    log(f"corpus: truth read back and verified with capstone in {t4 - t3:.0f} s")
    truth["build_seconds"] = round(t4 - t0, 1)
    truth["parameters"] = {"size_mib": size_mib, "stubs": stubs, "decoys": decoys, "seed": seed,
                           "units": len(objs), "functions_per_unit": FUNCS_PER_TU, "cflags": CFLAGS,
                           "gcc": _gcc_version(), "generator": GEN_VERSION}
    truth["sha256"] = _sha256(exe)
    tmp = truth_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(truth, indent=1) + "\n")
    tmp.replace(truth_path)
    shutil.rmtree(src)  # the sources are regenerated from the seed; keep the cache small
    return Corpus(exe, truth_path, truth, t4 - t0, False)


def _callees(funcs_by_tu: list[list[tuple[str, int]]], rng: random.Random) -> list[tuple[str, int]]:
    """A few functions of earlier units this unit may call."""
    pool = [f for fs in funcs_by_tu[-8:] for f in fs]
    return rng.sample(pool, min(24, len(pool))) if pool else []


# --- truth from the toolchain -------------------------------------------------------------------------

_SYM = re.compile(r"^([0-9a-fA-F]+) (\w) (\S+)$")
# The mingw linker script puts the constructor and destructor lists (pointers) at the end of .text.
_TEXT_DATA = re.compile(r"^_*[CD]TOR_LIST__$|^\.[cd]tors")


def make_truth(exe: Path, stubs: dict[int, Stub], decoys: dict[int, Decoy], jobs: int, log=print) -> dict:
    import pefile

    pe = pefile.PE(str(exe), fast_load=True)
    base = pe.OPTIONAL_HEADER.ImageBase
    secs = []
    for s in pe.sections:
        name = s.Name.rstrip(b"\0").decode("latin-1")
        size = min(s.SizeOfRawData, s.Misc_VirtualSize) if s.Misc_VirtualSize else s.SizeOfRawData
        secs.append((name, base + s.VirtualAddress, size, s.PointerToRawData,
                     bool(s.Characteristics & 0x20000020)))
    pe.close()
    data = exe.read_bytes()

    def locate(addr: int) -> tuple[str, int, bool]:
        for name, va, size, raw, code in secs:
            if va <= addr < va + size:
                return name, raw + addr - va, code
        raise RuntimeError(f"address {addr:#x} is in no section")

    out = subprocess.run([NM, "-n", str(exe)], capture_output=True, text=True, check=True).stdout
    funcs: list[int] = []  # function starts in code sections (from the symbol table)
    text_data: list[int] = []  # data the mingw linker script puts in .text (constructor lists)
    sites = []
    dec = []
    problems: list[str] = []
    seen_ids: dict[str, int] = {}
    for line in out.splitlines():
        m = _SYM.match(line)
        if not m:
            continue
        addr, typ, name = int(m.group(1), 16), m.group(2), m.group(3)
        sm = re.match(r"^_?gl_([sd])(\d+)(?:_(\d+))?$", name)
        if sm:
            kind, num = sm.group(1), int(sm.group(2))
            seen_ids[f"{kind}{num}"] = seen_ids.get(f"{kind}{num}", 0) + 1
            sec, off, code = locate(addr)
            if kind == "s":
                st = stubs[num]
                if data[off : off + len(st.data)] != st.data:
                    problems.append(f"stub {name} at {addr:#x}: bytes {data[off:off + len(st.data)].hex()} are not the planted {st.data.hex()}")
                if st.shape == "L7" and data[off + 7 : off + 9] == b"\x90\x90":
                    problems.append(f"stub {name} at {addr:#x}: L7 followed by 90 90 (reads as L7P)")
                sites.append({"file_offset": off, "address": addr, "region": sec, "shape": st.shape, "gate": st.gate,
                              "selector": st.selector, "bitness": 32, "length": len(st.data),
                              **({"marker": st.marker} if st.marker is not None else {}), "label": name,
                              "_call_at": st.call_at, "_call_len": st.call_len})
            else:
                d = decoys[num]
                if d.expect is not None and data[off : off + len(d.expect)] != d.expect:
                    problems.append(f"decoy {name} at {addr:#x}: bytes {data[off:off + len(d.expect)].hex()} are not the expected {d.expect.hex()}")
                if data[off + d.pat_at : off + d.pat_at + len(d.pattern)] != d.pattern:
                    problems.append(f"decoy {name} at {addr:#x}: pattern not found at +{d.pat_at}")
                if not _looks_like(d):
                    problems.append(f"decoy {name}: pattern {d.pattern.hex()} does not have the form of {d.look}")
                dec.append({"file_offset": off + d.pat_at, "address": addr + d.pat_at, "region": sec, "kind": d.kind,
                            "looks_like": d.look, "note": d.note, "label": name, "label_offset": off,
                            "code": code})
            continue
        if typ in "Tt":
            sec, off, code = locate(addr)
            if code:
                funcs.append(addr)
                if _TEXT_DATA.match(name):
                    text_data.append(addr)
    # gcc deletes code it proves unreachable, asm included; the truth is what the binary holds
    gone_s = [i for i in stubs if f"s{i}" not in seen_ids]
    gone_d = [i for i in decoys if f"d{i}" not in seen_ids]
    if gone_s or gone_d:
        log(f"corpus: warning: gcc removed {len(gone_s)} planted stubs and {len(gone_d)} decoys as unreachable "
            f"(e.g. stubs {gone_s[:5]}, decoys {gone_d[:5]})")
    funcs = sorted(set(funcs))
    code_secs = [(n, va, size, raw) for n, va, size, raw, code in secs if code]

    # Capstone: decode every function of every code section from its start.
    planted = {s["address"]: s for s in sites}
    inside = {d["address"]: d for d in dec if d["code"] and d["kind"] in ("displacement", "immediate")}
    at_boundary = {d["address"]: d for d in dec if d["code"] and d["kind"] not in ("displacement", "immediate")}
    chunks = []
    for name, va, size, raw in code_secs:
        starts = sorted({va, *[f for f in funcs if va <= f < va + size]})
        bounds = starts + [va + size]
        n = len(starts)
        step = max(1, -(-n // (jobs * 8)))
        for i in range(0, n, step):
            chunks.append((raw - va, bounds[i : min(n, i + step) + 1]))
    site_skip = {a: (s["length"], s["_call_at"], s["_call_len"], s["shape"], s.get("selector"), s["gate"])
                 for a, s in planted.items()}
    # far calls inside a boundary decoy (a bad-selector G form holds a 67 9A call at +1) are planted
    exempt = sorted({a + i for a, d in at_boundary.items() for i in range(len(decoys[int(d["label"].split("_")[1][1:])].pattern))})
    init = (str(exe), site_skip, sorted(inside), sorted(at_boundary), exempt, sorted(set(text_data)))
    with ProcessPoolExecutor(jobs, initializer=_cs_init, initargs=init) as ex:
        results = list(ex.map(_cs_chunk, chunks))
    reached: set[int] = set()
    insns = 0
    for r in results:
        reached.update(r["reached"])
        problems.extend(r["problems"])
        insns += r["insns"]
    for a, s in planted.items():
        if a not in reached:
            problems.append(f"site {s['label']} at {a:#x} is not an instruction boundary when decoded from its function start")
    for a, d in at_boundary.items():
        if a not in reached:
            problems.append(f"decoy {d['label']} ({d['kind']}) at {a:#x} is not an instruction boundary")
    log(f"corpus: capstone decoded {insns} instructions of {sum(s for _, _, s, _ in code_secs)} code bytes, "
        f"{len(funcs)} functions")
    if problems:
        for p in problems[:40]:
            log("corpus: PROBLEM " + p)
        raise RuntimeError(f"corpus truth failed verification ({len(problems)} problems)")
    for s in sites:
        del s["_call_at"], s["_call_len"]
    sites.sort(key=lambda s: s["file_offset"])
    dec.sort(key=lambda d: d["file_offset"])
    return {
        "fixture": exe.name,
        "format": "pe32",
        "scan_args": [],
        "sites": sites,
        "decoys": dec,
        "file_size": len(data),
        "code_sections": [{"name": n, "address": va, "size": size, "file_offset": raw} for n, va, size, raw in code_secs],
        "code_bytes": sum(s for _, _, s, _ in code_secs),
        "functions": len(funcs),
        "capstone_instructions": insns,
        "plants": {"stubs": len(stubs), "decoys": len(decoys), "stubs_removed_by_gcc": len(gone_s),
                   "decoys_removed_by_gcc": len(gone_d),
                   "stubs_duplicated_by_gcc": sum(1 for k, v in seen_ids.items() if k[0] == "s" and v > 1)},
    }


_CS: dict = {}
_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3))


def _cs_init(exe: str, site_skip: dict, inside: list[int], at_boundary: list[int], exempt: list[int],
             text_data: list[int]) -> None:
    import capstone

    _CS["cs"] = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_32)
    _CS["data"] = Path(exe).read_bytes()
    _CS["sites"] = site_skip
    _CS["inside"] = set(inside)
    _CS["at_boundary"] = set(at_boundary)
    _CS["exempt"] = set(exempt)
    _CS["text_data"] = set(text_data)


def _cs_chunk(args: tuple[int, list[int]]) -> dict:
    """Linear capstone decode of consecutive functions ``[bounds[i], bounds[i + 1])``.

    Reports the planted sites and boundary decoys it lands on, and as problems: a site that does
    not decode as its far call / UD2, a decoy pattern (inside an instruction by design) that is
    an instruction start, any other far call to a selector 0..7 or UD2 with a gate marker, and
    bytes capstone cannot decode.
    """
    delta, bounds = args  # file offset = address + delta
    cs = _CS["cs"]
    data = _CS["data"]
    sites = _CS["sites"]
    inside = _CS["inside"]
    at_boundary = _CS["at_boundary"]
    exempt = _CS["exempt"]
    reached: list[int] = []
    problems: list[str] = []
    insns = 0
    for fi in range(len(bounds) - 1):
        pos, end = bounds[fi], bounds[fi + 1]
        if pos in _CS["text_data"]:
            continue
        while pos < end:
            restart = False
            for addr, size, mnem, ops in cs.disasm_lite(data[pos + delta : end + delta], pos):
                insns += 1
                st = sites.get(addr)
                if st is not None:
                    length, call_at, call_len, shape, sel, gate = st
                    reached.append(addr)
                    at = addr + call_at
                    ins = next(cs.disasm_lite(data[at + delta : at + delta + 16], at), None)
                    if shape in ("U5", "U7"):
                        ok = ins is not None and ins[2] == "ud2"
                    else:
                        ok = False
                        if ins is not None and ins[2] == "lcall" and ins[1] == call_len:
                            s_txt, o_txt = ins[3].split(", ")
                            ok = int(s_txt, 0) == sel and int(o_txt, 0) == gate
                    if not ok:
                        problems.append(f"site at {addr:#x} ({shape}, selector {sel}, gate {gate}) decodes as {ins}")
                    pos = addr + length
                    restart = True  # the UD2 forms carry inline operands: decode again after the site
                    break
                if addr in inside:
                    problems.append(f"decoy pattern at {addr:#x} is an instruction start ({mnem} {ops})")
                b = data[addr + delta : addr + delta + size]
                i = 0
                while i < size and b[i] in _PREFIXES:
                    i += 1
                if addr in at_boundary:
                    reached.append(addr)
                if addr in exempt:
                    pass
                elif i < size and b[i] == 0x9A and b[-1] == 0 and b[-2] <= 7:
                    problems.append(f"unplanted far call to selector {b[-2]} at {addr:#x}: {mnem} {ops} ({b.hex()})")
                elif b[i : i + 2] == b"\x0f\x0b" and data[addr + delta + size] in (0xCA, 0xCB, 0xD6, 0xD7):
                    problems.append(f"unplanted UD2 gate form at {addr:#x}")
                pos = addr + size
            if not restart and pos < end:
                # capstone stopped on bytes it cannot decode (or an instruction running past the end)
                problems.append(f"capstone cannot decode at {pos:#x}: {data[pos + delta:pos + delta + 8].hex()}")
                pos += 1
    return {"reached": reached, "problems": problems, "insns": insns}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=float, default=64, help="code to generate, MiB (default 64)")
    ap.add_argument("--stubs", type=int, default=4000, help="gate stubs to plant (default 4000)")
    ap.add_argument("--decoys", type=int, default=None, help="decoys to plant (default: as many as stubs)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed (default 1)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compilers (default: CPUs)")
    ap.add_argument("--force", action="store_true", help="rebuild even if a cached corpus exists")
    args = ap.parse_args()
    t0 = time.perf_counter()
    c = build(args.size_mib, args.stubs, args.decoys, args.seed, args.jobs, args.force)
    summarize(c, time.perf_counter() - t0)
    return 0


def summarize(c: Corpus, elapsed: float, log=print) -> None:
    t = c.truth
    how = f"reused (built in {c.build_seconds:.0f} s)" if c.reused else f"built in {c.build_seconds:.0f} s"
    log(f"corpus: {c.exe.relative_to(Path.cwd()) if c.exe.is_relative_to(Path.cwd()) else c.exe}: {how}; "
        f"ready in {elapsed:.1f} s")
    shapes: dict[str, int] = {}
    for s in t["sites"]:
        shapes[s["shape"]] = shapes.get(s["shape"], 0) + 1
    kinds: dict[str, int] = {}
    for d in t["decoys"]:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    log(f"corpus: {t['file_size']} bytes, {t['code_bytes']} code bytes "
        f"({t['code_bytes'] / (1 << 20):.1f} MiB) in {len(t['code_sections'])} code section(s), {t['functions']} functions")
    log(f"corpus: {len(t['sites'])} planted sites ({', '.join(f'{k} {v}' for k, v in sorted(shapes.items()))})")
    log(f"corpus: {len(t['decoys'])} decoys ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")


if __name__ == "__main__":
    sys.exit(main())
