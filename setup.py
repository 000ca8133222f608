"""setuptools' package list for kftune; the rest of the configuration is pyproject.toml.

The repository root is the package `kftune` (pyproject's package-dir "kftune" = "."), which
`[tool.setuptools.packages.find]` cannot express: it names packages after their folders. So the
packages are discovered here: `kftune` and every folder with an `__init__.py` under components/
and pipelines/, at any depth. tests/, bench/, images/ and compiled/ are no packages of kftune,
and this file, though it sits in the package's folder, is no module of it.
"""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PRODUCT = ["components", "components.*", "pipelines", "pipelines.*"]


class BuildPy(build_py):
    """build_py without this file (kftune/setup.py)."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        """The package's modules, less `kftune.setup`."""
        modules = super().find_package_modules(package, package_dir)
        return [found for found in modules if (found[0], found[1]) != ("kftune", "setup")]


setup(
    packages=["kftune", *(f"kftune.{name}" for name in find_packages(ROOT, include=PRODUCT))],
    cmdclass={"build_py": BuildPy},
)
