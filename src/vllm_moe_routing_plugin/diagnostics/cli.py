# SPDX-License-Identifier: Apache-2.0
"""The ``vllm-moe-routing`` command: ``status`` (the default), ``verify`` and
``bindings``.

Exit codes: ``status`` 0 when the plugin will load and act as reported, 1
when something stops it (its ``problems``); ``verify`` 0 pass, 1 mismatch,
2 nothing could run here; ``bindings`` 0 when every reference of vLLM's
fused-MoE code binds, 1 when one does not, 2 when vLLM or FlashInfer is not
installed; 2 for a usage error (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .. import envs, policy
from . import bindings, status, verify


def _capabilities(text: str) -> tuple[envs.Capability, ...]:
    try:
        return envs.parse_capabilities(text)
    except envs.InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _version(text: str) -> str:
    if policy.parse_version(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comparable version")
    return text


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="vllm-moe-routing",
        description="Align vLLM's TRT-LLM MoE routing support with FlashInfer.",
    )
    commands = top.add_subparsers(dest="command")
    status_command = commands.add_parser(
        "status", help="what the plugin sees, decides and changes here (default)"
    )
    for p in (top, status_command):
        p.add_argument("--json", action="store_true", help="one JSON object")
        p.add_argument(
            "--capability",
            type=_capabilities,
            metavar="10.0[,10.0...]",
            help="assume GPUs of these compute capabilities",
        )
        p.add_argument(
            "--flashinfer",
            type=_version,
            metavar="VERSION",
            help="assume this flashinfer-python (and -cubin) version",
        )
        p.add_argument(
            "--no-targets", action="store_true", help="do not import vLLM's targets"
        )
    check = commands.add_parser(
        "verify", help="check FlashInfer's in-kernel routing on this machine's GPU"
    )
    check.add_argument("--json", action="store_true", help="one JSON object")
    check.add_argument(
        "--flashinfer-include",
        metavar="PATH",
        help="a FlashInfer source, wheel or include tree instead of the installed one",
    )
    check.add_argument(
        "--flashinfer-version", metavar="VERSION", help="the version of that tree"
    )
    check.add_argument(
        "--quick", action="store_true", help=f"token counts {verify.QUICK_TOKENS} only"
    )
    binding = commands.add_parser(
        "bindings",
        help="check that vLLM's calls into FlashInfer bind to the installed FlashInfer",
    )
    binding.add_argument("--json", action="store_true", help="one JSON object")
    return top


@contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what vLLM prints while its modules load (its log handler writes to
    stdout) to stderr, so stdout carries the report alone (``--json``)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "verify":
        result = verify.verify(args, os.environ)
        print(json.dumps(result, indent=2) if args.json else verify.render(result))
        return verify.verify_exit(result)
    if args.command == "bindings":
        with _stdout_to_stderr():
            checked = bindings.run()
        print(
            json.dumps(checked.to_json(), indent=2)
            if args.json
            else bindings.render(checked)
        )
        return bindings.exit_status(checked)
    with _stdout_to_stderr():
        report = status.collect(args, os.environ)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(status.render(report))
    return status.exit_status(report)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
