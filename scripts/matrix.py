# SPDX-License-Identifier: Apache-2.0
"""The compatibility matrix: the contract tests, and the kernel check's
bindings to FlashInfer, against every supported vLLM release with the
FlashInfer it pins and, where that pin is older than 0.6.7, with
flashinfer-python (and -cubin) 0.6.7 installed over it.

    python3 scripts/matrix.py [--releases 0.19.1,0.33.0] [--output docs/compatibility.md]

Each environment is built by scripts/env.sh (uv, cached outside the clone).
Writes the table to docs/compatibility.md and exits 1 if any run failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASES = [
    "0.16.0",
    "0.17.1",
    "0.18.1",
    "0.19.1",
    "0.20.2",
    "0.22.1",
    "0.25.1",
    "0.26.0",
    "0.30.0",
    "0.33.0",
]
#: Releases whose pinned flashinfer-python is older than 0.6.7 (the fix).
PINNED_BEFORE_FIX = {"0.16.0", "0.17.1", "0.18.1", "0.19.1"}
FIXED = "0.6.7"
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


def environments(releases: list[str]) -> list[str]:
    names = []
    for release in releases:
        names.append(f"vllm-{release}")
        if release in PINNED_BEFORE_FIX:
            names.append(f"vllm-{release}-fi{FIXED}")
    return names


def run(name: str) -> dict:
    started = time.monotonic()
    venv = subprocess.run(
        ["bash", str(ROOT / "scripts" / "env.sh"), name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "contract.json"
        result = subprocess.run(
            [
                f"{venv}/bin/python",
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                str(ROOT / "tests" / "test_contract.py"),
                str(ROOT / "tests" / "test_kernel_check.py"),
            ],
            cwd=ROOT,
            env={**os.environ, "MOE_ROUTING_MATRIX_JSON": str(report)},
            capture_output=True,
            text=True,
            check=False,
        )
        data = json.loads(report.read_text()) if report.exists() else {}
    summary = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"{name}: {summary}", flush=True)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-2000:], sep="\n", flush=True)
    return {
        "name": name,
        "passed": result.returncode == 0,
        "summary": summary,
        "seconds": round(time.monotonic() - started),
        **data,
    }


def render(rows: list[dict], command: str) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        "# Compatibility",
        "",
        f"Produced by `{command}` on {today} ({platform.machine()}, "
        f"{platform.system()}, Python {platform.python_version()}, no GPU: "
        "an SM100 GPU is given through `VLLM_MOE_ROUTING_DEVICE_CAPABILITY=10.0`).",
        "",
        "Each row is one environment: a vLLM release with the FlashInfer it pins, or with",
        f"flashinfer-python (and -cubin where the release pins it) {FIXED} over an older pin.",
        "The contract tests (`tests/test_contract.py`) check the expected targets, their",
        "states and their answers for both decisions (the other FlashInfer version injected),",
        "and the decision the installed FlashInfer produces; `tests/test_kernel_check.py`",
        "binds `verify`'s kernel-check arguments to the installed FlashInfer's own",
        "signatures (its 3 tests that need a CUDA GPU are skipped here). Target states",
        "are those of the",
        "installed FlashInfer's decision: `patched`, `native` (vLLM already answers what the",
        "decision wants), `-` (absent in that release).",
        "",
    ]
    present = [t for t in TARGET_ORDER if any(f"installed:{t}" in r for r in rows)]
    header = ["vLLM", "flashinfer-python", "action", *present, "tests"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        cells = [
            row.get("vllm") or row["name"],
            row.get("flashinfer") or "?",
            row.get("action") or "?",
            *[_state(row.get(f"installed:{t}")) for t in present],
            ("pass" if row["passed"] else "**FAIL**") + f" ({row['summary']})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Log lines of the installed decision:", ""]
    for row in rows:
        if row.get("line"):
            lines.append(f"- `{row['line']}`")
    return "\n".join(lines) + "\n"


def _state(state: str | None) -> str:
    if state is None or state == "absent":
        return "-"
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--releases", help="comma-separated subset of " + ",".join(RELEASES)
    )
    parser.add_argument("--output", default=str(ROOT / "docs" / "compatibility.md"))
    args = parser.parse_args()
    releases = args.releases.split(",") if args.releases else RELEASES
    rows = [run(name) for name in environments(releases)]
    command = "python3 scripts/matrix.py" + (
        f" --releases {args.releases}" if args.releases else ""
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(rows, command))
    print(f"wrote {output}")
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
