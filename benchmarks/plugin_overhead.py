# SPDX-License-Identifier: Apache-2.0
"""What the plugin costs a vLLM process, measured in fresh processes.

    python benchmarks/plugin_overhead.py [--pairs 20] [--json benchmarks/results.json]

Run it with the Python of an environment that has vLLM and the plugin
(``bash scripts/nox.sh -s benchmark -- ARGS`` does that). Runs with the
plugin and without it alternate; "without" sets ``VLLM_PLUGINS`` to vLLM's own
general plugins only. Prints a table, checks the budgets and writes JSON.

1. ``import vllm.plugins; load_general_plugins()`` on the acting path (an
   SM100 GPU assumed, so the plugin decides ``enable`` and installs its import
   hook): ratio of medians (budget <= 1.02)
2. time inside ``register()``, in a process where vLLM's loader has just run,
   on each path (budget: median <= 5 ms on every one): ``enable`` and
   ``guard`` with an SM100 GPU assumed (the guard forced with
   ``VLLM_MOE_ROUTING_RENORMALIZE=disable``, as the installed FlashInfer is
   fixed), and the GPUs NVML reports (on a machine without a GPU:
   ``not-applicable``); and, separately, one NVML query (init, devices,
   capabilities, shutdown)
3. patching the targets of a module when vLLM imports it: the import hook's
   own time, vLLM's import excluded (budget <= 1 ms a module). The first module
   of a process also imports the patching modules (``checks``, ``patches``,
   ``patching``) once; it is reported on its own line
4. modules the plugin causes to be imported in a process that builds no MoE
   layer (budget: nothing from vllm.model_executor or flashinfer, no CUDA init)
5. wall time of ``vllm-moe-routing status`` and ``status --json``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

VLLM_OWN_PLUGINS = "lora_filesystem_resolver,lora_hf_hub_resolver"
SM100 = {"VLLM_MOE_ROUTING_DEVICE_CAPABILITY": "10.0"}
#: register() paths: the environment of each (the plugin itself excluded from
#: vLLM's loader, so that the script's own call is the first).
REGISTER_PATHS = {
    "enable (SM100 assumed)": SM100,
    "guard (SM100 assumed, forced)": {
        **SM100,
        "VLLM_MOE_ROUTING_RENORMALIZE": "disable",
    },
    "NVML (this machine's GPUs)": {},
}

LOAD = """
import time
t = time.perf_counter()
import vllm.plugins
loader = time.perf_counter()
vllm.plugins.load_general_plugins()
end = time.perf_counter()
print(end - t, end - loader)
"""

REGISTER = """
import time
import vllm.plugins
vllm.plugins.load_general_plugins()  # the plugin excluded: VLLM_PLUGINS
import vllm_moe_routing_plugin as p
t = time.perf_counter()
p.register()
print(time.perf_counter() - t)
"""

NVML = """
import time
import vllm.plugins
vllm.plugins.load_general_plugins()  # as in a vLLM process: pynvml already loaded
from vllm_moe_routing_plugin import facts
t = time.perf_counter()
reading = facts.read_gpus_nvml({})
print(time.perf_counter() - t, len(reading.gpus))
"""

PATCH = """
import time
import vllm.plugins
vllm.plugins.load_general_plugins()
from vllm_moe_routing_plugin import activation as runtime
current = runtime.current()
assert current is not None and current.decision.action == "enable"
spent = []
apply_module = current.apply_module
def timed(module):
    t = time.perf_counter()
    result = apply_module(module)
    spent.append(time.perf_counter() - t)
    return result
current.apply_module = timed
import vllm.model_executor.layers.fused_moe.experts.trtllm_fp8_moe
import vllm.model_executor.layers.fused_moe.experts.trtllm_nvfp4_moe
import vllm.model_executor.layers.fused_moe.experts.trtllm_mxfp4_moe
print(*spent)
"""

MODULES = """
import json, sys
import vllm.plugins
vllm.plugins.load_general_plugins()
import torch
print(json.dumps({"modules": sorted(sys.modules),
                  "cuda_initialized": torch.cuda.is_initialized()}))
"""


def python(code: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return result.stdout.strip().splitlines()[-1]


def stats(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def compile_bytecode() -> None:
    """Byte-compile the environment once, as ``pip install`` does (uv does not
    by default, and PYTHONDONTWRITEBYTECODE may be set): timings of fresh
    processes are otherwise dominated by compiling vLLM's sources."""
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    marker = Path(site) / ".moe-routing-bytecode"
    if marker.exists():
        return
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", site],
        env=env,
        capture_output=True,
        check=False,
    )
    marker.write_text("compiled\n")


