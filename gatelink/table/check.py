"""Does a table belong to an image, and is it up to date? (``docs/table-format.md``,
"``--check``").

Both questions are answered from the stored identity and build info, without scanning or
synthesising: this module imports no scanner, checker or synthesis code.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Sequence

from ..image import Image
from ..plan.model import Domain
from .binary import TableError
from .model import BuildInfo, PatchTable


def layout_digest(image: Image) -> str:
    """Hex SHA-256 of what a scan of ``image`` depends on besides its code bytes (which the
    identity's ``code_sha256`` covers): every region's name, kind, file offset, address, size,
    bitness and anchors, the base relocations, and the bytes of every data region (jump tables
    and relocated pointers there steer code discovery). An embedded patch table is not part of
    it: tables are built from, and checked against, the image without its table."""
    h = hashlib.sha256(b"gatelink-layout-1\n")
    for r in image.regions:
        h.update(f"{r.name}\t{r.kind.value}\t{r.file_offset}\t{r.address}\t{r.size}\t{r.bitness}\n".encode())
        for a in r.anchors:
            h.update(f" {a.offset}\t{a.kind.value}\t{a.name}\t{int(a.strong)}\n".encode())
    relocs = getattr(image, "relocations", ())
    h.update(f"relocations {len(relocs)}\n".encode())
    h.update(array("Q", relocs).tobytes() if sys.byteorder == "little" else
             b"".join(int(x).to_bytes(8, "little") for x in relocs))
    for r in image.data_regions:
        h.update(image.region_bytes(r))
    return h.hexdigest()


def form_domains(forms: Sequence[str], domains: dict[str, Domain] | None) -> dict[str, dict[str, Domain]]:
    """Per form, the operand domains its plans are proven for: the defaults of
    :func:`gatelink.plan.forms.domains_for` (call gates for ``callgate``, code selectors for the
    others) overridden by ``domains``; the gate number and context are not patch-time fields."""
    from ..catalog import shape as shape_by_id
    from ..plan.forms import domains_for

    out = {}
    for f in forms:
        doms = dict(domains_for(shape_by_id("A"), f))
        if domains:
            doms.update(domains)
        doms.pop("ctx", None)
        doms.pop("gate", None)
        out[f] = dict(sorted(doms.items()))
    return out


def code_sha256(image: Image) -> bytes:
    h = hashlib.sha256()
    for r in image.code_regions:
        h.update(image.region_bytes(r))
    return h.digest()


def identity_problems(table: PatchTable, image: Image) -> list[str]:
    """Why ``table`` does not describe ``image`` (the image without any embedded table):
    empty when its identity and regions match."""
    out = []
    if table.image_format != image.format:
        out.append(f"table is for a {table.image_format} image, this is {image.format}")
    if table.identity.file_size != len(image.data):
        out.append(f"table is for a {table.identity.file_size}-byte file, this one has {len(image.data)} bytes")
    regions = [(r.name, r.address, r.file_offset, r.size, r.bitness or 32) for r in image.code_regions]
    mine = [(r.name, r.address, r.file_offset, r.size, r.bitness) for r in table.regions]
    if regions != mine:
        out.append("code regions differ (names, addresses, offsets, sizes or bitness)")
    elif code_sha256(image) != table.identity.code_sha256:
        out.append("code bytes differ (SHA-256 of the code regions)")
    return out


def check_identity(table: PatchTable, image: Image) -> None:
    """Raise :class:`TableError` (exit 3) naming the image when ``table`` is not its table."""
    problems = identity_problems(table, image)
    if problems:
        raise TableError(image.path, "table does not belong to this image: " + "; ".join(problems))


def stale_reasons(table: PatchTable, image: Image, expected: PatchTable | None = None, *,
                  model: object = None, forms: Sequence[str] | None = None, build: BuildInfo | None = None,
                  policy: object = None, domains: dict[str, dict[str, Domain]] | None = None) -> list[str]:
    """Why ``table`` is not what ``gatelink table`` would write now for ``image`` with these
    options (empty: up to date). ``build`` is the build info a new table would get (its
    ``layout_sha256`` from :func:`layout_digest` of ``image``)."""
    out = identity_problems(table, image)
    if model is not None and table.model != model:
        out.append(f"fetch model {table.model} differs from {model}")
    if forms is not None and tuple(table.forms) != tuple(forms):
        out.append(f"forms {','.join(table.forms)} differ from {','.join(forms)}")
    if policy is not None and table.policy != policy:
        out.append("policy differs")
    if domains is not None and {f: table.domains_of(f) for f in table.forms} != domains:
        out.append("operand domains differ")
    if build is not None:
        b = table.build
        if b.gatelink != build.gatelink:
            out.append(f"written by gatelink {b.gatelink}, this is {build.gatelink}")
        if b.eager != build.eager:
            out.append(f"eager policy {b.eager} differs from {build.eager}")
        if b.gates != build.gates:
            out.append("gate lists differ")
        if b.layout_sha256 != build.layout_sha256:
            out.append("image layout, relocations or data differ")
    return out


__all__ = ["check_identity", "code_sha256", "form_domains", "identity_problems", "layout_digest", "stale_reasons"]
