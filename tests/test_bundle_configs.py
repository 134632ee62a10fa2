"""The two bundles hold one recipe: their configs differ only in the dataset keys their READMEs document, and every
config parses (stage-1 overlays on their base)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from monai.bundle import ConfigParser

from samora_monai.apps.stage1_pipeline import STAGE1_STEPS, stage1_configs
from samora_monai.utils import bundle_dir

BUNDLES = ("samora_synapse", "samora_la")
MAX_CONFIG_LINES = 757  # 60% of the ~1,262 lines a bundle's configs/ held before the configs were layered (issue 10)
SECTION = "### Config layout and dataset keys"
# overlays for a further dataset, held by the bundle of its modality only (documented in that bundle's README)
DATASET_OVERLAYS = {"samora_la": {"promise12.yaml"}}


def dataset_keys(bundle: str) -> set[str]:
    """The keys of the table under :data:`SECTION` in ``<bundle>/docs/README.md``."""
    text = (bundle_dir(bundle) / "docs" / "README.md").read_text()
    assert SECTION in text, f"{bundle}/docs/README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([A-Za-z_][\w#]*)` \|", section, flags=re.M))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a#b#0": leaf, ...}``: one entry per scalar (or empty container), ids as ConfigParser spells them."""
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}#").items()}
    if isinstance(node, list) and node:
        return {k: v for i, value in enumerate(node) for k, v in flatten(value, f"{prefix}{i}#").items()}
    return {prefix.rstrip("#"): node}


def undocumented_differences(a: dict, b: dict, allowed: set[str]) -> list[str]:
    """The ids whose values differ between the two configs and whose top-level key (the first id part, ``+``
    prefix removed) is not in ``allowed``."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in fa.keys() | fb.keys()
                  if fa.get(k, "<absent>") != fb.get(k, "<absent>") and k.split("#")[0].lstrip("+") not in allowed)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_dataset_keys_are_documented_once_for_both_bundles():
    keys = {b: dataset_keys(b) for b in BUNDLES}
    assert keys["samora_synapse"] == keys["samora_la"], "the two READMEs list different dataset keys"
    assert {"dataset_dir", "class_names", "label_mapping", "modality"} <= keys["samora_la"]
    assert not keys["samora_la"] & {"learning_rate", "epochs", "network_def", "train"}  # recipe keys stay shared


def test_bundles_differ_only_in_dataset_keys():
    allowed = dataset_keys("samora_synapse")
    configs = {b: sorted(p.name for p in (bundle_dir(b) / "configs").glob("*.yaml")
                         if p.name not in DATASET_OVERLAYS.get(b, ())) for b in BUNDLES}
    assert configs["samora_synapse"] == configs["samora_la"], "the bundles must hold the same config files"
    for b, overlays in DATASET_OVERLAYS.items():
        readme = (bundle_dir(b) / "docs" / "README.md").read_text()
        for name in overlays:
            assert (bundle_dir(b) / "configs" / name).is_file(), f"{b}: dataset overlay {name} missing"
            assert f"configs/{name}" in readme, f"{b}/docs/README.md does not document {name}"
            assert not any((bundle_dir(o) / "configs" / name).exists() for o in BUNDLES if o != b), name
    differing = set()
    for name in configs["samora_synapse"]:
        a, b = (load_yaml(bundle_dir(x) / "configs" / name) for x in BUNDLES)
        assert undocumented_differences(a, b, allowed) == [], f"{name}: differences outside the dataset keys"
        differing |= {k.split("#")[0] for k in flatten(a) if flatten(a)[k] != flatten(b).get(k)}
    # the bundles really are for two datasets: the comparison saw their dataset values
    assert {"class_names", "modality", "dataset_dir"} <= differing


@pytest.mark.parametrize("bundle", BUNDLES)
def test_stage2_configs_resolve_their_expressions(bundle, tmp_path):
    """train.yaml (alone and under evaluate.yaml) and inference.yaml import what their expressions call."""
    configs = bundle_dir(bundle) / "configs"
    for files in (["train.yaml"], ["train.yaml", "evaluate.yaml"], ["inference.yaml"]):
        parser = ConfigParser()
        parser.read_config([str(configs / f) for f in files])
        parser["bundle_root"] = str(tmp_path)
        parser["allow_missing_experts"] = True
        assert parser.get_parsed_content("expert_checkpoints") == {}
        if files == ["train.yaml"]:
            assert parser.get_parsed_content("resume_checkpoint") is None
        if "evaluate.yaml" in files:
            assert parser.get_parsed_content("validate#postprocessing#transforms#2#_disabled_") in (True, False)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_config_folder_stays_within_its_line_budget(bundle):
    """All files of ``configs/`` (overlays, ablations/, metadata.json, logging.conf), counted as ``wc -l`` does."""
    files = sorted(p for p in (bundle_dir(bundle) / "configs").rglob("*") if p.is_file())
    assert {"train.yaml", "inference.yaml", "metadata.json", "logging.conf"} <= {p.name for p in files}
    lines = {str(p.relative_to(bundle_dir(bundle))): p.read_bytes().count(b"\n") for p in files}
    assert sum(lines.values()) <= MAX_CONFIG_LINES, f"{bundle}: {sum(lines.values())} lines in configs/: {lines}"


def test_comparison_catches_a_recipe_change():
    """A change outside the dataset keys (a learning rate, a handler argument, a new key) is reported."""
    allowed = dataset_keys("samora_synapse")
    base = load_yaml(bundle_dir("samora_synapse") / "configs" / "train.yaml")
    changed = yaml.safe_load(yaml.safe_dump(base))
    changed["learning_rate"] = 0.001
    changed["train"]["handlers"][0]["map_location"] = "cpu"
    changed["extra"] = 1
    changed["class_names"] = ["other"]
    expected = ["extra", "learning_rate", "train#handlers#0#map_location"]
    assert undocumented_differences(base, changed, allowed) == expected


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("workflow", [s[2] for s in STAGE1_STEPS])
def test_stage1_overlays_parse_on_their_base(bundle, workflow):
    """Base + overlay parse; the overlay's values win and the run name follows the workflow."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in stage1_configs(bundle_dir(bundle) / "configs", workflow)])
    assert parser.get_parsed_content("run_name") == workflow.removeprefix("pretrain_")
    assert parser.get_parsed_content("output_dir") == f"./eval/{workflow}"
    assert parser.get_parsed_content("resume_checkpoint") is None  # the expressions' imports resolve
    assert callable(parser.get_parsed_content("train#handlers#3#iteration_log"))
    target = parser.get_parsed_content("network_def", instantiate=False).get_config()["_target_"]
    assert target.rsplit(".", 1)[-1] == {"teacher_image": "ContrastiveTeacher", "teacher_patch": "MAETeacher"}.get(
        workflow.removeprefix("pretrain_"), "SamoraNet")
