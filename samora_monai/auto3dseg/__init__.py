"""Auto3DSeg plugin: the ``samora`` algorithm template and the code its scripts call.

``AutoRunner(work_dir=..., input=..., algos=["samora"], templates_path_or_url=get_template_path())`` trains, scores and
ensembles SAMora without network access, by running the bundle's own configs; see
``algorithm_templates/samora/docs/README.md``.
"""

from __future__ import annotations

import os

from samora_monai.auto3dseg.config import SamoraSettings, load_settings
from samora_monai.auto3dseg.settings import ALGO_NAME, derive_hyper_parameters

__all__ = ["ALGO_NAME", "SamoraSettings", "derive_hyper_parameters", "get_template_path", "load_settings"]


def get_template_path() -> str:
    """Absolute path of the ``algorithm_templates`` folder holding ``samora/`` (pass as ``templates_path_or_url``)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "algorithm_templates")
    if not os.path.isfile(os.path.join(path, ALGO_NAME, "scripts", "algo.py")):
        raise FileNotFoundError(f"the {ALGO_NAME} algorithm template is missing from {path} (broken installation?)")
    return path
