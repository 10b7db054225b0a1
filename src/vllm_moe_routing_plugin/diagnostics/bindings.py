# SPDX-License-Identifier: Apache-2.0
"""Whether the installed vLLM's calls into FlashInfer bind to the installed
FlashInfer (``vllm-moe-routing bindings``).

vLLM 0.18 and 0.19 pin FlashInfer 0.6.6, whose fused kernels route
Renormalize layers wrongly (flashinfer#2822); the fixed routing means
installing a newer FlashInfer over that pin. A renamed function or argument,
or a newly required one, would then fail only on a Blackwell GPU, at the first
forward pass of a MoE layer. This check finds the failure on any machine:

1. read vLLM's source with ``ast`` (nothing of vLLM is imported) and collect
   every reference into ``flashinfer``: imports, attributes (enum members),
   ``("flashinfer.module", "name")`` pairs (vLLM's lazy wrappers and
   feature checks in ``vllm/utils/flashinfer.py``) and calls, with the
   positional and keyword arguments each call passes; calls through vLLM's
   lazy wrappers count as calls of the function they wrap;
2. import FlashInfer (no kernel runs, no CUDA context on a machine without
   a GPU) and bind each call to ``inspect.signature`` of its function;
3. compare the routing-method numbers vLLM passes (its ``RoutingMethodType``)
   with what FlashInfer's enum calls them, and say for each number they
   name differently whether a layer routed so can reach FlashInfer's
   in-kernel routing: only where one of vLLM's routing checks of the fused
   kernels (the plugin's targets, read from vLLM's source) accepts it.

Calls on objects FlashInfer returns (``wrapper.run(...)``) are not followed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
import inspect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .. import targets
from ..errors import describe_error
from ..facts import (
    FLASHINFER,
    VLLM,
    VersionOf,
    base_requirements,
    installed_version,
)

Kind = Literal["import", "name", "call"]
State = Literal["binds", "missing", "does-not-bind", "no-signature", "import-fails"]

#: vLLM source paths (relative to the ``vllm`` package) of the fused-MoE code:
#: the experts, oracles, quantization methods that build them, and the
#: FlashInfer utilities they use. Everything else is reported as "elsewhere".
MOE_PATHS = (
    "model_executor/layers/fused_moe/",
    "model_executor/layers/quantization/",
    "utils/flashinfer.py",
)
ROUTING_ENUM = "RoutingMethodType"
FLASHINFER_ROUTING_ENUM = "flashinfer.fused_moe.RoutingMethodType"


@dataclass(frozen=True)
class Reference:
    """One place where vLLM's source names something of FlashInfer."""

    kind: Kind
    target: str  # dotted, e.g. "flashinfer.fused_moe.trtllm_fp8_block_scale_moe"
    file: str  # relative to the vllm package
    line: int
    positional: int = 0  # calls: positional arguments passed
    keywords: tuple[str, ...] = ()  # calls: keyword arguments passed
    unpacked: bool = False  # calls: *args or **kwargs (bound partially)

    @property
    def moe(self) -> bool:
        return self.file.startswith(MOE_PATHS)

    @property
    def where(self) -> str:
        return f"vllm/{self.file}:{self.line}"


@dataclass(frozen=True)
class Checked:
    reference: Reference
    state: State
    detail: str = ""

    @property
    def failed(self) -> bool:
        """Bound, or a callable without a signature to bind (nothing wrong known)."""
        return self.state not in ("binds", "no-signature")


#: vLLM routing methods no model is served with, and what gives a layer one.
#: A difference in their numbering only matters to that tool.
TESTING_ONLY = {
    "Simulated": "vLLM's routing simulator (VLLM_MOE_ROUTING_SIMULATION_STRATEGY, "
    "a testing aid)",
}


@dataclass(frozen=True)
class EnumMeaning:
    """One routing-method number vLLM passes, FlashInfer's name for it, and,
    where the names differ, whether that matters for the fused-MoE calls."""

    value: int
    vllm: str
    flashinfer: str | None
    #: the routing checks of vLLM's fused TRT-LLM kernels that accept it
    accepted_by: tuple[str, ...] = ()
    #: a layer a model is served with can reach FlashInfer's routing under the
    #: other name (the check fails)
    matters: bool = False
    why: str = ""  # in words, where the names differ


