# SPDX-License-Identifier: Apache-2.0
"""The ``vllm-moe-routing`` command: ``status`` (the default), ``verify`` and
``bindings``.

Exit codes: ``status`` 0 when the plugin will load and act as reported, 1
when something stops it (its ``problems``); ``verify`` 0 pass, 1 mismatch,
2 nothing could run here; ``bindings`` 0 when every reference of vLLM's
fused-MoE code binds and every routing method a served model can use means
the same to FlashInfer, 1 when not, 2 when vLLM or FlashInfer is not
installed; 2 for a usage error (argparse); 141 when the reader of stdout
went away before the report was written (``| head``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .. import envs, policy
from ..about import __version__
from . import bindings, status, verify

#: The exit status of a command whose reader went away (``| head``): what a
#: shell reports for a process killed by SIGPIPE (128 + 13), as ``git log |
#: head -1`` gives, apart from every status the commands themselves use.
CLOSED_STDOUT = 141
STATUS_OPTIONS = ("--capability", "--flashinfer", "--no-targets")


def _capabilities(text: str) -> tuple[envs.Capability, ...]:
    try:
        return envs.parse_capabilities(text)
    except envs.InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _version(text: str) -> str:
    if policy.parse_version(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comparable version")
    return text.strip()  # as a version reads: " 0.6.7 " is 0.6.7


def _arch(text: str) -> str:
    """``sm_90a``, ``sm_100a``, ``sm_103a``: what nvcc's ``-arch`` takes and
    the build cache is named by (``sm_`` and the capability's digits, with
    ``a`` or ``f`` for the arch-specific instructions the kernels use)."""
    arch = text.strip()
    digits = arch.removeprefix("sm_").rstrip("af")
    if not (arch.startswith("sm_") and digits.isdigit() and len(digits) in (2, 3)):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a GPU arch nvcc takes, e.g. sm_90a or sm_100a"
        )
    return arch


def _json_option(p: argparse.ArgumentParser, **defaults: Any) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object", **defaults)


def _status_options(p: argparse.ArgumentParser, **defaults: Any) -> None:
    p.add_argument(
        "--capability",
        type=_capabilities,
        metavar="10.0[,10.0...]",
        help="status: assume GPUs of these compute capabilities",
        **defaults,
    )
    p.add_argument(
        "--flashinfer",
        type=_version,
        metavar="VERSION",
        help="status: assume this flashinfer-python (and -cubin) version",
        **defaults,
    )
    p.add_argument(
        "--no-targets",
        action="store_true",
        help="status: do not import vLLM's targets",
        **defaults,
    )


def parser() -> argparse.ArgumentParser:
    """The command line. ``status`` is the default command, so its options
    are accepted before a command as well as after ``status``, and ``--json``
    before or after any command. The top parser holds the defaults; the
    subcommands' copies default to ``argparse.SUPPRESS``, so an option given
    before the command is not overwritten by the subcommand's default."""
    top = argparse.ArgumentParser(
        prog="vllm-moe-routing",
        description="Align vLLM's TRT-LLM MoE routing support with FlashInfer.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _json_option(top)
    _status_options(top)
    later = {"default": argparse.SUPPRESS}
    commands = top.add_subparsers(dest="command")
    status_command = commands.add_parser(
        "status", help="what the plugin sees, decides and changes here (default)"
    )
    _json_option(status_command, **later)
    _status_options(status_command, **later)
    check = commands.add_parser(
        "verify", help="check FlashInfer's in-kernel routing on this machine's GPU"
    )
    _json_option(check, **later)
    check.add_argument(
        "--flashinfer-include",
        metavar="PATH",
        help="a FlashInfer source, wheel or include tree instead of the installed one",
    )
    check.add_argument(
        "--flashinfer-version",
        type=_version,
        metavar="VERSION",
        help="the version of that tree",
    )
    check.add_argument(
        "--quick", action="store_true", help=f"token counts {verify.QUICK_TOKENS} only"
    )
    check.add_argument(
        "--trtllm-headers",
        metavar="PATH",
        help="FlashInfer's trtllm-gen batched-GEMM headers (trtllmGen_bmm_export), "
        "where flashinfer-cubin is not installed",
    )
    check.add_argument(
        "--arch",
        type=_arch,
        metavar="SM",
        help="build the routing kernels for this GPU arch (sm_90a, sm_100a) instead of "
        "the local GPU's, e.g. on a build machine without one; they run where it is",
    )
    check.add_argument(
        "--no-topk-probe",
        action="store_true",
        help="skip the top-k probe (the routing-kernel check runs the whole kernels)",
    )
    check.add_argument(
        "--no-routing-kernels",
        action="store_true",
        help="skip the routing-kernel check (building it takes minutes per FlashInfer)",
    )
    binding = commands.add_parser(
        "bindings",
        help="check that vLLM's calls into FlashInfer bind to the installed FlashInfer",
    )
    _json_option(binding, **later)
    return top


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse, and refuse the status options with another command (exit 2):
    silently ignoring them would report something the user did not ask for."""
    top = parser()
    args, unknown = top.parse_known_args(argv)
    given = []
    if args.command in ("verify", "bindings"):
        given = [
            option
            for option in STATUS_OPTIONS
            if getattr(args, option[2:].replace("-", "_")) not in (None, False)
        ]
        # The same options after the command are unknown to its parser.
        given += [o for o in STATUS_OPTIONS if o in unknown and o not in given]
        if given:
            top.error(f"{', '.join(given)} applies to status only, not {args.command}")
    if unknown:
        top.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


@contextmanager
def _quiet(note: str | None = None) -> Iterator[None]:
    """Keep what vLLM, torch and FlashInfer print while their modules load
    out of the report: vLLM logs to stdout (``Failed to import from
    vllm._C`` on a host without a GPU, Triton notes), torch warns on stderr,
    and none of it is about the plugin. Both descriptors go to a temporary
    file for the step; what was written is replayed on stderr only when the
    step raises, so a failure still shows its cause. ``note`` goes to stderr
    first, where that is a terminal: the step can take half a minute, and a
    silent terminal looks hung (a pipe or log file gets no note)."""
    if note is not None and sys.stderr.isatty():
        print(f"vllm-moe-routing: {note} ...", file=sys.stderr, flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = (os.dup(1), os.dup(2))
    failed = False
    with tempfile.TemporaryFile() as captured:
        try:
            os.dup2(captured.fileno(), 1)
            os.dup2(captured.fileno(), 2)
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if failed:
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
                sys.stderr.flush()


def _has_vllm() -> bool:
    return importlib.util.find_spec("vllm") is not None


def _run(args: argparse.Namespace) -> int:
    if args.command == "verify":
        result = verify.verify(args, os.environ)
        print(json.dumps(result, indent=2) if args.json else verify.render(result))
        return verify.verify_exit(result)
    if args.command == "bindings":
        note = "reading vLLM's source and importing FlashInfer"
        with _quiet(note if _has_vllm() else None):
            checked = bindings.run()
        print(
            json.dumps(checked.to_json(), indent=2)
            if args.json
            else bindings.render(checked)
        )
        return bindings.exit_status(checked)
    note = "importing vLLM's fused-MoE modules to ask their routing checks"
    with _quiet(note if _has_vllm() and not args.no_targets else None):
        report = status.collect(args, os.environ)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(status.render(report))
    return status.exit_status(report)


def main(argv: Sequence[str] | None = None) -> int:
    """The command; returns its exit status. A reader that closes stdout
    early (``| head -c1``) ends it quietly with ``CLOSED_STDOUT``, as the
    Python documentation advises ("Note on SIGPIPE"): stdout is pointed at
    /dev/null so that the flush at exit does not fail a second time."""
    args = parse(argv)
    try:
        code = _run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return CLOSED_STDOUT
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
