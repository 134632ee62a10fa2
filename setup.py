"""Setuptools hook (metadata and dependencies live in setup.cfg): the source tree's ``bundles/`` folder is shipped as
the package data ``samora_monai/bundles/`` of the wheel, where :func:`samora_monai.utils.bundle_dir` finds it."""

from setuptools import find_packages, setup

BUNDLE_FILES = ["*/LICENSE", "*/large_files.yml", "*/configs/**/*", "*/docs/*", "*/models/.gitkeep"]

setup(
    packages=[*find_packages(include=["samora_monai", "samora_monai.*"]), "samora_monai.bundles"],
    package_dir={"samora_monai.bundles": "bundles"},
    package_data={
        "samora_monai": ["auto3dseg/algorithm_templates/**/*", "data/splits/**/*"],
        "samora_monai.bundles": BUNDLE_FILES,
    },
)
