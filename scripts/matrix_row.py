# SPDX-License-Identifier: Apache-2.0
"""One row of docs/compatibility.md: what the plugin does in this environment.

    python scripts/matrix_row.py OUTPUT.json

Run by each ``matrix(...)`` session of noxfile.py with the environment's
Python, after tests/test_contract.py has checked the same release (tests only
assert; this only records). With an SM100 GPU assumed
(``VLLM_MOE_ROUTING_DEVICE_CAPABILITY=10.0``) and the installed FlashInfer: the
decision and its log line, each target's state, the known bugs planned at the
targets with what the plugin does for a layer each hits, and the layer class the
plugin watches in this release.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
from pathlib import Path

SM100 = {"VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "10.0"}


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def row() -> dict[str, object]:
    import vllm  # noqa: F401 - vllm_module_file looks in the imported package

    from vllm_moe_routing_plugin import activation, bugs, patching, targets
    from vllm_moe_routing_plugin.vllm_source import vllm_has_module, vllm_module_file

    # Import every target module this vLLM ships, as vLLM does when it builds
    # MoE layers, so the plugin patches them at once.
    for name in targets.target_modules():
        if vllm_module_file(name) is not None:
            importlib.import_module(name)
    current = activation.activate(SM100)
    assert current is not None
    planned = [plan for o in current.outcomes.values() for plan in o.planned]
    known_bugs = [
        f"{bug.id} {done}"
        for bug in bugs.KNOWN_BUGS
        for done in dict.fromkeys(plan.done for plan in planned if plan.bug is bug)
    ]
    states = {f"installed:{o.target.name}": o.state for o in current.outcomes.values()}
    line = current.line()
    activation.deactivate()
    layer_class = None
    for candidate in targets.LAYER_CLASSES:
        if not vllm_has_module(candidate.module):
            continue
        module = importlib.import_module(candidate.module)
        outcome = patching.watch_layers(candidate, module, lambda build: None)
        if outcome.patch is not None:
            outcome.patch.undo()
        if outcome.state == "patched":
            layer_class = candidate.owner
    return {
        "vllm": _version("vllm"),
        "flashinfer": _version("flashinfer-python"),
        "action": current.decision.action,
        "line": line,
        "known_bugs": known_bugs,
        "layer_class": layer_class,
        **states,
    }


def main(argv: list[str]) -> int:
    (output,) = argv
    Path(output).write_text(json.dumps(row(), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
