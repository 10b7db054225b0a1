# SPDX-License-Identifier: Apache-2.0
"""Write docs/compatibility.md from the matrix sessions' results.

    python scripts/compatibility.py RESULTS_DIR NAME [NAME ...]

Run by ``bash scripts/nox.sh -t matrix`` (noxfile.py: each ``matrix(NAME)``
session writes RESULTS_DIR/NAME.json, then the ``compatibility`` session calls
this with every environment of the matrix). An environment without a result
is listed as not run.
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "compatibility.md"
COMMAND = "bash scripts/nox.sh -t matrix"
TARGET_ORDER = [
    "TrtLlmFp8ExpertsMonolithic",
    "TrtLlmFp8Experts",
    "flashinfer_trtllm_moe._supports_routing_method",
    "TrtLlmBf16ExpertsMonolithic",
    "TrtLlmBf16Experts",
    "flashinfer_trtllm_moe._supports_routing_method_bf16",
    "TrtLlmNvFp4ExpertsMonolithic",
    "flashinfer_fp4_moe._supports_routing_method",
    "TrtLlmMxfp4ExpertsMonolithic",
    "TrtLlmMxint4ExpertsMonolithic",
]
INTRO = """\
Each row is one environment: a vLLM release with the FlashInfer it pins, or with
flashinfer-python (and -cubin where the release pins it) 0.6.7 over an older pin;
vLLM 0.34.0 with 0.7.4 in place of its `==0.7.3` pin, which PyPI does not serve.
The contract tests (`tests/test_contract.py`) check the expected targets, their
states and their answers for both decisions (the other FlashInfer version injected),
and the decision the installed FlashInfer produces; `tests/test_kernel_check.py`
binds `verify`'s kernel-check arguments to the installed FlashInfer's own
signatures (its tests that need a CUDA GPU are skipped here). Target states are
those of the installed FlashInfer's decision: `patched`, `native` (vLLM already
answers what the decision wants), `-` (absent in that release). `layer class` is the
class whose MoE layers the plugin makes visible to its layer checks, recognised in
that release (`FusedMoE` or `RoutedExperts`). The last column
names the known bugs (docs/known-bugs.md) in range of the install with an SM100
GPU and planned at its targets (where vLLM's own routing checks let the bug's
methods in), and what the plugin does for each MoE layer a bug hits.
"""


def render(rows: list[dict]) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        "# Compatibility",
        "",
        f"Produced by `{COMMAND}` on {today} ({platform.machine()}, "
        f"{platform.system()}, Python {platform.python_version()}, no GPU: "
        "an SM100 GPU is given through `VLLM_MOE_ROUTING_DEVICE_CAPABILITY=10.0`).",
        "",
        INTRO,
    ]
    present = [t for t in TARGET_ORDER if any(f"installed:{t}" in r for r in rows)]
    header = [
        "vLLM", "flashinfer-python", "action", *present, "layer class", "tests",
        "known bugs",
    ]  # fmt: skip
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        cells = [
            row.get("vllm") or row["name"],
            row.get("flashinfer") or "?",
            row.get("action") or "?",
            *[_state(row.get(f"installed:{t}")) for t in present],
            row.get("layer_class") or "?",
            _tests(row),
            ", ".join(row.get("known_bugs") or []) or "none",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Log lines of the installed decision:", ""]
    lines += [f"- `{row['line']}`" for row in rows if row.get("line")]
    return "\n".join(lines) + "\n"


def _state(state: str | None) -> str:
    return "-" if state is None or state == "absent" else state


def _tests(row: dict) -> str:
    if "counts" not in row:
        return "not run"
    counts = row["counts"]
    run = counts["tests"] - counts["skipped"]
    summary = f"{run - counts['failures'] - counts['errors']} of {run} passed"
    if counts["skipped"]:
        summary += f", {counts['skipped']} skipped"
    return ("pass" if row["passed"] else "**FAIL**") + f" ({summary})"


def main(argv: list[str]) -> int:
    results, *names = argv
    rows = []
    for name in names:
        path = Path(results) / f"{name}.json"
        rows.append(json.loads(path.read_text()) if path.exists() else {"name": name})
    OUTPUT.write_text(render(rows))
    print(f"wrote {OUTPUT}")
    return 0 if all(row.get("passed", True) for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
