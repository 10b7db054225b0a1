# SPDX-License-Identifier: Apache-2.0
"""One process's activation: facts -> decision -> patch -> report.

vLLM loads general plugins in every process it starts (API server, engine
core, workers, Ray workers, the model-inspection subprocess) and does not
catch what a plugin function raises (``vllm/plugins/__init__.py``), so every
step here is guarded: a failure becomes one WARNING naming the step, and vLLM
is left as it was.

It is also cheap (budgets in docs/performance.md): where the plugin does not
act (``disabled``, ``not-applicable``: ``decision.decide_early``) neither the
catalogue nor the targets are loaded; the modules that patch (``targets``,
``import_hook``; ``checks``, ``patches``, ``patching`` once a target module
is imported) are loaded only when the decision may change vLLM, and the
records are slotted classes, which Python defines about ten times faster
than NamedTuples.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import envs, facts, log_line
from .about import LOGGER, PLUGIN, __version__
from .decision import Decision, decide_early, read_facts
from .errors import describe_error

if TYPE_CHECKING:
    from .import_hook import ImportHook
    from .layers import Build
    from .patching import Outcome
    from .targets import LayerClass, Target

logger = logging.getLogger(LOGGER)


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
    except StepFailed:
        raise
    except Exception as exc:
        raise StepFailed(name, exc) from exc


class Activation:
    """What the plugin decided and did in this process."""

    def __init__(
        self,
        version: str,
        settings: envs.Settings,
        found: facts.Facts,
        decision: Decision,
    ) -> None:
        self.version = version
        self.settings = settings
        self.facts = found
        self.decision = decision
        self.outcomes: dict[Target | LayerClass, Outcome] = {}
        self.pending: set[str] = set()
        self.hook: ImportHook | None = None
        self.line_logged = False
        self.layer_kinds: set[tuple[Any, ...]] = set()  # kinds of MoE layer reported
        self.warned: set[str] = set()  # known bugs (and failures) warned about

    def on_import(self, module: ModuleType) -> None:
        """Apply the decision to the targets of a module vLLM just imported.
        Called inside vLLM's import: never raises."""
        try:
            outcomes = self.apply_module(module)
            self.report(outcomes)
        except Exception as exc:
            self.undo()
            warn(f"patching {module.__name__} on import", exc)

    def apply_module(self, module: ModuleType) -> list[Outcome]:
        from . import patching, targets

        self.pending.discard(module.__name__)
        found = []
        for target in targets.TARGETS:
            if target.module == module.__name__:
                outcome = patching.apply(target, module, self.decision)
                self.outcomes[target] = outcome
                found.append(outcome)
        if watches_layers(self.decision):
            for layer_class in targets.LAYER_CLASSES:
                if layer_class.module == module.__name__:
                    outcome = patching.watch_layers(
                        layer_class, module, self.on_layer_built
                    )
                    self.outcomes[layer_class] = outcome
                    found.append(outcome)
        for outcome in found:
            if outcome.state in ("unrecognised", "failed"):
                logger.warning("%s: %s", PLUGIN, log_line.describe(outcome))
        return found

    def line(self) -> str:
        return log_line.decision_line(
            self.version, self.decision, self.outcomes.values(), self.pending
        )

    def report(self, new: list[Outcome] | None = None) -> None:
        """Log the decision line once logging is up; after that, a short line
        for targets patched on import."""
        if not _logging_ready():
            return  # vLLM >= 0.31 configures logging after loading plugins
        if not self.line_logged:
            self.line_logged = True
            logger.info("%s", self.line())
        elif new and log_line.named(new):
            logger.info("%s", log_line.import_line(new))

    def on_layer_built(self, build: Build) -> None:
        """Report a MoE layer vLLM just built: one INFO line for the first
        layer of its kind, one WARNING for each warned known bug the first
        time it hits a layer; a WARNING where vLLM found no kernel for a
        layer whose fused kernel the plugin refused, and raised. Called inside
        vLLM's layer constructor: never raises."""
        try:
            if not build.verdicts:
                return  # no layer check was asked about it
            from . import layers  # loaded with the patches that built ``build``

            if build.error is not None:
                if log_line.chosen_kernel(build.layer) is not None:
                    return  # vLLM failed after choosing a kernel: not the refusal
                report = log_line.LayerReport(
                    build.verdicts, None, layers.name(build.layer)
                )
                if report.guarded or report.refused_renormalize:
                    logger.warning("%s", report.unbuilt_line(build.error))
                return
            key = log_line.kind(build.verdicts)
            if key in self.layer_kinds:
                return
            self.layer_kinds.add(key)
            chosen = log_line.chosen_kernel(build.layer)
            name = layers.name(build.layer)
            report = log_line.LayerReport(build.verdicts, chosen, name)
            logger.info("%s", report.line())
            for bug, verdict, target in report.warned:
                if bug.id not in self.warned:
                    self.warned.add(bug.id)
                    logger.warning(
                        "%s",
                        log_line.layer_warning(
                            bug, verdict, target, name, self.settings.bug_actions
                        ),
                    )
        except Exception as exc:
            if "reporting" not in self.warned:  # once: vLLM builds many layers
                self.warned.add("reporting")
                with contextlib.suppress(Exception):
                    logger.warning(
                        "%s: reporting a MoE layer failed (%s); vLLM's choice of "
                        "kernel stands as the plugin's checks made it",
                        PLUGIN,
                        describe_error(exc),
                    )

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
            PLUGIN,
            __version__,
            what,
            describe_error(error),
        )


