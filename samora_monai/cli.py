"""Command line entry point: ``python -m samora_monai <command> ...`` (python-fire)."""

from __future__ import annotations

import fire

COMMANDS: dict[str, str] = {
    # command name -> "module:function"; resolved lazily so `--help` stays fast.
    "prepare_unlabeled": "samora_monai.data.unlabeled:prepare_unlabeled",
}


def _resolve(spec: str):
    module_name, func_name = spec.split(":")
    module = __import__(module_name, fromlist=[func_name])
    return getattr(module, func_name)


def main() -> None:
    fire.Fire({name: _resolve(spec) for name, spec in COMMANDS.items()})
