"""The machinery of the demo's steps: numbered, logged subprocess steps, the demo's datalist and the baseline
network."""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Sequence
from pathlib import Path

from samora_monai.apps.stage1_pipeline import pipeline_env, run_checked
from samora_monai.utils import atomic_output

__all__ = ["DemoRunner", "DemoStepError", "write_baseline", "write_split"]


class DemoStepError(RuntimeError):
    """A demo step exited with an error; the message names the step and its log file."""


class DemoRunner:
    """Numbered step headers, subprocess streaming to the terminal and a per-step log file, timings."""

    def __init__(self, out: Path, total: int, num_threads: int = 1):
        self.out, self.total, self.index, self.num_threads = out, total, 0, num_threads
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    def header(self, name: str, title: str) -> None:
        self.index += 1
        print(f"\n{'=' * 100}\n[{self.index}/{self.total}] {title}\n{'=' * 100}", flush=True)
        self.current = name

    def done(self, name: str, seconds: float) -> None:
        self.timings[name] = round(seconds, 1)
        print(f"[{self.index}/{self.total}] done in {seconds:.1f} s", flush=True)

    def command(self, name: str, title: str, cmd: Sequence[str], expect: Sequence[Path] = ()) -> Path:
        """Run ``cmd`` streaming its bytes (progress bars included) to stdout and ``logs/<name>.log``."""
        self.header(name, title)
        log = self.logs / f"{name}.log"
        start = time.perf_counter()
        label = f"demo step [{self.index}/{self.total}] {title!r}"
        run_checked(label, cmd, log, self.out, pipeline_env(self.num_threads), expect, DemoStepError)
        self.done(name, time.perf_counter() - start)
        return log


def write_split(data_dir: Path, phantom: dict) -> tuple[Path, list[dict]]:
    """``demo_datalist.json``: training = the labelled training cases, testing = the held-out cases. No
    ``validation`` section (every labelled case trains; one may not both train and select): ``model.pt`` is the
    last-epoch network, so no held-out case selects the model."""
    source = json.loads(Path(phantom["dataset_json"]).read_text())
    split = {"training": source["training"], "testing": source["testing"]}
    path = data_dir / "demo_datalist.json"
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(split, indent=2))
    return path, source["testing"]


def write_baseline(configs: Path, bundle_root: Path, overrides: Sequence[str], path: Path) -> None:
    """The stage-2 network exactly as fine-tuning starts it (experts loaded, HL-Attn and decoder freshly initialised
    with the training seed), saved as a whole-network state dict."""
    import torch
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    parser = ConfigParser()
    parser.read_config(str(configs / "train.yaml"))
    parser["bundle_root"] = str(bundle_root)
    for key, value in zip(overrides[::2], overrides[1::2], strict=True):
        try:  # as the bundle CLI (python-fire) reads values: numbers and lists become Python objects
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        parser[key.lstrip("-")] = value
    set_determinism(seed=int(parser.get_parsed_content("seed")))
    net = parser.get_parsed_content("network_def")
    with atomic_output(path) as tmp:
        torch.save(net.state_dict(), tmp)
    set_determinism(None)