_current: Activation | None = None


def current() -> Activation | None:
    return _current


def activate(
    environ: Mapping[str, str] | None = None,
    *,
    version_of: facts.VersionOf = facts.installed_version,
    nvml: Any = None,
    register_env: Callable[[], bool] = envs.register_with_vllm,
) -> Activation:
    """Decide and act for this process; idempotent (a second call returns the
    first activation). Raises ``StepFailed``; ``register()`` turns that into a
    WARNING."""
    global _current
    if _current is not None:
        return _current
    with step("reading settings"):
        settings = envs.read(environ)
    for problem in settings.problems:
        logger.warning("%s: %s", PLUGIN, problem)
    # Registered even when disabled, so that vLLM copies the switch to Ray
    # workers. Best effort: vLLM's table is internal; without it vLLM only warns
    # about unknown variables, so the plugin reports the failure and goes on.
    try:
        register_env()
    except Exception as exc:
        logger.warning(
            "%s: registering the plugin's variables with vLLM failed (%s); continuing",
            PLUGIN,
            describe_error(exc),
        )

    def read_gpus() -> facts.GpuReading:
        with step("reading GPUs"):
            return facts.read_gpus(environ, settings.capabilities, nvml=nvml)

    def read_versions() -> dict[str, str | None]:
        with step("reading package versions"):
            return facts.read_versions(facts.DECIDING, version_of)

    with step("deciding"):
        found = read_facts(settings, read_gpus, read_versions)
        decision = decide_early(found, settings)
        if decision is None:  # the plugin may act: the catalogue decides
            from . import policy

            decision = policy.decide(found, settings)
    if found.gpu_query_failed:
        logger.warning("%s: %s", PLUGIN, found.gpu_error)
    # What the plugin cannot honour (a KNOWN_BUGS item it cannot apply, a
    # FlashInfer companion-wheel mismatch) is a WARNING: an id with a typo
    # must not pass as protection.
    for note in decision.notes:
        logger.warning("%s: %s", PLUGIN, note)
    for bug in decision.overridden:
        logger.warning("%s", log_line.overridden_warning(bug, decision))
    activation = Activation(__version__, settings, found, decision)
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
    from .import_hook import ImportHook
    from .vllm_source import vllm_defines

    modules = targets.target_modules()
    if patch and watches_layers(activation.decision):
        modules += tuple(c.module for c in targets.LAYER_CLASSES)
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


def watches_layers(decision: Decision) -> bool:
    """Whether the layer checks need the layers being built: the decision
    acts and some known bug is in range (or Renormalize is refused)."""
    return decision.acts and (bool(decision.acting) or decision.refuses_renormalize)


def deactivate() -> None:
    """Undo everything ``activate`` did in this process (tests rely on it)."""
    global _current
    if _current is not None:
        _current.undo()
        _current = None
