# SPDX-License-Identifier: Apache-2.0
"""The plugin's environment variables: one table, parsing, registration with vLLM
(the shape of vLLM's own ``vllm/envs.py``).

Values are read from ``os.environ`` (or a mapping handed in) when the plugin
runs, not through ``vllm.envs``: vLLM can freeze its own variables after start-up
(``enable_envs_cache``), and the plugin must also work where vLLM is absent
(the ``status`` command). An invalid value never raises: it is reported and the
default is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

DISABLE_VAR = "VLLM_MOE_ROUTING_PLUGIN_DISABLE"
RENORMALIZE_VAR = "VLLM_MOE_ROUTING_RENORMALIZE"
DEVICE_CAPABILITY_VAR = "VLLM_MOE_ROUTING_DEVICE_CAPABILITY"
KNOWN_BUGS_VAR = "VLLM_MOE_ROUTING_KNOWN_BUGS"

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


class InvalidValue(ValueError):
    """A variable holds a value outside its documented spellings."""


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidValue(f"expected one of {'/'.join(_TRUE + _FALSE)}")


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
        capabilities.append((int(major), int(minor)))
    return tuple(capabilities)


def parse_bug_actions(raw: str) -> tuple[tuple[str, BugAction], ...]:
    """Parse ``"flashinfer#3946=guard, flashinfer#4237=ignore"`` into
    ``(("flashinfer#3946", "guard"), ("flashinfer#4237", "ignore"))``.

    Only the spelling is checked here; whether an id is in the catalogue is the
    decision's business (``policy``), which reports ids it does not know.
    """
    pairs: dict[str, BugAction] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        bug_id, equals, action = (part.strip().lower() for part in item.partition("="))
        project, hash_sign, number = bug_id.partition("#")
        if not (equals and hash_sign and project.isalpha() and number.isdigit()):
            raise InvalidValue(
                "expected a comma-separated list of <project>#<number>=<action>, "
                "e.g. flashinfer#3946=guard"
            )
        if not number.isascii():
            raise InvalidValue("issue numbers are written with ASCII digits")
        for known in BUG_ACTIONS:
            if action == known:
                pairs[bug_id] = known
                break
        else:
            raise InvalidValue(f"{bug_id}: expected guard, fix, warn or ignore")
    return tuple(pairs.items())


class Variable:
    """One environment variable of the plugin, as documented in the README."""

    __slots__ = ("default", "meaning", "name", "parse", "values")

    def __init__(
        self,
        name: str,
        default: Any,
        parse: Callable[[str], Any],
        values: str,
        meaning: str,
    ) -> None:
        self.name = name
        self.default = default
        self.parse = parse
        self.values = values
        self.meaning = meaning


VARIABLES: tuple[Variable, ...] = (
    Variable(
        DISABLE_VAR,
        False,
        _parse_bool,
        "1/true/yes/on, 0/false/no/off",
        "1: the plugin changes nothing and only logs that it is disabled",
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
    ),
    Variable(
        KNOWN_BUGS_VAR,
        (),
        parse_bug_actions,
        "flashinfer#3946=guard,flashinfer#4237=ignore, ... (guard, fix, warn, ignore)",
        "change one known bug's action (`vllm-moe-routing status` lists them)",
    ),
)


class Reading:
    """What one variable holds: raw text, the value used, and any problem."""

    __slots__ = ("name", "problem", "raw", "value")

    def __init__(
        self, name: str, raw: str | None, value: Any, problem: str | None = None
    ) -> None:
        self.name = name
        self.raw = raw
        self.value = value
        self.problem = problem

    @property
    def valid(self) -> bool:
        return self.problem is None


class Settings:
    """The plugin's settings for this process."""

    __slots__ = ("bug_actions", "capabilities", "disabled", "readings", "renormalize")

    def __init__(
        self,
        disabled: bool = False,
        renormalize: Renormalize = "auto",
        capabilities: tuple[Capability, ...] | None = None,
        readings: tuple[Reading, ...] = (),
        bug_actions: tuple[tuple[str, BugAction], ...] = (),
    ) -> None:
        self.disabled = disabled
        self.renormalize = renormalize
        self.capabilities = capabilities
        self.readings = readings
        self.bug_actions = bug_actions  # (entry id, action) the user asked for

    @property
    def problems(self) -> tuple[str, ...]:
        """One message per invalid variable, naming the variable and the value."""
        return tuple(
            f"{r.name}={r.raw!r} is not valid ({r.problem}); using the default "
            f"{_show_default(r.value)}"
            for r in self.readings
            if not r.valid
        )


def _show_default(value: Any) -> str:
    if value is None:
        return "(NVML)"
    if isinstance(value, bool):
        return "0" if not value else "1"
    if value == ():
        return "(each entry's own action)"
    return str(value)


def read(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the plugin's variables from ``environ`` (default ``os.environ``).

    Unset or empty variables take their defaults; invalid ones take their
    defaults and are listed in ``Settings.problems``.
    """
    env = os.environ if environ is None else environ
    readings: list[Reading] = []
    for variable in VARIABLES:
        raw = env.get(variable.name)
        if raw is None or not raw.strip():
            readings.append(Reading(variable.name, raw, variable.default))
            continue
        try:
            value = variable.parse(raw)
        except InvalidValue as exc:
            readings.append(Reading(variable.name, raw, variable.default, str(exc)))
        else:
            readings.append(Reading(variable.name, raw, value))
    by_name = {r.name: r.value for r in readings}
    return Settings(
        disabled=by_name[DISABLE_VAR],
        renormalize=by_name[RENORMALIZE_VAR],
        capabilities=by_name[DEVICE_CAPABILITY_VAR],
        readings=tuple(readings),
        bug_actions=by_name[KNOWN_BUGS_VAR],
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
