"""TensorSource: local reads through a bounded set of descriptors per thread."""

from __future__ import annotations

import contextlib
import os
import threading

from preheat_tp.stream import FDS_PER_THREAD, TensorSource

FILES = 3 * FDS_PER_THREAD + 1


def open_under(root) -> int:
    """Descriptors of this process open on files under `root`."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            n += os.readlink(f"/proc/self/fd/{fd}").startswith(str(root))
    return n


def test_each_thread_keeps_a_few_files_open_and_reads_them_all_right(tmp_path):
    blobs = {f"f{i}.bin": os.urandom(4096 + i) for i in range(FILES)}
    for name, data in blobs.items():
        (tmp_path / name).write_bytes(data)
    # tensor "f{i}.bin" is the whole file, from offset 0
    source = TensorSource(lambda name: (name, 0), lambda p: tmp_path / p, lambda *a: b"")
    most, errors = [], []

    def read_all() -> None:
        try:
            for _ in range(2):
                for name, data in blobs.items():
                    buf = memoryview(bytearray(len(data)))
                    assert bytes(source.read(name, 0, len(data), buf)) == data
                    most.append(open_under(tmp_path))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=read_all) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert max(most) <= 3 * FDS_PER_THREAD < FILES
    source.close()
    assert open_under(tmp_path) == 0
