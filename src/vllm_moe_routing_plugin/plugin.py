# SPDX-License-Identifier: Apache-2.0
"""One process's activation: facts -> decision -> patch -> report.

vLLM loads general plugins in every process it starts (API server, engine
core, workers, Ray workers, the model-inspection subprocess) and does not
catch what a plugin function raises (``vllm/plugins/__init__.py``), so every
step here is guarded: a failure becomes one WARNING naming the step, and vLLM
is left as it was.

It is also cheap (budgets in README "Performance"): the modules that patch
(``targets``, ``hook``) are imported only when the decision may change vLLM,
and the records are NamedTuples, which Python builds faster than dataclasses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import __version__, policy, report, settings
from . import facts as facts_
from .report import describe_error

if TYPE_CHECKING:
    from . import targets
    from .hook import ImportHook

#: Under vLLM's ``vllm`` logger, whose handler is the one ``vllm serve`` prints
#: through (it does not propagate; a logger outside ``vllm.`` is not shown).
logger = logging.getLogger("vllm.moe_routing")


class StepFailed(Exception):
    """A step of the activation raised; carries the step's name."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"{step} failed ({describe_error(error)})")
        self.step = step
        self.error = error


@contextmanager
def step(name: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        raise StepFailed(name, exc) from exc


class Activation:
    """What the plugin decided and did in this process."""

    def __init__(
        self,
        version: str,
        config: settings.Settings,
        facts: facts_.Facts,
        decision: policy.Decision,
    ) -> None:
        self.version = version
        self.settings = config
        self.facts = facts
        self.decision = decision
        self.outcomes: dict[targets.Target, targets.Outcome] = {}
        self.pending: set[str] = set()
        self.hook: ImportHook | None = None
        self.line_logged = False

    def on_import(self, module: ModuleType) -> None:
        """Apply the decision to the targets of a module vLLM just imported.
        Called inside vLLM's import: never raises."""
        try:
            outcomes = self.apply_module(module)
            self.report(outcomes)
        except Exception as exc:
            self.undo()
            warn(f"patching {module.__name__} on import", exc)

    def apply_module(self, module: ModuleType) -> list[targets.Outcome]:
        from . import targets

        self.pending.discard(module.__name__)
        found = []
        for target in targets.TARGETS:
            if target.module == module.__name__:
                outcome = targets.apply(target, module, self.decision)
                self.outcomes[target] = outcome
                found.append(outcome)
        for outcome in found:
            if outcome.state in ("unrecognised", "failed"):
                logger.warning("%s: %s", report.PLUGIN, report.describe(outcome))
        return found

    def line(self) -> str:
        return report.decision_line(
            self.version, self.decision, self.outcomes.values(), self.pending
        )

    def report(self, new: list[targets.Outcome] | None = None) -> None:
        """Log the decision line once logging is up; after that, a short line
        for targets patched on import."""
        if not _logging_ready():
            return  # vLLM >= 0.31 configures logging after loading plugins
        if not self.line_logged:
            self.line_logged = True
            logger.info("%s", self.line())
        elif new and any(o.state not in ("absent", "untouched") for o in new):
            logger.info("%s", report.import_line(new))

    def undo(self) -> None:
        """Remove the hook and put every patched attribute back, newest first."""
        if self.hook is not None:
            self.hook.remove()
        for outcome in reversed(list(self.outcomes.values())):
            if outcome.patch is not None:
                outcome.patch.undo()
                outcome.patch = None
                outcome.state = "untouched"


def _logging_ready() -> bool:
    """Whether an INFO record of ``logger`` reaches a handler now."""
    return logger.isEnabledFor(logging.INFO) and logger.hasHandlers()


def warn(what: str, error: BaseException) -> None:
    """One WARNING for a failed step; never raises."""
    with contextlib.suppress(Exception):  # nothing left to tell the user with
        logger.warning(
            "%s %s: %s failed (%s); vLLM left unchanged",
            report.PLUGIN,
            plugin_version(),
            what,
            describe_error(error),
        )


def plugin_version() -> str:
    return __version__


def vllm_module_file(name: str) -> str | None:
    """The source file of vLLM module ``name``, found without importing it
    (importing would pull in vLLM's fused-MoE package); None if vLLM (already
    imported) does not ship it."""
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
    """The source text of vLLM module ``name``, read without importing it;
    None if vLLM does not ship it. Raises what reading the file raises."""
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
    return any(
        re.search(rf"^[ \t]*(?:class|def)[ \t]+{re.escape(name)}\b", text, re.M)
        for name in names
    )


def imports_flashinfer(name: str) -> bool:
    """Whether vLLM's module ``name`` imports FlashInfer when it is imported
    (``experts/trtllm_nvfp4_moe.py`` of vLLM 0.17-0.19 does, at its top).
    The plugin never imports such a module itself."""
    text = vllm_source(name) or ""
    return any(
        line.startswith(("import flashinfer", "from flashinfer"))
        for line in text.splitlines()
    )


_current: Activation | None = None


def current() -> Activation | None:
    return _current


def activate(
    environ: Mapping[str, str] | None = None,
    *,
    version_of: facts_.VersionOf = facts_.installed_version,
    nvml: Any = None,
    register_env: Callable[[], bool] = settings.register_with_vllm,
) -> Activation:
    """Decide and act for this process; idempotent (a second call returns the
    first activation). Raises ``StepFailed``; ``register()`` turns that into a
    WARNING."""
    global _current
    if _current is not None:
        return _current
    with step("reading settings"):
        config = settings.read(environ)
    for problem in config.problems:
        logger.warning("%s: %s", report.PLUGIN, problem)
    # Registered even when disabled, so that vLLM copies the switch to Ray
    # workers. Best effort: vLLM's table is internal; without it vLLM only warns
    # about unknown variables, so the plugin reports the failure and goes on.
    try:
        register_env()
    except Exception as exc:
        logger.warning(
            "%s: registering the plugin's variables with vLLM failed (%s); continuing",
            report.PLUGIN,
            describe_error(exc),
        )
    found = facts_.Facts({}, ())
    if not config.disabled:  # disabled: the plugin reads and changes nothing
        with step("reading GPUs"):
            gpus = facts_.read_gpus(environ, config.capabilities, nvml=nvml)
        if gpus.failed:
            logger.warning("%s: %s", report.PLUGIN, gpus.error)
        versions: dict[str, str | None] = {}
        if policy.runs_fused_kernels(gpus.gpus):  # otherwise versions decide nothing
            with step("reading package versions"):
                versions = facts_.read_versions(facts_.DECIDING, version_of)
        found = facts_.Facts(versions, gpus.gpus, gpus.error, gpus.failed)
    with step("deciding"):
        decision = policy.decide(found, config)
    activation = Activation(plugin_version(), config, found, decision)
    try:
        if decision.acts:
            with step("installing the import hook"):
                _watch(activation)
        with step("logging the decision"):
            activation.report()
            if not activation.line_logged and activation.hook is None:
                # Deliver the line once a target module is imported, when
                # logging is up.
                _watch(activation, patch=False)
    except Exception:
        activation.undo()
        raise
    _current = activation
    return activation


def _watch(activation: Activation, *, patch: bool = True) -> None:
    from . import targets
    from .hook import ImportHook

    modules = targets.target_modules()
    if patch:
        activation.pending = {
            m for m in modules if vllm_defines(m, targets.defined_names(m))
        }
        on_import: Callable[[ModuleType], None] = activation.on_import
    else:

        def on_import(module: ModuleType) -> None:
            try:
                activation.report()
            except Exception as exc:
                warn("logging the decision", exc)

    def on_error(name: str, error: Exception) -> None:
        warn(f"watching the import of {name}", error)

    activation.hook = ImportHook(modules, on_import, on_error)
    activation.hook.install()
    if patch:
        for name in modules:
            module = sys.modules.get(name)
            if module is not None:
                activation.apply_module(module)


def deactivate() -> None:
    """Undo everything ``activate`` did in this process (tests rely on it)."""
    global _current
    if _current is not None:
        _current.undo()
        _current = None
