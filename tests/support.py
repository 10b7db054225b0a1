# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the test modules (conftest.py holds only pytest's hooks
and fixtures): what is installed, injected versions, a log handler."""

from __future__ import annotations

import enum
import importlib.metadata
import logging
import os
from types import ModuleType
from typing import Any

from vllm_moe_routing_plugin import __version__, bugs, targets


def installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


VLLM = installed("vllm")
#: How the plugin's lines start: the tests follow the version, never restate it.
LINE_HEAD = f"moe_routing {__version__}"
FLASHINFER = installed("flashinfer-python")
#: Part of the WARNING ``VLLM_MOE_ROUTING_RENORMALIZE=enable`` gives over an
#: in-range known bug (log_line.overridden_warning).
FORCED_OVER_KNOWN_BUG = "VLLM_MOE_ROUTING_RENORMALIZE=enable lets the fused kernels"


class Records(logging.Handler):
    """vLLM's ``vllm`` logger does not propagate, which defeats caplog
    (vLLM's own tests attach a handler the same way)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int = logging.INFO) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]

    def failures(self) -> list[str]:
        """The WARNINGs, less the one a forced enable gives where the
        installed FlashInfer has flashinfer#2822 (< 0.6.7): tests that force
        ``enable`` to make the plugin act see it on such installs, and its
        own tests (test_policy) assert it."""
        return [
            line
            for line in self.lines(logging.WARNING)
            if FORCED_OVER_KNOWN_BUG not in line
        ]


#: Set by noxfile.py's ``newest_release`` session: where a vLLM (or FlashInfer)
#: release has no expectations written, the tests hold it to the newest proven
#: release's instead of skipping, so that what moved fails.
UNPROVEN = os.environ.get("MOE_ROUTING_TESTS_UNPROVEN") == "1"
NEWEST_PROVEN_VLLM = bugs.release_text(targets.NEWEST_PROVEN_VLLM)
NEWEST_PROVEN_FLASHINFER = bugs.release_text(bugs.NEWEST_PROVEN_FLASHINFER)


def expected(table: dict[Any, Any], here: Any, newest: Any) -> Any:
    """``table``'s expectations for ``here``; for a release none are written
    for, the newest proven release's under ``UNPROVEN``, else None."""
    if here in table:
        return table[here]
    return table[newest] if UNPROVEN else None


#: What tests/test_faults.py injected and what escaped, printed at the end of
#: the run (docs/reliability.md quotes it).
FAULTS = {"injected": 0, "escaped": 0, "partial": 0}

#: The edges answered instead of being real in this run (vllm_support adds to
#: it), printed at the end of the run.
SIMULATED: list[str] = []


def versions(**overrides: str | None):
    """A ``version_of`` that answers the installed versions, except for the
    distributions given (``flashinfer_python="0.6.6"``)."""
    table = {k.replace("_", "-"): v for k, v in overrides.items()}

    def version_of(distribution: str) -> str | None:
        if distribution in table:
            return table[distribution]
        return installed(distribution)

    return version_of


# A target of a future vLLM, on stand-in modules (tests that need a shape no
# released vLLM has).


class Methods(enum.IntEnum):
    """A ``RoutingMethodType`` with both Renormalize members."""

    Default = 0
    Renormalize = 1
    DeepSeekV3 = 2
    RenormalizeNaive = 4


STAND_IN_TARGET = targets.Target(
    "future.module",
    "Experts",
    "_supports_routing_method",
    "method",
    ((None, None),),
    "future",
)


def stand_in_module(cls: type, methods: Any = Methods) -> ModuleType:
    """``future.module`` holding ``cls`` as the stand-in target's class."""
    module = ModuleType("future.module")
    module.Experts = cls
    module.RoutingMethodType = methods
    return module


def supported(cls, moe_config, weight_key, activation_key, activation_format):
    """An ``is_supported_config`` that accepts every configuration."""
    return True, None