@dataclass
class Report:
    vllm: str | None
    flashinfer: str | None
    checked: list[Checked] = field(default_factory=list)
    routing_methods: list[EnumMeaning] = field(default_factory=list)
    #: FlashInfer's requirements this environment does not meet (installed
    #: with ``--no-deps`` over vLLM's pins, nothing else changes)
    unmet_requirements: list[str] = field(default_factory=list)
    error: str | None = None  # why nothing could be checked
    #: ``import flashinfer`` raised (a companion-wheel mismatch, a missing
    #: dependency): every reference fails with it, so they are not listed
    import_error: str | None = None
    #: what to run, where the import failed for a known environment clash
    import_advice: str | None = None

    def of(self, moe: bool) -> list[Checked]:
        return [c for c in self.checked if c.reference.moe == moe]

    def failures(self, moe: bool = True) -> list[Checked]:
        return [c for c in self.of(moe) if c.failed]

    @property
    def misread(self) -> list[EnumMeaning]:
        """Routing methods FlashInfer's kernels would read as another one for
        a layer a model is served with."""
        return [m for m in self.routing_methods if m.matters]

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and self.import_error is None
            and not self.failures(moe=True)
            and not self.misread
        )

    def summary(self, moe: bool) -> dict[str, int]:
        rows = self.of(moe)
        calls = [c for c in rows if c.reference.kind == "call"]
        return {
            "references": len(rows),
            "calls": len(calls),
            "calls_bind": sum(c.state == "binds" for c in calls),
            "calls_without_signature": sum(c.state == "no-signature" for c in calls),
            "failures": len(self.failures(moe)),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "vllm": self.vllm,
            "flashinfer": self.flashinfer,
            "error": self.error,
            "import_error": self.import_error,
            "import_advice": self.import_advice,
            "ok": self.ok,
            "moe": self.summary(moe=True),
            "elsewhere": self.summary(moe=False),
            "failures": [
                {**asdict(c.reference), "state": c.state, "detail": c.detail}
                for c in self.checked
                if c.failed
            ],
            "routing_methods": [asdict(m) for m in self.routing_methods],
            "unmet_requirements": self.unmet_requirements,
        }


# -- reading vLLM's source ----------------------------------------------------


def _dotted(node: ast.expr) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _module_of(relative: str) -> str:
    parts = Path(relative).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("vllm", *parts))


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _string_pair(elements: Sequence[ast.expr]) -> str | None:
    """``"flashinfer.fused_moe", "trtllm_fp8_block_scale_moe"`` -> dotted."""
    if len(elements) < 2:
        return None
    first, second = elements[0], elements[1]
    if (
        isinstance(first, ast.Constant)
        and isinstance(first.value, str)
        and first.value.split(".")[0] == "flashinfer"
        and isinstance(second, ast.Constant)
        and isinstance(second.value, str)
        and second.value.isidentifier()
    ):
        return f"{first.value}.{second.value}"
    return None


def _wrappers(module: str, tree: ast.Module) -> dict[str, str]:
    """Module-level ``name = wrapper("flashinfer.x", "attr")`` (vLLM's lazy
    import wrappers) -> ``{"vllm.module.name": "flashinfer.x.attr"}``."""
    found = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            target = _string_pair(node.value.args)
            if target:
                found[f"{module}.{node.targets[0].id}"] = target
    return found


def _file_references(
    relative: str, tree: ast.Module, wrappers: dict[str, str]
) -> Iterator[Reference]:
    module = _module_of(relative)
    is_package = relative.endswith("__init__.py")
    aliases: dict[str, str] = {
        name.rsplit(".", 1)[1]: name
        for name in wrappers
        if name.rsplit(".", 1)[0] == module
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "flashinfer":
                    yield Reference("import", alias.name, relative, node.lineno)
                bound = alias.asname or alias.name.split(".")[0]
                aliases[bound] = alias.name if alias.asname else bound
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node, is_package)
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
                if source.split(".")[0] == "flashinfer":
                    yield Reference(
                        "import", f"{source}.{alias.name}", relative, node.lineno
                    )
    called: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            called.add(id(node.func))
            pair = _string_pair(node.args)
            if pair:
                yield Reference("name", pair, relative, node.lineno)
            target = _resolve(_dotted(node.func), aliases, wrappers)
            if target:
                yield Reference(
                    "call",
                    target,
                    relative,
                    node.lineno,
                    positional=sum(not isinstance(a, ast.Starred) for a in node.args),
                    keywords=tuple(k.arg for k in node.keywords if k.arg),
                    unpacked=any(isinstance(a, ast.Starred) for a in node.args)
                    or any(k.arg is None for k in node.keywords),
                )
        elif isinstance(node, ast.Tuple):
            pair = _string_pair(node.elts)
            if pair:
                yield Reference("name", pair, relative, node.lineno)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in called:
            target = _resolve(_dotted(node), aliases, wrappers)
            if target and target.count(".") >= 2:
                yield Reference("name", target, relative, node.lineno)


