"""The plugin registers its schemes and stays cheap to import."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from preheat_storage import plugin
from preheat_storage.store import ObstoreStore
from preheat_testing.core import registered


def test_registers_every_scheme():
    stores = registered("stores", plugin, "storage")
    assert set(stores) == {"s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "memory"}
    store = stores["memory"]("memory://plugin-test/p")
    assert isinstance(store, ObstoreStore) and store.url == "memory://plugin-test/p"


def test_entry_point_is_declared():
    eps = importlib.metadata.entry_points(group="preheat")
    assert any(ep.name == "storage" and ep.value == "preheat_storage.plugin" for ep in eps)


def test_plugin_import_does_not_import_obstore():
    code = "import sys, preheat_storage.plugin; print('obstore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_memory_stores_are_shared_by_name():
    one, two = ObstoreStore("memory://shared/x"), ObstoreStore("memory://shared/x")
    one.put("k", b"v")
    assert two.read("k")[0] == b"v"
    assert ObstoreStore("memory://other/x").head("k") is None
