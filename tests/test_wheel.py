"""The built wheel ships the configs: installed in a fresh environment, they are found by name from
any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the wheel; its dependencies come from this interpreter's site-packages
    (a .pth line), so nothing is downloaded for them."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"  # a copy: building in the checkout would leave build/ there, stale files and all
    shutil.copytree(ROOT / "atflrec", source / "atflrec", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "dist"),
                            str(source)], capture_output=True, text=True)
    if built.returncode != 0 and "build dependencies" in built.stderr:
        pytest.skip("building the wheel needs its build backend (setuptools>=77) from the package index")
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (work / "dist").glob("atflrec-*.whl")
    env_dir = work / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    Path(site, "dependencies.pth").write_text("\n".join(paths) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True)
    return env_dir


def _run(env_dir: Path, cwd: Path, *argv: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the installed package, not this checkout
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.integration  # about 30 s: builds and installs the wheel
def test_the_installed_package_finds_its_configs_by_name_from_any_directory(installed: Path, tmp_path: Path) -> None:
    shown = _run(installed, tmp_path, str(installed / "bin" / "atflrec"), "configs", "show", "train/cpu")
    assert shown == (ROOT / "atflrec/configs/train/cpu.yaml").read_text()
    check = """
import atflrec
from atflrec.config import find_config, load_config
from atflrec.training.deepspeed_config import resolve_deepspeed_config
from atflrec.tuning.space import load_space
eval_path = find_config("eval/default")
assert "site-packages" in str(eval_path) and "site-packages" in atflrec.__file__, (eval_path, atflrec.__file__)
from atflrec.evaluation import EvalConfig
print(len(load_config(EvalConfig, "eval/default").models))
plan = load_space("tune/demo")  # its base names train/cpu, which names deepspeed/zero2_cpu
trial = plan.trial_config({})
print(resolve_deepspeed_config(trial.deepspeed.config, {}, batch_size=2, grad_accum=1, max_grad_norm=None,
                               bf16=False)["zero_optimization"]["stage"])
"""
    out = _run(installed, tmp_path, str(installed / "bin" / "python"), "-c", check).split()
    assert int(out[0]) > 1 and out[1] == "2"
