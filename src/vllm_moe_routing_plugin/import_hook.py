# SPDX-License-Identifier: Apache-2.0
"""Run a callback right after vLLM imports one of a few modules.

A process that never builds a MoE layer (the API server of a dense model, a
tokenizer process) must not import vLLM's fused-MoE package because of the
plugin, so targets are patched when vLLM itself imports their module. The
finder answers only for the watched names (one dict lookup per import), lets
the regular finders locate the module, and wraps the loader's
``exec_module``; the module's ``__loader__`` is the original loader again once
it has run.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

OnImport = Callable[[ModuleType], None]


class ImportHook(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that calls ``on_import(module)`` after each
    watched module has executed."""

    def __init__(
        self,
        modules: Iterable[str],
        on_import: OnImport,
        on_error: Callable[[str, Exception], None] = lambda name, error: None,
    ) -> None:
        self._modules = frozenset(modules)
        self._on_import = on_import
        self._on_error = on_error

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._modules:
            return None
        try:
            spec = self._real_spec(fullname, path, target)
        except Exception:
            return None  # the import system asks the same finders and reports it
        if spec is None:
            return None
        try:
            loader = spec.loader
            if loader is None or not hasattr(loader, "exec_module"):
                return spec
            spec.loader = _CallbackLoader(loader, self._on_import)
        except Exception as exc:
            # The module is then imported as if the hook were not there.
            self._on_error(fullname, exc)
            return None
        return spec

    def _real_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def install(self) -> None:
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self) -> None:
        while self in sys.meta_path:
            sys.meta_path.remove(self)


class _CallbackLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader, on_import: OnImport) -> None:
        self._loader = loader
        self._on_import = on_import

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        # Hand the module back its real loader (inspect, linecache and
        # importlib.resources use it), then let the callback see it.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._on_import(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
