"""Command line entry point: ``python -m samora_monai <command> ...`` (python-fire).

``python -m samora_monai run <run_id> --config_file ...`` runs a bundle like ``python -m monai.bundle run`` and ends a
failure with its reason (:mod:`samora_monai.apps.bundle_run`)."""

from __future__ import annotations

import sys

import fire

COMMANDS: dict[str, str] = {
    # command name -> "module:function"; only the module of the command that runs is imported.
    "prepare_unlabeled": "samora_monai.data.unlabeled:prepare_unlabeled",
    "package_bundle": "samora_monai.apps.packaging:package_bundle",
    "monailabel_install": "samora_monai.apps.monailabel:monailabel_install",
    "monailabel_serve": "samora_monai.apps.monailabel:monailabel_serve",
    "make_demo_data": "samora_monai.apps.phantom:make_demo_data",
    "demo": "samora_monai.apps.demo:run_demo",
    "compare": "samora_monai.apps.compare:compare",
    "pretrain_standin": "samora_monai.apps.standin:pretrain_standin",
}


def _resolve(spec: str):
    module_name, func_name = spec.split(":")
    module = __import__(module_name, fromlist=[func_name])
    return getattr(module, func_name)


def main(argv: list[str] | None = None) -> None:
    """Import only the module of the command that runs; with no known command, list them all."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "run":  # the arguments of `python -m monai.bundle run`, passed through unparsed
        _resolve("samora_monai.apps.bundle_run:main")(argv[1:])
    elif argv and argv[0] in COMMANDS:
        fire.Fire(_resolve(COMMANDS[argv[0]]), command=argv[1:], name=f"samora_monai {argv[0]}")
    else:
        fire.Fire({name: _resolve(spec) for name, spec in COMMANDS.items()}, command=argv, name="samora_monai")
