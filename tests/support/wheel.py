"""kftune's wheel built from this checkout, as `pip wheel .` on a clean clone builds it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # the package's root (package-dir "kftune" = ".")
PRODUCT_DIRS = ("components", "pipelines")


def product_modules(checkout: Path = CHECKOUT) -> set[str]:
    """The wheel paths (`kftune/...py`) of every product .py file of the checkout."""
    files = {"kftune/__init__.py"}
    for folder in PRODUCT_DIRS:
        for path in (checkout / folder).rglob("*.py"):
            if "__pycache__" not in path.parts:
                files.add(f"kftune/{path.relative_to(checkout).as_posix()}")
    return files


def _copy_checkout(target: Path, checkout: Path) -> None:
    """The files a clean clone would hold (tracked and new, not ignored), else the tree."""
    listed = subprocess.run(
        ["git", "-C", str(checkout), "ls-files", "-z", "--cached", "--others",
         "--exclude-standard"],
        capture_output=True, check=False,
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked sdist, say)
        shutil.copytree(checkout, target, symlinks=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "runs"))
        return
    for name in sorted(set(listed.stdout.decode().split("\0")) - {""}):
        source = checkout / name
        if not source.exists() and not source.is_symlink():  # deleted, not yet committed
            continue
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target / name, follow_symlinks=False)


def build_wheel(work: Path, checkout: Path = CHECKOUT) -> Path:
    """The wheel `pip wheel --no-deps` builds from a copy of `checkout`, written under `work`.

    A copy, so that no build/ of earlier builds (which would keep deleted modules) takes part.
    """
    _copy_checkout(work / "checkout", checkout)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
         "-w", str(work / "dist"), str(work / "checkout")],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (work / "dist").glob("kftune-*.whl")
    return wheel
