"""The reference runtime: applies a patch table up front (``apply``), undoes it (``unpatch``)
and patches on first fault (``LazyPatcher``), resolving gates through a registry
(``docs/runtime.md``). :mod:`.sim` is the SMP simulator that checks the lazy protocol.

    from gatelink.runtime import load_registry, apply_image, unpatch_image, LazyPatcher

    registry = load_registry("gates.toml")
    patched, result = apply_image(table, data, registry)          # eager sites, all or nothing
    original, _ = unpatch_image(table, patched)                    # byte for byte back
    lazy = LazyPatcher(table, memory, registry)                    # in the fault handler:
    outcome = lazy.on_fault(eip, Trap.FAULT)                       # outcome.resume or default
"""

from __future__ import annotations

from .apply import (
    ApplyResult,
    ImageMismatch,
    UnpatchResult,
    apply,
    apply_image,
    selected,
    unpatch,
    unpatch_image,
    verify_identity,
)
from .instance import Binder, SitePatch, proven_domain
from .lazy import DONE, FOREIGN, PATCHING, STATE_NAMES, UNTOUCHED, LazyPatcher, Outcome, Trap
from .memory import STORE_SIZES, ImageMemory, Memory, Placement
from .registry import FORMS, KINDS, REGISTRY_VERSION, Registry, Target, load_registry, parse_registry

__all__ = [
    "DONE", "FOREIGN", "FORMS", "KINDS", "PATCHING", "REGISTRY_VERSION", "STATE_NAMES", "STORE_SIZES", "UNTOUCHED",
    "ApplyResult", "Binder", "ImageMemory", "ImageMismatch", "LazyPatcher", "Memory", "Outcome", "Placement",
    "Registry", "SitePatch", "Target", "Trap", "UnpatchResult", "apply", "apply_image",
    "load_registry", "parse_registry", "proven_domain", "selected", "unpatch", "unpatch_image", "verify_identity",
]