def measure(pairs: int) -> dict:
    with_plugin: list[float] = []
    without: list[float] = []
    loader_with: list[float] = []
    loader_without: list[float] = []
    runs = {
        True: (SM100, with_plugin, loader_with),
        False: ({**SM100, "VLLM_PLUGINS": VLLM_OWN_PLUGINS}, without, loader_without),
    }
    for _ in range(2):  # warm the page cache; not counted
        python(LOAD, SM100)
    for pair in range(pairs):
        # ABBA order, so that drift in the machine's speed hits both sides
        for plugin in (True, False) if pair % 2 == 0 else (False, True):
            env, total, loader = runs[plugin]
            whole, load = map(float, python(LOAD, env).split())
            total.append(whole)
            loader.append(load)
    register = {
        path: stats(
            [
                float(python(REGISTER, {**env, "VLLM_PLUGINS": VLLM_OWN_PLUGINS}))
                for _ in range(pairs)
            ]
        )
        for path, env in REGISTER_PATHS.items()
    }
    nvml_runs = [
        python(NVML, {"VLLM_PLUGINS": VLLM_OWN_PLUGINS}).split() for _ in range(pairs)
    ]
    nvml = [float(t) for t, _ in nvml_runs]
    gpus = int(nvml_runs[0][1])
    patch_runs = [list(map(float, python(PATCH, SM100).split())) for _ in range(pairs)]
    first_patch = [run[0] for run in patch_runs]
    later_patch = [statistics.median(run[1:]) for run in patch_runs if run[1:]]
    seen_with = json.loads(python(MODULES, SM100))
    seen_without = json.loads(
        python(MODULES, {**SM100, "VLLM_PLUGINS": VLLM_OWN_PLUGINS})
    )
    added = sorted(set(seen_with["modules"]) - set(seen_without["modules"]))
    cli = str(Path(sys.executable).with_name("vllm-moe-routing"))
    status_text, status_json = [], []
    for _ in range(max(3, pairs // 3)):
        for args, sink in (([], status_text), (["--json"], status_json)):
            t = time.perf_counter()
            subprocess.run(
                [cli, "status", "--capability", "10.0", *args],
                capture_output=True,
                check=False,
            )
            sink.append(time.perf_counter() - t)
    load_with, load_without = stats(with_plugin), stats(without)
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "gpus_seen_by_nvml": gpus,
        "load_general_plugins_s": {"with": load_with, "without": load_without},
        "loader_only_s": {"with": stats(loader_with), "without": stats(loader_without)},
        "load_ratio_of_medians": load_with["median"] / load_without["median"],
        "register_s": register,
        "nvml_query_s": stats(nvml),
        "patch_on_import_s": stats(later_patch),
        "first_patch_on_import_s": stats(first_patch),
        "modules_added": added,
        "cuda_initialized": seen_with["cuda_initialized"],
        "status_s": stats(status_text),
        "status_json_s": stats(status_json),
    }


def budgets(result: dict) -> list[tuple[str, bool, str]]:
    added = result["modules_added"]
    forbidden = [
        m
        for m in added
        if m.startswith("vllm.model_executor") or m.split(".")[0] == "flashinfer"
    ]
    checks = [
        (
            "load ratio <= 1.02",
            result["load_ratio_of_medians"] <= 1.02,
            f"{result['load_ratio_of_medians']:.4f}",
        ),
        *(
            (
                f"register() median <= 5 ms, {path}",
                measured["median"] <= 0.005 or queries_a_gpu(path, result),
                f"{measured['median'] * 1e3:.2f} ms"
                + (
                    " (NVML queried a GPU: not this budget)"
                    if queries_a_gpu(path, result)
                    else ""
                ),
            )
            for path, measured in result["register_s"].items()
        ),
        (
            "patch on import <= 1 ms (each module after the first)",
            result["patch_on_import_s"]["median"] <= 0.001,
            f"{result['patch_on_import_s']['median'] * 1e3:.3f} ms",
        ),
        (
            "no vllm.model_executor / flashinfer import",
            not forbidden,
            ", ".join(forbidden) or "none",
        ),
        ("no CUDA initialisation", not result["cuda_initialized"], "none"),
    ]
    return checks


def queries_a_gpu(path: str, result: dict) -> bool:
    """A real NVML query of a real GPU takes ~10 ms by itself (H200: 11.5 ms);
    the budget is for the plugin's own work."""
    return path.startswith("NVML") and result["gpus_seen_by_nvml"] > 0


def ms(s: dict[str, float]) -> str:
    return f"{s['median'] * 1e3:9.2f} {s['min'] * 1e3:9.2f} {s['max'] * 1e3:9.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    compile_bytecode()
    result = measure(args.pairs)
    load = result["load_general_plugins_s"]
    print(
        f"machine: {result['machine']}; GPUs seen by NVML: {result['gpus_seen_by_nvml']}"
    )
    print(f"{'measure (ms)':<40} {'median':>9} {'min':>9} {'max':>9}")
    print(f"{'load_general_plugins, with plugin':<40} {ms(load['with'])}")
    print(f"{'load_general_plugins, without plugin':<40} {ms(load['without'])}")
    loader = result["loader_only_s"]
    print(f"{'  of which the loader, with plugin':<40} {ms(loader['with'])}")
    print(f"{'  of which the loader, without plugin':<40} {ms(loader['without'])}")
    for path, measured in result["register_s"].items():
        print(f"{'register(), ' + path:<40} {ms(measured)}")
    print(f"{'NVML query':<40} {ms(result['nvml_query_s'])}")
    first = result["first_patch_on_import_s"]
    print(f"{'patch on import, first module':<40} {ms(first)}")
    print(
        f"{'patch on import, each later module':<40} {ms(result['patch_on_import_s'])}"
    )
    print(f"{'vllm-moe-routing status':<40} {ms(result['status_s'])}")
    print(f"{'vllm-moe-routing status --json':<40} {ms(result['status_json_s'])}")
    print(f"load ratio of medians: {result['load_ratio_of_medians']:.4f}")
    print(
        f"modules added by the plugin: {', '.join(result['modules_added']) or 'none'}"
    )
    checks = budgets(result)
    result["budgets"] = [{"budget": b, "met": ok, "value": v} for b, ok, v in checks]
    for budget, ok, value in checks:
        print(f"{'met ' if ok else 'MISSED'} {budget}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