def _resolve(
    dotted: str | None, aliases: dict[str, str], wrappers: dict[str, str]
) -> str | None:
    if not dotted:
        return None
    head, _, rest = dotted.partition(".")
    if head not in aliases:
        return None
    full = aliases[head] + (f".{rest}" if rest else "")
    if full in wrappers:
        return wrappers[full]
    return full if full.split(".")[0] == "flashinfer" else None


def _outermost(references: Iterable[Reference]) -> list[Reference]:
    """Each reference once, without the names that are only a prefix of a
    longer one on the same line (``a.B`` read inside ``a.B.C``)."""
    unique = sorted(set(references), key=lambda r: (r.file, r.line, r.target))
    on_line: dict[tuple[str, int], list[str]] = {}
    for ref in unique:
        on_line.setdefault((ref.file, ref.line), []).append(ref.target)
    return [
        ref
        for ref in unique
        if ref.kind != "name"
        or not any(
            other.startswith(ref.target + ".")
            for other in on_line[(ref.file, ref.line)]
        )
    ]


def vllm_root() -> Path | None:
    """The installed vLLM package directory, found without importing vLLM."""
    spec = importlib.util.find_spec("vllm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def scan(root: Path) -> list[Reference]:
    """Every reference into FlashInfer in the vLLM package at ``root``."""
    trees: dict[str, ast.Module] = {}
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        if "flashinfer" not in text:
            continue
        try:
            trees[path.relative_to(root).as_posix()] = ast.parse(text)
        except SyntaxError:
            continue
    wrappers: dict[str, str] = {}
    for relative, tree in trees.items():
        wrappers.update(_wrappers(_module_of(relative), tree))
    references: list[Reference] = []
    for relative, tree in trees.items():
        references.extend(_file_references(relative, tree, wrappers))
    return _outermost(references)


def vllm_routing_methods(root: Path) -> dict[str, int]:
    """vLLM's ``RoutingMethodType`` members and values, read from its source
    (values are written ``(1,)`` or ``8.0`` in some releases)."""
    path = root / "model_executor/layers/fused_moe/config.py"
    if not path.is_file():
        return {}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == ROUTING_ENUM:
            members = {}
            for item in node.body:
                if (
                    isinstance(item, ast.Assign)
                    and len(item.targets) == 1
                    and isinstance(item.targets[0], ast.Name)
                ):
                    try:
                        value = ast.literal_eval(item.value)
                    except ValueError:
                        continue
                    if isinstance(value, tuple):
                        value = value[0]
                    members[item.targets[0].id] = int(value)
            return members
    return {}


def _relative(module: str) -> str:
    return "/".join(module.split(".")[1:]) + ".py"


def _check_function(tree: ast.Module, target: targets.Target) -> ast.AST | None:
    body: list[ast.stmt] = tree.body
    if target.owner is not None:
        owners = [
            n for n in body if isinstance(n, ast.ClassDef) and n.name == target.owner
        ]
        if not owners:
            return None
        body = owners[0].body
    for node in body:
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name == target.check
        ):
            return node
    return None


#: A check that names no routing method accepts them all (``return True``).
EVERY_METHOD = "*"


def accepted_routing_methods(root: Path) -> dict[str, set[str]]:
    """The routing checks of vLLM's fused TRT-LLM kernels in the vLLM package
    at ``root`` (the plugin's targets), each with the ``RoutingMethodType``
    members it names: the methods it lets onto FlashInfer's in-kernel
    routing (every check of vLLM 0.16 - 0.34 is a list of accepted methods).
    A check that names none is taken as accepting every method."""
    found: dict[str, set[str]] = {}
    for target in targets.TARGETS:
        path = root / _relative(target.module)
        if not path.is_file():
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        function = _check_function(tree, target)
        if function is None:
            continue
        names = {
            node.attr
            for node in ast.walk(function)
            if isinstance(node, ast.Attribute)
            and (_dotted(node.value) or "").split(".")[-1] == ROUTING_ENUM
        }
        found[target.name] = names or {EVERY_METHOD}
    return found


