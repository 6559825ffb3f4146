"""The JSON layout of gatelink's machine-readable reports: indented by structure, with each
record (a site, a near miss, an audit row) on a line of its own: readable, grep-friendly, and
fast (records go through one C encoder made once, not ``json.dumps(indent=...)``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from itertools import chain


def _record_encoder() -> Callable[[object], str]:
    """``json.dumps(o, separators=(", ", ": "))``, with one C encoder made once for every record
    (``JSONEncoder.encode`` makes a new one per call, which costs more than encoding a site)."""
    try:
        from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - no C accelerator
        c_make_encoder = None
    if c_make_encoder is None:  # pragma: no cover
        return json.JSONEncoder(separators=(", ", ": ")).encode
    enc = c_make_encoder(None, None, encode_basestring_ascii, None, ": ", ", ", False, False, True)
    return lambda o: "".join(enc(o, 0))


RECORD = _record_encoder()
_CONTAINERS = (dict, list)


def flat_records(doc: list[object]) -> bool:
    """A non-empty list of dicts whose values hold no dict or list (checked with C iteration:
    a large scan has a million values)."""
    if not doc or not all(type(x) is dict for x in doc):
        return False
    types = set(map(type, chain.from_iterable(map(dict.values, doc))))  # type: ignore[arg-type]
    return not any(issubclass(t, _CONTAINERS) for t in types)


def shallow_records(doc: list[object]) -> bool:
    """A non-empty list of dicts whose values are scalars, lists of scalars or dicts of scalars."""
    if not doc or not all(type(x) is dict for x in doc):
        return False
    values: Iterable[object] = chain.from_iterable(map(dict.values, doc))  # type: ignore[arg-type]
    nested = [v for v in values if type(v) is list or type(v) is dict]
    inner = chain.from_iterable(v.values() if isinstance(v, dict) else v for v in nested)  # type: ignore[union-attr]
    return not any(issubclass(t, _CONTAINERS) for t in set(map(type, inner)))


def dumps(doc: object, depth: int = 0, records: Callable[[list[object]], bool] = flat_records) -> str:
    """``doc`` as JSON, each list that ``records`` accepts written one element per line."""
    pad = " " * (depth + 1)
    if isinstance(doc, dict):
        if not doc:
            return "{}"
        items = [f"{pad}{json.dumps(k)}: {dumps(v, depth + 1, records)}" for k, v in doc.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * depth + "}"
    if isinstance(doc, list) and records(doc):
        return "[\n" + ",\n".join(pad + RECORD(x) for x in doc) + "\n" + " " * depth + "]"
    if isinstance(doc, list) and any(isinstance(x, _CONTAINERS) for x in doc):
        return "[\n" + ",\n".join(pad + dumps(x, depth + 1, records) for x in doc) + "\n" + " " * depth + "]"
    return RECORD(doc)
