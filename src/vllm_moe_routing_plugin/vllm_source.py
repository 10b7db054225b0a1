# SPDX-License-Identifier: Apache-2.0
"""Reading vLLM's module files without importing them.

Importing a target module would pull vLLM's fused-MoE package (and, for some
releases, FlashInfer) into processes that never build a MoE layer, so the
plugin and ``status`` look at the files instead. vLLM must already be
imported (its package path is where the files are looked up).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable


def vllm_module_file(name: str) -> str | None:
    """The source file of vLLM module ``name``; None if the imported vLLM does
    not ship it."""
    vllm = sys.modules.get("vllm")
    relative = name.split(".")[1:]
    for base in list(getattr(vllm, "__path__", ()) or ()):
        for path in (
            os.path.join(base, *relative) + ".py",
            os.path.join(base, *relative, "__init__.py"),
        ):
            if os.path.isfile(path):
                return path
    return None


def vllm_has_module(name: str) -> bool:
    return vllm_module_file(name) is not None


def vllm_source(name: str) -> str | None:
    """The source text of vLLM module ``name``; None if vLLM does not ship it.
    Raises what reading the file raises."""
    path = vllm_module_file(name)
    if path is None:
        return None
    with open(path, encoding="utf-8") as source:
        return source.read()


def vllm_defines(module: str, names: Iterable[str]) -> bool:
    """Whether vLLM's source of ``module`` defines a class or function named in
    ``names``. A file can outlive its target:
    ``quantization/utils/flashinfer_fp4_moe.py`` of vLLM 0.17+ no longer has
    ``_supports_routing_method``, and the log line must not name it. A file
    that cannot be read counts as defining them (the line then names it)."""
    try:
        text = vllm_source(module)
    except (OSError, ValueError):
        return True
    if text is None:
        return False
    return any(_defines(text, name) for name in names)


def _defines(text: str, name: str) -> bool:
    """Whether a line of ``text`` starts (after indentation) with ``class name``
    or ``def name``. Plain string search: compiling a regular expression per
    name cost ``register()`` more than the search itself."""
    for keyword in ("class ", "def "):
        needle = keyword + name
        start = text.find(needle)
        while start != -1:
            end = start + len(needle)
            line_start = text.rfind("\n", 0, start) + 1
            indented = not text[line_start:start].strip(" \t")
            whole_name = end == len(text) or not (
                text[end].isalnum() or text[end] == "_"
            )
            if indented and whole_name:
                return True
            start = text.find(needle, end)
    return False


def imports_flashinfer(name: str) -> bool:
    """Whether vLLM's module ``name`` imports FlashInfer when it is imported
    (``experts/trtllm_nvfp4_moe.py`` of vLLM 0.17-0.19 does, at its top).
    The plugin never imports such a module itself."""
    text = vllm_source(name) or ""
    return any(
        line.startswith(("import flashinfer", "from flashinfer"))
        for line in text.splitlines()
    )
