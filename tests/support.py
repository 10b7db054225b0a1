# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the test modules (conftest.py holds only pytest's hooks
and fixtures): what is installed, injected versions, a log handler."""

from __future__ import annotations

import importlib.metadata
import logging


def installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


VLLM = installed("vllm")
FLASHINFER = installed("flashinfer-python")


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


def versions(**overrides: str | None):
    """A ``version_of`` that answers the installed versions, except for the
    distributions given (``flashinfer_python="0.6.6"``)."""
    table = {k.replace("_", "-"): v for k, v in overrides.items()}

    def version_of(distribution: str) -> str | None:
        if distribution in table:
            return table[distribution]
        return installed(distribution)

    return version_of
