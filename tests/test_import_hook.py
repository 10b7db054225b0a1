# SPDX-License-Identifier: Apache-2.0
"""The import hook on a throwaway package (its mechanics need no vLLM)."""

import importlib
import inspect
import sys

import pytest

from vllm_moe_routing_plugin.import_hook import ImportHook


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "hooked_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "target.py").write_text("def check():\n    return 'original'\n")
    (root / "other.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "hooked_pkg"
    for name in [n for n in sys.modules if n.startswith("hooked_pkg")]:
        del sys.modules[name]


def test_callback_runs_after_the_watched_module_executed(package):
    seen = []

    def on_import(module):
        seen.append((module.__name__, module.check()))
        module.check = lambda: "patched"

    hook = ImportHook({f"{package}.target"}, on_import)
    hook.install()
    try:
        importlib.import_module(f"{package}.other")
        assert seen == []
        target = importlib.import_module(f"{package}.target")
        assert seen == [(f"{package}.target", "original")]
        assert target.check() == "patched"
        # The module keeps its real loader: inspect and linecache still work.
        assert "return 'original'" in inspect.getsource(target)
        assert type(target.__loader__).__name__ == "SourceFileLoader"
    finally:
        hook.remove()
    assert hook not in sys.meta_path


def test_not_watched_modules_are_left_to_the_normal_finders(package):
    hook = ImportHook({"not.a.module"}, lambda m: pytest.fail("called"))
    hook.install()
    try:
        module = importlib.import_module(f"{package}.target")
        assert module.check() == "original"
    finally:
        hook.remove()


def test_install_twice_inserts_once():
    hook = ImportHook(set(), lambda m: None)
    hook.install()
    hook.install()
    try:
        assert sys.meta_path.count(hook) == 1
    finally:
        hook.remove()
