# SPDX-License-Identifier: Apache-2.0
"""The plugin's environment variables: one table, parsing, registration with vLLM
(the shape of vLLM's own ``vllm/envs.py``).

Values are read from ``os.environ`` (or a mapping handed in) when the plugin
runs, not through ``vllm.envs``: vLLM can freeze its own variables after start-up
(``enable_envs_cache``), and the plugin must also work where vLLM is absent
(the ``status`` command). An invalid value never raises: it is reported and the
default is used, with two exceptions where the default would not be what the
user meant: the off switch set to a word it cannot read switches the plugin
off, and a list keeps its valid items beside an invalid one.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

DISABLE_VAR = "VLLM_MOE_ROUTING_PLUGIN_DISABLE"
RENORMALIZE_VAR = "VLLM_MOE_ROUTING_RENORMALIZE"
DEVICE_CAPABILITY_VAR = "VLLM_MOE_ROUTING_DEVICE_CAPABILITY"
KNOWN_BUGS_VAR = "VLLM_MOE_ROUTING_KNOWN_BUGS"
#: The prefix of the plugin's variables: a variable with it that nobody
#: defines is most likely one of them misspelt (``UndefinedVariable``).
PREFIX = "VLLM_MOE_ROUTING_"
#: ``vllm-moe-routing verify``'s build settings (docs/verify.md), read by
#: ``diagnostics.routing_kernels.build`` only.
BUILD_CACHE_VAR = "VLLM_MOE_ROUTING_CACHE"
BUILD_JOBS_VAR = "VLLM_MOE_ROUTING_BUILD_JOBS"
SPLIT_COMPILE_VAR = "VLLM_MOE_ROUTING_SPLIT_COMPILE"
#: vLLM's own variables with the prefix (``vllm/envs.py``: the routing
#: simulator, a testing aid, 0.11 on); others vLLM defines are found in
#: ``vllm.envs.environment_variables`` where vLLM is loaded.
VLLM_OWN_VARS = ("VLLM_MOE_ROUTING_SIMULATION_STRATEGY",)

Capability = tuple[int, int]
if TYPE_CHECKING:  # annotations only: a Literal costs import time in every process
    from typing import Literal

    Renormalize = Literal["auto", "enable", "disable"]
    #: What a user asks for one known-bug entry: refuse the layers it hits,
    #: apply the plugin's backport of the upstream fix, only warn, or neither.
    BugAction = Literal["guard", "fix", "warn", "ignore"]
BUG_ACTIONS: tuple[BugAction, ...] = ("guard", "fix", "warn", "ignore")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
#: The two sets of words, as every boolean's error message names them.
BOOL_WORDS = f"{'/'.join(_TRUE)} mean on, {'/'.join(_FALSE)} mean off, in any case"

_UNSET: Any = object()


class InvalidValue(ValueError):
    """A variable holds a value outside its documented spellings.

    ``use`` is what to take instead of the variable's default, where the
    default is not what the user meant (``taken`` says so in words).
    """

    def __init__(self, problem: str, *, use: Any = _UNSET, taken: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.use = use
        self.taken = taken


class InvalidItems(InvalidValue):
    """Some items of a list are invalid or repeated: ``use`` holds the valid
    ones (one typo must not throw away the settings beside it), ``notes``
    one message per invalid or repeated item."""

    def __init__(self, use: Any, notes: tuple[str, ...]) -> None:
        super().__init__("; ".join(notes), use=use)
        self.notes = notes


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidValue(BOOL_WORDS)


def _parse_disable(raw: str) -> bool:
    """The off switch. A value it cannot read counts as on: whoever sets an
    off switch means to switch something off, and a plugin that acts while
    its user believes it off is the worse surprise."""
    try:
        return _parse_bool(raw)
    except InvalidValue as exc:
        raise InvalidValue(
            exc.problem,
            use=True,
            taken="taken as on: the plugin is disabled, since an off switch set "
            "to a value it cannot read is taken as set",
        ) from None


def _parse_renormalize(raw: str) -> Renormalize:
    value = raw.strip().lower()
    if value == "auto":
        return "auto"
    if value == "enable":
        return "enable"
    if value == "disable":
        return "disable"
    raise InvalidValue("expected auto, enable or disable")


def parse_capabilities(raw: str) -> tuple[Capability, ...]:
    """Parse ``"10.0"`` or ``"10.0,10.3"`` into ``((10, 0), (10, 3))``.

    Each item is ``major.minor`` with decimal digits only, as CUDA and
    ``torch.cuda.get_device_capability()`` write them.
    """
    items = [item.strip() for item in raw.split(",")]
    capabilities: list[Capability] = []
    for item in items:
        major, dot, minor = item.partition(".")
        if not (dot and major.isdigit() and minor.isdigit()):
            raise InvalidValue(
                "expected a comma-separated list of major.minor capabilities, "
                "e.g. 10.0 or 10.0,10.0"
            )
        if not (major.isascii() and minor.isascii()):
            raise InvalidValue("capabilities are written with ASCII digits")
        if int(major) == 0 or len(minor) != 1:
            # CUDA's minor is one digit (8.6, 9.0, 10.3, 12.1): 10.30 is no
            # GPU, and sm_110 would then name both 1.10 and 11.0.
            raise InvalidValue(
                f"{item} is not a CUDA compute capability (a major from 1 and a "
                "one-digit minor, e.g. 9.0, 10.0 or 10.3)"
            )
        capabilities.append((int(major), int(minor)))
    return tuple(capabilities)


def _bug_item_problem(bug_id: str, equals: str, action: str) -> str | None:
    """Why one ``<id>=<action>`` item cannot be read, or None."""
    project, hash_sign, number = bug_id.partition("#")
    if not (equals and hash_sign and project.isalpha() and number.isdigit()):
        return (
            "expected <project>#<number>=guard|fix|warn|ignore, "
            "e.g. flashinfer#3946=guard"
        )
    if not number.isascii():
        return "issue numbers are written with ASCII digits"
    if action not in BUG_ACTIONS:
        return "the action must be guard, fix, warn or ignore"
    return None


def parse_bug_actions(raw: str) -> tuple[tuple[str, BugAction], ...]:
    """Parse ``"flashinfer#3946=guard, flashinfer#4237=ignore"`` into
    ``(("flashinfer#3946", "guard"), ("flashinfer#4237", "ignore"))``.

    Only the spelling is checked here; whether an id is in the catalogue is the
    decision's business (``policy``), which reports ids it does not know. An
    invalid item is skipped and the valid ones kept (``InvalidItems``): a typo
    in one entry must not switch the others back. An id given twice takes its
    last action, as a later setting overrides an earlier one on a command line,
    and is reported: the user may not know the list repeats it.
    """
    pairs: dict[str, BugAction] = {}
    given: dict[str, list[str]] = {}
    invalid: list[str] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        bug_id, equals, action = (part.strip().lower() for part in item.partition("="))
        problem = _bug_item_problem(bug_id, equals, action)
        if problem is not None:
            invalid.append(f"item {item.strip()!r} is not valid ({problem})")
            continue
        for known in BUG_ACTIONS:
            if action == known:
                pairs[bug_id] = known
                given.setdefault(bug_id, []).append(known)
    kept = tuple(pairs.items())
    left = (
        "the other items apply"
        if kept
        else "no valid item is left, so each entry keeps its own action"
    )
    notes = [f"{note}; it is skipped, {left}" for note in invalid]
    notes += [
        f"{bug_id} is given {_times(len(actions))} ({', then '.join(actions)}); "
        f"the last, {bug_id}={actions[-1]}, applies"
        for bug_id, actions in given.items()
        if len(actions) > 1
    ]
    if notes:
        raise InvalidItems(kept, tuple(notes))
    return kept


def _show_bool(value: bool) -> str:
    return "1" if value else "0"


def _show_text(value: str) -> str:
    return value


def _show_capabilities(value: tuple[Capability, ...] | None) -> str:
    if value is None:
        return "(NVML)"
    return ",".join(f"{major}.{minor}" for major, minor in value)


def _show_bug_actions(value: tuple[tuple[str, BugAction], ...]) -> str:
    if not value:
        return "(each entry's own action)"
    return ",".join(f"{bug_id}={action}" for bug_id, action in value)


def _times(count: int) -> str:
    return "twice" if count == 2 else f"{count} times"


class Variable:
    """One environment variable of the plugin, as documented in the README.
    ``show`` writes a value back as the user would set it (``10.0,10.3``)."""

    __slots__ = ("default", "meaning", "name", "parse", "show", "values")

    def __init__(
        self,
        name: str,
        default: Any,
        parse: Callable[[str], Any],
        values: str,
        meaning: str,
        show: Callable[[Any], str] = _show_text,
    ) -> None:
        self.name = name
        self.default = default
        self.parse = parse
        self.values = values
        self.meaning = meaning
        self.show = show


VARIABLES: tuple[Variable, ...] = (
    Variable(
        DISABLE_VAR,
        False,
        _parse_disable,
        "1/true/yes/on, 0/false/no/off",
        "1: the plugin changes nothing and only logs that it is disabled; "
        "a value it cannot read counts as 1",
        _show_bool,
    ),
    Variable(
        RENORMALIZE_VAR,
        "auto",
        _parse_renormalize,
        "auto, enable, disable",
        "override the FlashInfer-version decision (still only on SM100/SM103)",
    ),
    Variable(
        DEVICE_CAPABILITY_VAR,
        None,
        parse_capabilities,
        "10.0, 10.3, ... (comma list for several GPUs)",
        "GPU compute capabilities to assume instead of asking NVML",
        _show_capabilities,
    ),
    Variable(
        KNOWN_BUGS_VAR,
        (),
        parse_bug_actions,
        "flashinfer#3946=guard,flashinfer#4237=ignore, ... (guard, fix, warn, ignore)",
        "change one known bug's action (`vllm-moe-routing status` lists them); "
        "an invalid item is skipped, the others apply",
        _show_bug_actions,
    ),
)


def show(name: str, value: Any) -> str:
    """``value`` of the variable ``name`` as the user would write it."""
    for variable in VARIABLES:
        if variable.name == name:
            return variable.show(value)
    return str(value)


class Reading:
    """What one variable holds: raw text, the value used, what is wrong with
    the text in short (``problem``) and the messages that report it."""

    __slots__ = ("messages", "name", "problem", "raw", "value")

    def __init__(
        self,
        name: str,
        raw: str | None,
        value: Any,
        problem: str | None = None,
        messages: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.raw = raw
        self.value = value
        self.problem = problem
        self.messages = messages

    @property
    def valid(self) -> bool:
        return self.problem is None


class Settings:
    """The plugin's settings for this process."""

    __slots__ = (
        "bug_actions", "capabilities", "disabled", "readings", "renormalize",
        "undefined",
    )  # fmt: skip

    def __init__(
        self,
        disabled: bool = False,
        renormalize: Renormalize = "auto",
        capabilities: tuple[Capability, ...] | None = None,
        readings: tuple[Reading, ...] = (),
        bug_actions: tuple[tuple[str, BugAction], ...] = (),
        undefined: tuple[UndefinedVariable, ...] = (),
    ) -> None:
        self.disabled = disabled
        self.renormalize = renormalize
        self.capabilities = capabilities
        self.readings = readings
        self.bug_actions = bug_actions  # (entry id, action) the user asked for
        self.undefined = undefined  # set, with the prefix, defined by no one

    @property
    def problems(self) -> tuple[str, ...]:
        """One message per invalid variable, or per invalid or repeated item
        of a list, naming the variable, the text and what is used instead;
        then one per variable with the plugin's prefix that nothing defines."""
        messages = tuple(message for r in self.readings for message in r.messages)
        return messages + tuple(u.message for u in self.undefined)


