"""Fixtures for the data pipeline tests: data layers from .net text, NETC_DATA unset."""
import pytest

from netc.compile import build_ir


@pytest.fixture
def data_layer(tmp_path):
    """The one layer of a .net file written to tmp_path (paths resolve against tmp_path)."""
    def build(line, phase="train"):
        path = tmp_path / "t.net"
        path.write_text(line + "\n")
        net = build_ir(str(path), phase)
        (layer,) = net.layers
        return layer
    return build


@pytest.fixture(autouse=True)
def no_netc_data(monkeypatch):
    """Tests see NETC_DATA only where they set it."""
    monkeypatch.delenv("NETC_DATA", raising=False)
