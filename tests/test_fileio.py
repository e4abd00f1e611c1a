import os
import stat

import pytest

from netc.errors import NetcError
from netc.fileio import write_bytes_atomic, write_text_atomic


def test_atomic_write_gets_the_umask_mode_and_leaves_no_temp(tmp_path):
    old = os.umask(0o022)
    try:
        target = tmp_path / "w.bin"
        write_bytes_atomic(str(target), b"abc")
        assert target.read_bytes() == b"abc"
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]
    finally:
        os.umask(old)


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "t.txt"
    write_text_atomic(str(target), "old")

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(NetcError, match=f"cannot write notes '{target}': disk full"):
        write_text_atomic(str(target), "new", "notes")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.txt"]


def test_a_missing_folder_is_one_error_naming_the_file(tmp_path):
    target = tmp_path / "no such folder" / "w.bin"
    with pytest.raises(NetcError, match="cannot write output .*w.bin': No such file or directory") as err:
        write_bytes_atomic(str(target), b"abc", "output")
    assert "folder exists" in err.value.diagnostic.hint