class UndefinedVariable:
    """A ``VLLM_MOE_ROUTING_*`` variable set in the environment that neither
    the plugin nor vLLM defines: a misspelt setting does nothing, and would
    otherwise do it silently (``..._PLUGIN_DISABL=1`` leaves the plugin on)."""

    __slots__ = ("meant", "name", "raw")

    def __init__(self, name: str, raw: str, meant: str | None) -> None:
        self.name = name
        self.raw = raw
        self.meant = meant  # the defined name it most likely stands for

    @property
    def message(self) -> str:
        guess = (
            f"did you mean {self.meant}?"
            if self.meant
            else (f"the plugin's settings are {', '.join(v.name for v in VARIABLES)}")
        )
        return f"{self.name} is not a setting of the plugin or vLLM ({guess}); ignored"


def defined_names() -> tuple[str, ...]:
    """Every variable with the plugin's prefix that has a meaning: the
    plugin's settings, verify's build settings and vLLM's own."""
    names = [v.name for v in VARIABLES]
    names += [BUILD_CACHE_VAR, BUILD_JOBS_VAR, SPLIT_COMPILE_VAR, *VLLM_OWN_VARS]
    vllm_envs = sys.modules.get("vllm.envs")  # never imported here: read if loaded
    table = getattr(vllm_envs, "environment_variables", None)
    if isinstance(table, dict):
        names += [n for n in table if isinstance(n, str) and n.startswith(PREFIX)]
    return tuple(dict.fromkeys(names))