def judge(meaning: EnumMeaning, checks: dict[str, set[str]]) -> EnumMeaning:
    """Whether vLLM and FlashInfer naming a number differently matters for the
    fused-MoE calls, and why, in words. FlashInfer reads the number only where
    it routes in the kernel, which vLLM allows only through these checks; a
    method no check accepts is routed by vLLM before the kernel."""
    if meaning.flashinfer == meaning.vllm:
        return meaning
    accepted_by = tuple(
        name
        for name, methods in checks.items()
        if meaning.vllm in methods or EVERY_METHOD in methods
    )
    theirs = (
        f"FlashInfer routes such a layer as {meaning.flashinfer}, not as {meaning.vllm}"
        if meaning.flashinfer is not None
        else f"FlashInfer knows no routing method {meaning.value}"
    )
    if not accepted_by:
        why = (
            "does not matter: no routing check of vLLM's fused TRT-LLM kernels "
            f"accepts {meaning.vllm}, so a layer routed so never reaches "
            "FlashInfer's in-kernel routing (vLLM routes it before the kernel, "
            "or picks another kernel)"
        )
        return EnumMeaning(meaning.value, meaning.vllm, meaning.flashinfer, why=why)
    where = ", ".join(accepted_by)
    accept = "accepts" if len(accepted_by) == 1 else "accept"
    if meaning.vllm in TESTING_ONLY:
        why = (
            f"matters only for testing: {where} {accept} {meaning.vllm}, which "
            f"only {TESTING_ONLY[meaning.vllm]} gives a layer; {theirs}"
        )
        return EnumMeaning(
            meaning.value, meaning.vllm, meaning.flashinfer, accepted_by, False, why
        )
    why = (
        f"MATTERS: {where} {accept} {meaning.vllm}, so a layer routed so reaches "
        f"FlashInfer's in-kernel routing, and {theirs}: wrong experts"
    )
    return EnumMeaning(
        meaning.value, meaning.vllm, meaning.flashinfer, accepted_by, True, why
    )


# -- binding to the installed FlashInfer ---------------------------------------


class _Unresolved(Exception):
    def __init__(self, state: State, detail: str) -> None:
        super().__init__(detail)
        self.state = state
        self.detail = detail


def _lookup(dotted: str) -> Any:
    parts = dotted.split(".")
    obj: Any = None
    index = 0
    for index in range(len(parts), 0, -1):
        name = ".".join(parts[:index])
        try:
            obj = importlib.import_module(name)
            break
        except ModuleNotFoundError as exc:
            if exc.name is not None and (
                name == exc.name or name.startswith(exc.name + ".")
            ):
                continue  # not a module: an attribute of a shorter prefix
            raise _Unresolved("import-fails", describe_error(exc)) from exc
        except Exception as exc:
            raise _Unresolved("import-fails", describe_error(exc)) from exc
    else:
        raise _Unresolved("missing", f"no module {parts[0]}")
    for attr in parts[index:]:
        try:
            obj = getattr(obj, attr)
        except AttributeError as exc:
            raise _Unresolved(
                "missing", f"{type(obj).__name__} has no {attr!r}"
            ) from exc
    return obj


_VALUE = object()


def check(reference: Reference) -> Checked:
    try:
        obj = _lookup(reference.target)
    except _Unresolved as exc:
        return Checked(reference, exc.state, exc.detail)
    if reference.kind != "call":
        return Checked(reference, "binds")
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError) as exc:
        return Checked(reference, "no-signature", describe_error(exc))
    arguments = [_VALUE] * reference.positional
    keywords = dict.fromkeys(reference.keywords, _VALUE)
    try:
        if reference.unpacked:
            signature.bind_partial(*arguments, **keywords)
        else:
            signature.bind(*arguments, **keywords)
    except TypeError as exc:
        return Checked(reference, "does-not-bind", str(exc))
    return Checked(reference, "binds")


def routing_meanings(vllm_members: dict[str, int]) -> list[EnumMeaning]:
    """What FlashInfer calls each number vLLM can pass as a routing method;
    nothing where FlashInfer's enum is not found (vLLM's import of it then
    fails the binding check, which says so)."""
    try:
        enum = _lookup(FLASHINFER_ROUTING_ENUM)
        names = {int(member): member.name for member in enum}
    except Exception:
        return []
    return [
        EnumMeaning(value, name, names.get(value))
        for name, value in sorted(vllm_members.items(), key=lambda kv: kv[1])
    ]


def unmet_requirements(distribution: str) -> list[str]:
    """``distribution``'s requirements (without extras) that the installed
    packages do not meet, e.g. ``cuda-tile (not installed)``."""
    unmet = []
    for requirement in base_requirements(distribution):
        installed = installed_version(requirement.name)
        if installed is None:
            unmet.append(f"{requirement} (not installed)")
        elif not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{requirement} ({installed} installed)")
    return unmet


