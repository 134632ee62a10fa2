"""Bundle runs whose command line does what it says and whose failures end with their reason.

Two problems of ``python -m monai.bundle run ...`` and what this module does about them:

1. MONAI's command line drops an override whose value is ``None`` (python-fire turns ``--label_mapping None``
   into None, and ``monai.bundle.update_kwargs`` skips None values), so the config silently keeps its default.
   The package's functions read the strings ``"null"``/``"none"`` as None (:func:`samora_monai.utils.optional_value`),
   so ``--label_mapping null`` is the documented way to turn a value off (``--label_mapping '$None'`` works too).
   :func:`check_command_line` refuses a bare ``None`` override instead of ignoring it.
2. The reason of a failure sits 30-60 lines up a traceback under "Failed to instantiate component".
   :func:`install_excepthook` prints the usual traceback and then one line with the root cause.

A config wires both with ``initialize: [$samora_monai.apps.bundle_run.guard_run(), ...]``. The wrapper
``python -m samora_monai run <run_id> --config_file ... --key value`` takes the arguments of
``python -m monai.bundle run``, turns a bare ``None`` value into ``$None`` and ends a failure with its reason.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from types import TracebackType

import samora_monai

__all__ = [
    "check_command_line",
    "dropped_none_overrides",
    "failure_reason",
    "guard_run",
    "install_excepthook",
    "main",
    "root_cause",
]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(samora_monai.__file__))
_MONAI_BUNDLE_MAIN = os.path.join("monai", "bundle", "__main__.py")


def _overrides(argv: Sequence[str]) -> list[tuple[str, str, int]]:
    """``(key, value, index of the value)`` of every ``--key value`` / ``--key=value`` pair in ``argv``."""
    out = []
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            out.append((key, value, i))
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out.append((arg[2:], argv[i + 1], i + 1))
    return out


def dropped_none_overrides(argv: Sequence[str]) -> list[str]:
    """Keys given as ``--key None`` (or ``--key=None``): the overrides MONAI's bundle command line drops."""
    return [key for key, value, _ in _overrides(argv) if value.strip() == "None"]


def check_command_line(argv: Sequence[str] | None = None) -> None:
    """Refuse the ``--key None`` overrides that ``python -m monai.bundle`` would silently ignore.

    ``argv``: the arguments to check; default ``sys.argv`` when this process is ``python -m monai.bundle`` (other
    processes, e.g. MONAI Label or the :func:`main` wrapper, are not checked).
    """
    if argv is None:
        if not sys.argv or not os.path.normpath(sys.argv[0]).endswith(_MONAI_BUNDLE_MAIN):
            return
        argv = sys.argv[1:]
    keys = dropped_none_overrides(argv)
    if keys:
        given = " ".join(f"--{k} None" for k in keys)
        fixed = " ".join(f"--{k} null" for k in keys)
        raise ValueError(
            f"{given}: MONAI's bundle command line drops overrides whose value is None, so the config would keep its "
            f"value; write {fixed} (or '$None') to turn the value off"
        )


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes, outermost first, as Python's traceback shows them."""
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ if exc.__cause__ is not None else (None if exc.__suppress_context__ else exc.__context__)
    return chain


def _raised_by_package(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(_PACKAGE_DIR + os.sep)


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of the chain raised by ``samora_monai`` code (its messages name the file and the fix),
    else the innermost exception."""
    chain = _chain(exc)
    return next((e for e in reversed(chain) if _raised_by_package(e)), chain[-1])


def failure_reason(exc: BaseException) -> str:
    """One line: ``"<type>: <message>"`` of :func:`root_cause`, its whitespace collapsed."""
    cause = root_cause(exc)
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    sys.__excepthook__(exc_type, exc, tb)
    if not isinstance(exc, KeyboardInterrupt):
        print(f"samora_monai: run failed: {failure_reason(exc)}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """Make an uncaught exception print its traceback, then :func:`failure_reason` as the last line."""
    sys.excepthook = _excepthook


def guard_run() -> bool:
    """For a bundle's ``initialize``: :func:`check_command_line` and :func:`install_excepthook`; returns True."""
    install_excepthook()
    check_command_line()
    return True


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m samora_monai run <monai.bundle run arguments>``: ``monai.bundle.run`` with bare ``None`` values
    passed as ``$None`` (None in the config) and a failure's reason as the last line of the output."""
    import fire
    from monai.bundle import run

    argv = list(sys.argv[1:] if argv is None else argv)
    for key, value, i in _overrides(argv):
        if value.strip() == "None":
            argv[i] = f"--{key}=$None" if argv[i].startswith("--") else "$None"
    install_excepthook()
    fire.Fire(run, command=argv, name="samora_monai run")
