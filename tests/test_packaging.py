"""`pip install .` (not only -e) must ship every module, the grammar and the schema."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_every_module_and_data_file(tmp_path):
    # build from a clean copy: setuptools would reuse a stale build/ folder in the checkout
    src = tmp_path / "src"
    for name in ("netc", "grammars", "kernels"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "-q", "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("netc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "netc").rglob("*.py")}
    missing = sorted(s for s in sources if s not in names)
    assert not missing, f"not in the wheel: {missing}"
    assert "netc/grammars/netc.lark" in names
    assert "netc/caffe/caffe.proto" in names