def import_advice(error: str, version_of: VersionOf = installed_version) -> str | None:
    """What to run where ``import flashinfer`` failed for a known clash of
    the environment, not of FlashInfer: cuda-python 12.x's wheel carries the
    files of cuda-bindings 12, and where a resolver installs it beside
    cuda-bindings 13 (a uv install of vLLM 0.33 / 0.34) both write
    ``cuda/bindings`` at once; with 12.x's files left on disk FlashInfer's
    CUTLASS DSL fails on ``cuda.bindings.runtime.cudaLibrary_t``. Writing
    cuda-bindings' own files again mends it (noxfile.py's ``install`` does)."""
    cuda_python = version_of("cuda-python")
    cuda_bindings = version_of("cuda-bindings")
    if "cudaLibrary_t" not in error or not (cuda_python and cuda_bindings):
        return None
    return (
        f"cuda-python {cuda_python} overwrote files of cuda-bindings {cuda_bindings}; "
        "write them again: pip install --force-reinstall --no-deps "
        f"cuda-bindings=={cuda_bindings} (uv: uv pip install --reinstall-package "
        f"cuda-bindings cuda-bindings=={cuda_bindings})"
    )


def run(root: Path | None = None, version_of: VersionOf = installed_version) -> Report:
    """The check for the installed vLLM (or the vLLM package at ``root``)
    and the importable FlashInfer."""
    vllm = version_of(VLLM)
    flashinfer = version_of(FLASHINFER)
    root = root or vllm_root()
    report = Report(vllm, flashinfer)
    if root is None:
        report.error = "vLLM is not installed"
        return report
    if flashinfer is None:
        report.error = f"{FLASHINFER} is not installed"
        return report
    # FlashInfer 0.6.x refuses to import when a companion wheel's version
    # differs; that refusal is itself a finding, so the check is not bypassed.
    try:
        importlib.import_module("flashinfer")
    except Exception as exc:
        report.import_error = describe_error(exc)
        report.import_advice = import_advice(report.import_error, version_of)
        return report
    report.checked = [check(ref) for ref in scan(root)]
    checks = accepted_routing_methods(root)
    report.routing_methods = [
        judge(m, checks) for m in routing_meanings(vllm_routing_methods(root))
    ]
    report.unmet_requirements = unmet_requirements(FLASHINFER)
    return report


def exit_status(report: Report) -> int:
    if report.error:
        return 2
    return 0 if report.ok else 1


def _installed(name: str, version: str | None) -> str:
    return f"{name} {version}" if version else f"{name} (not installed)"


def render(report: Report) -> str:
    if report.error:
        present = [
            f"{name} {version}"
            for name, version in (
                ("vLLM", report.vllm),
                (FLASHINFER, report.flashinfer),
            )
            if version
        ]
        return "\n".join(
            [
                f"Nothing checked: {report.error} in this environment"
                + (f" ({', '.join(present)} is)." if present else "."),
                "This check binds the installed vLLM's calls into FlashInfer to the "
                "installed FlashInfer: run it where both are installed, the way you "
                "serve.",
            ]
        )
    lines = [
        f"{_installed('vLLM', report.vllm)} x "
        f"{_installed(FLASHINFER, report.flashinfer)}"
    ]
    if report.import_error:
        lines.append(f"  import flashinfer failed: {report.import_error}")
        if report.import_advice:
            lines.append(f"  what to run: {report.import_advice}")
        return "\n".join(lines)
    for moe, label in ((True, "fused-MoE code"), (False, "elsewhere in vLLM")):
        s = report.summary(moe)
        lines.append(
            f"  {label}: {s['references']} references, {s['calls']} calls, "
            f"{s['calls_bind']} bind, {s['calls_without_signature']} without a "
            f"signature to bind; {s['failures']} references fail (calls that do not "
            "bind, and names FlashInfer lacks)"
        )
        for c in report.failures(moe):
            lines.append(
                f"    {c.state}: {c.reference.target} ({c.reference.where}): {c.detail}"
            )
    if report.unmet_requirements:
        lines.append(
            "  requirements of FlashInfer not met here: "
            + ", ".join(report.unmet_requirements)
        )
    differing = [m for m in report.routing_methods if m.flashinfer != m.vllm]
    if differing:
        lines.append(
            "  routing-method numbers vLLM passes that FlashInfer names differently:"
        )
        for m in differing:
            lines.append(
                f"    {m.value}: vLLM {m.vllm}, FlashInfer {m.flashinfer or '(none)'}"
            )
            lines.append(f"       {m.why}")
    return "\n".join(lines)