def undefined_variables(env: Mapping[str, str]) -> tuple[UndefinedVariable, ...]:
    """The variables of ``env`` with the plugin's prefix that nothing defines,
    each with the defined name closest to it (``difflib``, imported only when
    there is one: every vLLM process reads this)."""
    strays = [n for n in env if n.startswith(PREFIX)]
    if not strays:
        return ()
    names = defined_names()
    strays = [n for n in strays if n not in names]
    if not strays:
        return ()
    import difflib

    # Compared without the prefix all share, which would make any name close.
    suffixes = {name[len(PREFIX) :]: name for name in names}
    found = []
    for name in sorted(strays):
        close = difflib.get_close_matches(name[len(PREFIX) :], suffixes, 1, 0.6)
        meant = suffixes[close[0]] if close else None
        found.append(UndefinedVariable(name, env[name], meant))
    return tuple(found)


def _reading(variable: Variable, raw: str) -> Reading:
    try:
        value = variable.parse(raw)
    except InvalidItems as exc:
        messages = tuple(f"{variable.name}: {note}" for note in exc.notes)
        return Reading(variable.name, raw, exc.use, exc.problem, messages)
    except InvalidValue as exc:
        value = variable.default if exc.use is _UNSET else exc.use
        taken = exc.taken or f"using the default {variable.show(value)}"
        message = f"{variable.name}={raw!r} is not valid ({exc.problem}); {taken}"
        return Reading(variable.name, raw, value, exc.problem, (message,))
    return Reading(variable.name, raw, value)


