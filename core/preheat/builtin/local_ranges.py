"""Ranged writes on the local store: one sparse partial file that every writer opens.

Each span is written with `pwrite` at its offset, from any process that sees
the directory (one machine, or a filesystem every node mounts), then noted as
an empty file of its own in a sidecar folder (`.spans/INDEX-START-END`), so
`finish_ranges` can tell a span never written from zeros; the finished file is
renamed into place at once. Creating a file is atomic on NFS too, where
appends from several machines to one file are not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from preheat.builtin.writeback import Writeback
from preheat.errors import PreheatError
from preheat.store import ObjectInfo, check_spans, span_chunks


class LocalRanges:
    """`Store.begin_ranges` and its companions for `LocalStore` (a mixin: it uses the store's
    `root`, `_path` and its helpers)."""

    def _ranges_path(self, upload: str) -> Path:
        if not upload.isalnum():
            raise PreheatError(f"not an upload handle of this store: {upload!r}")
        return self.root / ".partial" / f"r-{upload}"

    @staticmethod
    def _marks(path: Path) -> Path:
        """The folder of the spans written into the partial file `path`, one empty file each."""
        return path.with_name(path.name + ".spans")

    def begin_ranges(self, key: str, size: int) -> str:
        """A sparse partial file of `size` bytes that every writer opens and writes at its offsets."""
        from preheat.builtin import local

        upload = uuid.uuid4().hex
        path = self._ranges_path(upload)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._marks(path).mkdir()
            with open(path, "xb") as f:
                f.truncate(size)
        except OSError as exc:
            raise local._disk_error(exc, self._path(key)) from exc
        return upload

    def write_range(self, key, upload, span, chunks) -> None:
        from preheat.builtin import local

        path = self._ranges_path(upload)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            raise _gone(key) from None
        try:
            offset = span.start
            durable = local._durable()
            writeback = Writeback(fd, offset) if durable else None
            for view in span_chunks(span, chunks, key):
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
                    if writeback is not None:
                        writeback.wrote(n)
            if durable:
                os.fdatasync(fd)
            mark = self._marks(path) / f"{span.index}-{span.start}-{span.end}"
            try:
                mark.touch()
            except FileNotFoundError:
                raise _gone(key) from None
        except OSError as exc:
            raise local._disk_error(exc, self._path(key)) from exc
        finally:
            os.close(fd)

    def finish_ranges(self, key, upload, spans) -> ObjectInfo:
        from preheat.builtin import local

        path, dest = self._ranges_path(upload), self._path(key)
        check_spans(spans, key)
        size = spans[-1].end
        try:
            have = path.stat().st_size
        except FileNotFoundError:
            raise _gone(key) from None
        if have != size:
            raise PreheatError(f"{key}: the ranged upload holds {have} bytes, not {size}")
        written = self._spans_written(path)
        for span in spans:
            if (span.index, span.start, span.end) not in written:
                raise PreheatError(
                    f"{key}: span {span.index} (bytes {span.start}-{span.end}) was never written"
                )
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        except OSError as exc:
            raise local._disk_error(exc, dest) from exc
        shutil.rmtree(self._marks(path), ignore_errors=True)
        return local._info(key, dest.stat())

    @classmethod
    def _spans_written(cls, path: Path) -> set[tuple[int, int, int]]:
        try:
            names = os.listdir(cls._marks(path))
        except FileNotFoundError:
            return set()
        written = set()
        for name in names:
            fields = name.split("-")
            if len(fields) == 3 and all(f.isdigit() for f in fields):
                written.add((int(fields[0]), int(fields[1]), int(fields[2])))
        return written

    def abort_ranges(self, key: str, upload: str) -> None:
        with contextlib.suppress(OSError, PreheatError):
            path = self._ranges_path(upload)
            path.unlink(missing_ok=True)
            shutil.rmtree(self._marks(path), ignore_errors=True)


def _gone(key: str) -> PreheatError:
    return PreheatError(f"the ranged upload of {key} is gone (aborted or finished)")
