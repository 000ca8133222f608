"""What `pip install kftune` gives: the wheel built from this checkout, installed without `-e`.

The wheel is built from a copy of the checkout (as `pip wheel .` on a clean clone) and installed
into a fresh virtual environment that sees the dependencies already installed here but not this
environment's kftune (an editable install would serve the checkout, hiding a missing package).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.wheel import CHECKOUT, build_wheel, product_modules

pytestmark = pytest.mark.local

# Nothing of these may reach the wheel, whatever their content.
NOT_PRODUCT = ("tests", "bench", "images", "compiled", ".pyright", "setup.py")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    python: Path
    bin: Path
    purelib: Path
    env: dict[str, str]


def _dependency_dirs(view: Path) -> list[Path]:
    """This environment's site-packages dirs, seen through links that leave out every kftune."""
    paths = json.loads(subprocess.run(
        [sys.executable, "-I", "-c", "import json, sys; print(json.dumps(sys.path))"],
        capture_output=True, text=True, check=True,
    ).stdout)
    views = []
    for index, entry in enumerate(path for path in paths if path and Path(path).is_dir()):
        directory = Path(entry)
        if not {"site-packages", "dist-packages"} & set(directory.parts):
            continue  # the standard library: the new environment's interpreter has it
        views.append(view / str(index))
        views[-1].mkdir(parents=True)
        for item in directory.iterdir():
            name = item.name.lower()
            if name == "kftune" or name.startswith(("kftune-", "kftune.", "__editable__")) or (
                    name.endswith(".pth") and "kftune" in name):
                continue
            (views[-1] / item.name).symlink_to(item)
    return views


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel of this checkout, installed (not editable) in a fresh virtual environment."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(work)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bin_dir = venv / "bin"
    python = bin_dir / Path(sys.executable).name
    purelib = Path(subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, check=True).stdout.strip())
    views = [str(path) for path in _dependency_dirs(work / "deps")]
    (purelib / "zz-dependencies.pth").write_text(
        f"import site; list(map(site.addsitedir, {views!r}))\n")
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSAFEPATH")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    before = subprocess.run(
        [str(python), "-c", "import importlib.util; print(importlib.util.find_spec('kftune'))"],
        capture_output=True, text=True, env=env, cwd=work, check=True)
    assert before.stdout.strip() == "None", f"kftune importable before the install: {before}"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q",
         "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, env=env, cwd=work, timeout=600, check=False)
    assert install.returncode == 0, install.stdout + install.stderr
    return Installed(wheel, python, bin_dir, purelib, env)


def test_the_wheel_holds_every_product_module_and_nothing_else(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    shipped = {name for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert sorted(product_modules() - shipped) == [], "product modules missing from the wheel"
    assert sorted(shipped - product_modules()) == [], "files in the wheel that are no product"
    strays = [name for name in names
              if name.split("/")[0] == "kftune" and name.split("/")[1] in NOT_PRODUCT]
    assert strays == []


def test_every_module_imports_from_the_installed_wheel(
    installed: Installed, tmp_path: Path
) -> None:
    modules = sorted(
        name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in product_modules()
    )
    script = (
        "import importlib, json, sys\n"
        "import kftune\n"
        "failed = {}\n"
        f"for name in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except BaseException as error:\n"
        "        failed[name] = f'{type(error).__name__}: {error}'\n"
        "print(json.dumps({'file': kftune.__file__, 'failed': failed}))\n"
    )
    result = subprocess.run([str(installed.python), "-c", script], capture_output=True, text=True,
                            env=installed.env, cwd=tmp_path, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).parent == installed.purelib / "kftune", report["file"]
    assert report["failed"] == {}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], "LoRA fine-tuning on Kubeflow Pipelines"),
        (["run", "--check"], "all parameters are valid"),
        (["compile", "--check", "--output-dir", str(CHECKOUT / "compiled")], ""),
    ],
    ids=["help", "run-check", "compile-check"],
)
def test_the_installed_command_works(
    installed: Installed, tmp_path: Path, argv: list[str], expected: str
) -> None:
    result = subprocess.run([str(installed.bin / "kftune"), *argv], capture_output=True, text=True,
                            env=installed.env, cwd=tmp_path, timeout=600, check=False)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert expected in result.stdout
