"""Applications built on the core packages: the end-to-end demo and its phantom data and figures, the stage-1
pipeline runner, the comparison runner, the bundle-run wrapper, bundle packaging and the MONAI Label app. Core
packages never import this one."""

from samora_monai.utils import submodule_getattr

__getattr__ = submodule_getattr(__name__)  # samora_monai.apps.bundle_run etc. load on first access