def read(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the plugin's variables from ``environ`` (default ``os.environ``).

    Unset or empty variables take their defaults; invalid ones take their
    defaults (or what their parser says the user meant) and are listed in
    ``Settings.problems``, as are variables with the plugin's prefix that
    nothing defines.
    """
    env = os.environ if environ is None else environ
    readings: list[Reading] = []
    for variable in VARIABLES:
        raw = env.get(variable.name)
        if raw is None or not raw.strip():
            readings.append(Reading(variable.name, raw, variable.default))
        else:
            readings.append(_reading(variable, raw))
    by_name = {r.name: r.value for r in readings}
    return Settings(
        disabled=by_name[DISABLE_VAR],
        renormalize=by_name[RENORMALIZE_VAR],
        capabilities=by_name[DEVICE_CAPABILITY_VAR],
        readings=tuple(readings),
        bug_actions=by_name[KNOWN_BUGS_VAR],
        undefined=undefined_variables(env),
    )


def register_with_vllm() -> bool:
    """Declare the plugin's variables in ``vllm.envs.environment_variables``.

    vLLM warns about unknown ``VLLM_*`` variables (``validate_environ``), and
    older ``vllm/ray/ray_env.py`` copies only registered variables to Ray
    workers. The dict is internal to vLLM, so this is best effort: returns
    False where it does not exist. Pattern from vllm-metal's ``_register``.
    """
    import vllm.envs as vllm_envs

    table = getattr(vllm_envs, "environment_variables", None)
    if not isinstance(table, dict):
        return False
    for variable in VARIABLES:
        table.setdefault(variable.name, _getter(variable.name))
    return True


def _getter(name: str) -> Callable[[], str | None]:
    return lambda: os.environ.get(name)
