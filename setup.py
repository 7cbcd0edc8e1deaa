"""Package discovery for the ``bench.*`` mapping (metadata live in pyproject.toml).

The top-level folders ``bench/``, ``methods/``, ``metrics/`` and ``datasets/`` install as ``bench``,
``bench.methods``, ``bench.metrics`` and ``bench.datasets``; every package under them is found by
``find_packages``, so a new method package can never be left out of a built wheel.
"""
from setuptools import find_packages, setup

PACKAGE_DIRS = {"bench": "bench", "bench.methods": "methods", "bench.metrics": "metrics",
                "bench.datasets": "datasets"}


def mapped_packages() -> list[str]:
    packages = []
    for name, folder in PACKAGE_DIRS.items():
        packages.append(name)
        packages += [f"{name}.{sub}" for sub in find_packages(folder)]
    return packages


setup(packages=mapped_packages(), package_dir=PACKAGE_DIRS)
