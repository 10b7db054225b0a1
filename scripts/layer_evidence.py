# SPDX-License-Identifier: Apache-2.0
"""What each vLLM release hands the fused MoE kernels per layer, read from the
Python sources the vllm wheels ship.

    python scripts/layer_evidence.py [--wheels DIR] [VERSION ...]

Downloads the wheels it lacks into DIR (default ``build/vllm-wheels``) with
``pip download --no-deps`` and keeps their ``.py`` files only, then prints one
row per release:

* ``layer``: the class whose constructor asks the backend oracle for the
  layer's kernel (``self.quant_method = ...``) after setting every value the
  plugin's layer checks read (``layers.LAYER_ATTRIBUTES``): ``FusedMoE`` or
  ``RoutedExperts``; ``?`` where none does;
* ``deepseek``/``glm``: what ``deepseek_v2.py`` / ``glm4_moe.py`` pass into the
  layer as its scale: ``1.0`` (they scale the output themselves) or
  ``to-output`` (``apply_routed_scale_to_output``, so the layer's factor is
  1.0 too);
* ``bailing``/``afmoe``/``step3p5``: whether those model files pass their
  scale into the layer (``scale``) or not (``-``);
* ``MiniMax2``: whether ``get_routing_method_type`` maps a sigmoid router
  with a bias and no expert groups to MiniMax2: ``-`` (no), ``all``, or
  ``scale 1`` (only where the scale is 1);
* ``bf16 scale`` / ``mxint4 scale``: whether the function vLLM calls
  ``trtllm_bf16_moe`` / the MXINT4 helper through passes
  ``routed_scaling_factor`` (vllm#43769 / vllm#32437): ``passes``, ``drops``,
  ``-`` where there is no such path.

docs/known-bugs.md quotes the table.
"""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vllm_moe_routing_plugin.layers import LAYER_ATTRIBUTES  # noqa: E402

RELEASES = [
    "0.16.0", "0.17.1", "0.18.1", "0.19.1", "0.20.2", "0.21.0", "0.22.1", "0.23.0",
    "0.24.0", "0.25.1", "0.26.0", "0.27.1", "0.28.0", "0.29.0", "0.30.0", "0.31.0",
    "0.32.0", "0.33.0", "0.34.0",
]  # fmt: skip
FUSED_MOE = "vllm/model_executor/layers/fused_moe"
MODELS = "vllm/model_executor/models"


def sources(wheels: Path, version: str) -> Path:
    """The release's ``.py`` files, downloaded and unpacked once."""
    tree = wheels / version
    if tree.is_dir():
        return tree
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--only-binary", ":all:", f"vllm=={version}", "-d", download],
            check=True,
        )  # fmt: skip
        wheel = next(Path(download).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.endswith(".py"):
                    archive.extract(name, tree)
    return tree


def read(tree: Path, relative: str) -> str:
    path = tree / relative
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def layer_class(tree: Path) -> str:
    wanted = {*LAYER_ATTRIBUTES, "quant_method"}
    for relative, cls in (
        (f"{FUSED_MOE}/layer.py", "FusedMoE"),
        (f"{FUSED_MOE}/routed_experts.py", "RoutedExperts"),
    ):
        text = read(tree, relative)
        if not text:
            continue
        for node in ast.parse(text).body:
            if not (isinstance(node, ast.ClassDef) and node.name == cls):
                continue
            init = next(
                (n for n in node.body if getattr(n, "name", "") == "__init__"), None
            )
            if init is None:
                continue
            order: dict[str, int] = {}
            for sub in ast.walk(init):
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store):
                    order.setdefault(sub.attr, sub.lineno)
            if wanted <= set(order) and all(
                order[a] < order["quant_method"] for a in LAYER_ATTRIBUTES
            ):
                return cls
    return "?"


def scale_into_layer(text: str) -> str:
    if "apply_routed_scale_to_output=" in text:
        return "to-output"
    return "1.0" if "routed_scaling_factor=1.0" in text else "?"


def passes(text: str, pattern: str) -> str:
    return "scale" if re.search(pattern, text) else "-"


def minimax2(tree: Path) -> str:
    text = read(tree, f"{FUSED_MOE}/config.py")
    body = text[text.find("def get_routing_method_type") :]
    body = body[: body.find("\ndef ", 1)]
    if "MiniMax2" not in body:
        return "-"
    return "scale 1" if "routed_scaling_factor in (None, 1.0)" in body else "all"


def bf16_scale(tree: Path) -> str:
    text = read(tree, f"{FUSED_MOE}/experts/trtllm_bf16_moe.py")
    if text:
        call = text[text.find("trtllm_bf16_moe(") :]
        call = call[: call.find(")\n")]
        return "passes" if "routed_scaling_factor=" in call else "drops"
    text = read(tree, f"{FUSED_MOE}/flashinfer_trtllm_moe.py")
    if "def flashinfer_fused_moe_bf16" not in text:
        return "-"
    body = text[text.find("def flashinfer_fused_moe_bf16") :]
    body = body[: body.find("\ndef ", 1)]
    return "passes" if "routed_scaling_factor=" in body else "drops"


def mxint4_scale(tree: Path) -> str:
    text = read(tree, f"{FUSED_MOE}/experts/trtllm_mxint4_moe.py")
    if "class TrtLlmMxint4ExpertsMonolithic" not in text:
        return "-"
    call = text[text.find("return flashinfer_trtllm_mxint4_moe(") :]
    call = call[: call.find(")\n")]
    return "passes" if "routed_scaling_factor=" in call else "drops"


COLUMNS = (
    "vLLM", "layer", "deepseek", "glm", "bailing", "afmoe", "step3p5", "MiniMax2",
    "bf16 scale", "mxint4 scale",
)  # fmt: skip


def row(version: str, tree: Path) -> list[str]:
    model = lambda name: read(tree, f"{MODELS}/{name}.py")  # noqa: E731
    return [
        version,
        layer_class(tree),
        scale_into_layer(model("deepseek_v2")),
        scale_into_layer(model("glm4_moe")),
        passes(model("bailing_moe"), r"routed_scaling_factor=self\.routed_scaling"),
        passes(model("afmoe"), r"routed_scaling_factor=self\.route_scale"),
        passes(model("step3p5"), r"routed_scaling_factor=config\.moe_router_scal"),
        minimax2(tree),
        bf16_scale(tree),
        mxint4_scale(tree),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, default=ROOT / "build" / "vllm-wheels")
    parser.add_argument("versions", nargs="*", default=RELEASES)
    args = parser.parse_args()
    args.wheels.mkdir(parents=True, exist_ok=True)
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for version in args.versions:
        print("| " + " | ".join(row(version, sources(args.wheels, version))) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
