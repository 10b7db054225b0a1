# SPDX-License-Identifier: Apache-2.0
"""Which FlashInfer releases have each known bug, read from the kernel sources
the flashinfer-python wheels ship (``flashinfer/data/csrc``, ``.../include``).

    python scripts/known_bug_evidence.py [--wheels DIR] [VERSION ...]

Downloads the wheels it lacks into DIR (default ``build/flashinfer-wheels``)
with ``pip download --no-deps``, then prints one row per release: for each
entry of the catalogue the plugin reads by source, ``bug`` where the release
has the code the fix replaced, ``fixed`` where it has the fix, ``-`` where
the code path does not exist yet. docs/known-bugs.md quotes the table and the
lines each marker matches. flashinfer#2822 is not here: its evidence is the
top-k probe on a GPU (docs/verify.md).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RELEASES = [
    "0.6.3", "0.6.4", "0.6.5", "0.6.6", "0.6.7", "0.6.8.post1", "0.6.9",
    "0.6.11.post2", "0.6.12", "0.6.13", "0.6.14", "0.6.15", "0.6.16",
    "0.6.16.post3", "0.6.17", "0.6.18", "0.6.18.post1", "0.7.0.post1", "0.7.2.post1",
    "0.7.4",
]  # fmt: skip
FILES = (
    "trtllm_fused_moe_runner.cu",
    "trtllm_fused_moe_routing_runner.cu",
    "trtllm_fused_moe_routing_deepseek.cu",
    "launchMainKernel.cu",  # the DeepSeek routing kernel of 0.6.7
    "RoutingCustomPolicy.cuh",
    "trtllm_fused_moe_dev_kernel.cu",
    "trtllm_fused_moe_kernel_launcher.cu",
)

Sources = dict[str, str]  # file name -> text (all copies of it, joined)


def no_group_branch(src: Sources) -> str | None:
    """The runner's DeepSeekV3 branch for n_group <= 1 (FlashInfer >= 0.6.8)."""
    text = src.get("trtllm_fused_moe_routing_runner.cu") or src.get(
        "trtllm_fused_moe_runner.cu", ""
    )
    match = re.search(
        r"DeepSeekV3\s*&&\s*nGroup\s*<=\s*1\)(.*?)else if", text, flags=re.S
    )
    return match.group(1) if match else None


def minimax_branch(src: Sources) -> str | None:
    text = src.get("trtllm_fused_moe_routing_runner.cu") or src.get(
        "trtllm_fused_moe_runner.cu", ""
    )
    match = re.search(r"==\s*RoutingMethodType::MiniMax2\)(.*?)run\(", text, re.S)
    return match.group(1) if match else None


def flashinfer_3803(src: Sources) -> str:
    branch = no_group_branch(src)
    if branch is None:  # the grouped DeepSeek kernel routes it (see #3946)
        return flashinfer_3946(src)
    return "fixed" if "mSumEpsilon = 1e-20f" in branch else "bug"


def flashinfer_3946(src: Sources) -> str:
    text = src.get("trtllm_fused_moe_routing_deepseek.cu", "")
    text += src.get("launchMainKernel.cu", "")
    if "redNorm + params.mSumEpsilon" in text:
        return "fixed"
    return "bug" if "/ redNorm}" in text else "?"


def flashinfer_3875(src: Sources) -> str:
    if no_group_branch(src) is None and minimax_branch(src) is None:
        return "-"
    policy = src.get("RoutingCustomPolicy.cuh", "")
    return "fixed" if "kNeedsRawScores" in policy else "bug"


def flashinfer_3499(src: Sources) -> str:
    branch = minimax_branch(src)
    if branch is None:
        return "-"
    if "mRouteScale = 1.0f" in branch:
        return "bug"
    return "fixed" if "mRouteScale = routedScalingFactor" in branch else "?"


def flashinfer_2642(src: Sources) -> str:
    text = src.get("trtllm_fused_moe_dev_kernel.cu", "")
    if "(int64_t)permutedIdx * params.innerDim" in text:
        return "fixed"
    return "bug" if "int const baseIdx = permutedIdx * params.innerDim" in text else "?"


def flashinfer_4237(src: Sources) -> str:
    text = src.get("trtllm_fused_moe_kernel_launcher.cu", "")
    if "alloc_tensor({max_num_padded_tokens + 1}" in text:
        return "fixed"
    return "bug" if "alloc_tensor({max_num_padded_tokens}" in text else "?"


#: The batched-GEMM kernel build flashinfer#4486 measured NaNs with.
BROKEN_BMM = "batched_gemm-3d40263-3e19f0a/"


def flashinfer_4486(src: Sources) -> str:
    """Tile 192 advertised for per-token NVFP4 with the kernel build that
    gives NaN; 0.6.18 stops advertising it there (flashinfer#4563), 0.7.x
    advertises it again with rebuilt kernels (flashinfer#4741), which shows
    here only as another kernel build."""
    text = src.get("trtllm_fused_moe_kernel_launcher.cu", "")
    if "tiles.push_back(192)" not in text:
        return "-"
    if "!use_per_token_scaling" in text:
        return "fixed"
    return "bug" if BROKEN_BMM in src.get("artifacts.py", "") else "fixed"


MARKERS: dict[str, Callable[[Sources], str]] = {
    "flashinfer#3803": flashinfer_3803,
    "flashinfer#3946": flashinfer_3946,
    "flashinfer#3875": flashinfer_3875,
    "flashinfer#3499": flashinfer_3499,
    "flashinfer#2642": flashinfer_2642,
    "flashinfer#4237": flashinfer_4237,
    "flashinfer#4486": flashinfer_4486,
}


def wheel(directory: Path, version: str) -> Path:
    name = f"flashinfer_python-{version}-py3-none-any.whl"
    path = directory / name
    if not path.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", str(directory),
             f"flashinfer-python=={version}"],
            check=True,
        )  # fmt: skip
    return path


def sources(path: Path) -> Sources:
    found: dict[str, list[str]] = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            base = name.rsplit("/", 1)[-1]
            if name == "flashinfer/artifacts.py" or (
                name.startswith("flashinfer/data/") and base in FILES
            ):
                text = archive.read(name).decode("utf-8", "replace")
                found.setdefault(base, []).append(text)
    return {base: "\n".join(texts) for base, texts in found.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="*", default=RELEASES)
    parser.add_argument(
        "--wheels", type=Path, default=ROOT / "build" / "flashinfer-wheels"
    )
    args = parser.parse_args()
    args.wheels.mkdir(parents=True, exist_ok=True)
    ids = list(MARKERS)
    print("| FlashInfer | " + " | ".join(ids) + " |")
    print("|---" * (len(ids) + 1) + "|")
    for version in args.versions:
        src = sources(wheel(args.wheels, version))
        cells = [MARKERS[bug_id](src) for bug_id in ids]
        print(f"| {version} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
