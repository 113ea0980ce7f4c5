"""The node cache: `preheat resolve --cache`, `preheat cache ...` and `preheat.cache`.

The remote store is the local store seen through a plugin that hides its local paths (so
preheat must copy, as from S3) and logs every object read to a file shared by every process:
that log is how a test tells that a cache hit read no object bytes. A real S3 server is used
in plugins/storage/tests/test_storage_cache.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import attrs
import pytest

from preheat_testing.cli import CliResult

PLUGIN = '''
"""A store plugin for tests: the local store at PATH as `fakeremote://PATH`, with no local
paths (as a remote store), every object read logged to $FAKE_REMOTE_LOG (pid, kind, key, bytes),
and no artifact file streamed while the file $FAKE_REMOTE_GATE exists."""
import os
import sys
import time

from preheat.api import hookimpl
from preheat.builtin.local import LocalStore


class RemoteLooking(LocalStore):
    def __init__(self, root):
        super().__init__(root)
        self.url = "fakeremote://" + str(self.root)

    @classmethod
    def from_url(cls, url):
        return cls(url[len("fakeremote://"):])

    def uri(self, key):
        return f"{self.url}/{key}"

    def local_path(self, key):
        return None

    def _log(self, kind, key, n):
        log = os.environ.get("FAKE_REMOTE_LOG")
        if log:
            with open(log, "a") as f:
                f.write(f"{os.getpid()} {kind} {key} {n}\\n")

    def read(self, key):
        found = super().read(key)
        if found is not None:
            self._log("read", key, len(found[0]))
        return found

    def read_range(self, key, start, length):
        data = super().read_range(key, start, length)
        self._log("range", key, len(data))
        return data

    def open_reader(self, key, chunk_size=8 << 20):
        gate = os.environ.get("FAKE_REMOTE_GATE")
        while gate and key.startswith("artifacts/") and os.path.exists(gate):
            time.sleep(0.02)
        for chunk in super().open_reader(key, chunk_size):
            self._log("get", key, len(chunk))
            yield chunk


@hookimpl
def preheat_register_stores(register):
    register("fakeremote", RemoteLooking.from_url)


def install():
    from preheat.plugins import make_registry, set_registry

    set_registry(make_registry(extra=[("fakeremote", sys.modules[__name__])]))


if __name__ == "__main__":
    install()
    if sys.argv[1] == "--hold":
        # hold the cache entry at argv[2] until stdin closes
        from preheat.cache import hold

        with hold(sys.argv[2]) as path:
            print(f"holding {path}", flush=True)
            sys.stdin.read()
    else:
        from preheat.cli.main import main

        sys.argv = ["preheat", *sys.argv[1:]]
        main()
'''


class Remote:
    """The fake remote store over `preheat_env`'s local store, and its read log."""

    def __init__(self, env, root: Path) -> None:
        self.env = env
        self.plugin_dir = root / "fake-plugin"
        self.plugin_dir.mkdir()
        (self.plugin_dir / "fake_remote.py").write_text(PLUGIN)
        self.log = root / "reads.log"
        self.log.touch()
        self.url = f"fakeremote://{env.store.resolve()}"
        env.set("FAKE_REMOTE_LOG", str(self.log))

    def module(self):
        sys.path.insert(0, str(self.plugin_dir))
        try:
            import fake_remote
        finally:
            sys.path.remove(str(self.plugin_dir))
        return fake_remote

    def store(self):
        return self.module().RemoteLooking(self.env.store)

    def reads(self, since: int = 0) -> list[tuple[int, str, str, int]]:
        lines = self.log.read_text().splitlines()[since:]
        return [(int(p), k, key, int(n)) for p, k, key, n in (line.split(" ") for line in lines)]

    def mark(self) -> int:
        return len(self.log.read_text().splitlines())

    def object_bytes(self, since: int = 0) -> dict[str, int]:
        """Bytes read per artifact file (object reads, not manifests)."""
        out: dict[str, int] = {}
        for _, kind, key, n in self.reads(since):
            if key.startswith("artifacts/") and kind in ("get", "range"):
                path = key.split("/", 3)[3]
                out[path] = out.get(path, 0) + n
        return out

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, str(self.plugin_dir / "fake_remote.py"), *args]

    def start(self, *args: str, env: dict | None = None, stdin=None) -> subprocess.Popen:
        return subprocess.Popen(
            self._argv(*args),
            env={**self.env.env, **(env or {})},
            cwd=self.env.cwd,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    @staticmethod
    def finish(proc: subprocess.Popen, args, timeout: float = 120) -> CliResult:
        out, err = proc.communicate(timeout=timeout)
        return CliResult(list(args), proc.returncode, out, err)

    def cli(self, *args: str, env: dict | None = None) -> CliResult:
        """`preheat ARGS...` in a fresh process that has the fake remote store plugin."""
        return self.finish(self.start(*args, env=env), args)

    def resolve(self, ref: str, *args: str, env: dict | None = None) -> CliResult:
        return self.cli("resolve", ref, "--store", self.url, "--cache", "--json", *args, env=env)


@pytest.fixture
def remote(preheat_env, tmp_path):
    remote = Remote(preheat_env, tmp_path)
    module = remote.module()
    module.install()
    try:
        yield remote
    finally:
        from preheat.plugins import set_registry

        set_registry(None)


@pytest.fixture
def publish(preheat_env, hub, tiny_model):
    """`publish(repo, case)`: prefetch a tiny model into the local store; returns (manifest, files)."""
    preheat_env.connect(hub)

    def make(repo: str, case: str = "llama_gqa"):
        model = tiny_model(case)
        hub.add_repo(repo, model.files)
        record = preheat_env.prefetch(repo)
        assert record.status == "succeeded", record.error
        manifest = preheat_env.catalog().manifest(record.artifact.name, record.artifact.version)
        return manifest, model.files

    return make


def cache_entries(preheat_env) -> list[Path]:
    entries = preheat_env.home / "cache" / "entries"
    return sorted(entries.iterdir()) if entries.is_dir() else []


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def settings(preheat_env, **fields):
    from preheat.config import CacheSettings

    return CacheSettings(dir=preheat_env.home / "cache", **fields)


# --------------------------------------------------------------------------- hits


def test_a_second_resolve_reads_no_object_bytes(preheat_env, remote, publish):
    manifest, files = publish("org/hit-model")
    first = remote.resolve(manifest.name).ok().json
    path = Path(first["path"])
    assert first["cache"]["hit"] is False and first["cache"]["in_place"] is False
    assert first["cache"]["filled_files"] == len(files)
    assert first["uri"] == f"{remote.url}/artifacts/{manifest.name}/{manifest.version}"
    assert path.is_relative_to(preheat_env.home / "cache")
    assert tree(path) == files
    assert remote.object_bytes() == {p: len(b) for p, b in files.items()}, "each byte once"

    mark = remote.mark()
    again = remote.resolve(manifest.name).ok().json
    assert again["path"] == first["path"] and again["cache"]["hit"] is True
    assert again["cache"]["filled_bytes"] == 0
    assert remote.object_bytes(mark) == {}, "a cache hit read object bytes from the store"
    assert {key.split("/")[0] for _, _, key, _ in remote.reads(mark)} <= {"aliases", "manifests"}
    assert tree(path) == files

    # the engine gets the cached directory
    launch = remote.resolve(manifest.name, "--engine", "vllm").ok().json
    assert launch["model"] == first["path"] and launch["command"][1:5] == [
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        first["path"],
    ]


def test_two_resolves_at_once_make_one_copy(preheat_env, remote, publish):
    manifest, files = publish("org/race-model")
    args = ("resolve", manifest.name, "--store", remote.url, "--cache", "--json")
    gate = preheat_env.root / "gate"
    gate.touch()  # no artifact file is streamed until both processes are in
    procs = [remote.start(*args, env={"FAKE_REMOTE_GATE": str(gate)}) for _ in range(2)]
    from preheat.cachedir import entry_key

    key = entry_key(remote.url, manifest.name, manifest.version)
    fill_lock = preheat_env.home / "cache" / "locks" / f"{key}.fill"
    preheat_env.wait_for(fill_lock.exists, what="a fill to start")
    # the other process is blocked on the fill lock (Linux lists waiters with "->")
    waiting = f":{fill_lock.stat().st_ino} "
    preheat_env.wait_for(
        lambda: any(
            "->" in line and waiting in line
            for line in Path("/proc/locks").read_text().splitlines()
        ),
        what="the second resolve to wait for the first",
    )
    gate.unlink()
    results = [remote.finish(p, args).ok().json for p in procs]
    assert results[0]["path"] == results[1]["path"]
    assert sorted(r["cache"]["hit"] for r in results) == [False, True], "the second waited, reused"
    assert remote.object_bytes() == {p: len(b) for p, b in files.items()}, "one copy, not two"
    readers = {pid for pid, kind, key, _ in remote.reads() if key.startswith("artifacts/")}
    assert len(readers) == 1
    assert len(cache_entries(preheat_env)) == 1
    assert tree(Path(results[0]["path"])) == files


def test_a_local_store_is_used_in_place(preheat_env, publish):
    manifest, _ = publish("org/local-model")
    data = preheat_env.cli_in_process("resolve", manifest.name, "--cache", "--json").ok().json
    expected = preheat_env.store / "artifacts" / manifest.name / manifest.version
    assert data["path"] == str(expected.resolve())
    assert data["cache"]["in_place"] is True and data["cache"]["hit"] is True
    assert cache_entries(preheat_env) == []


def test_the_python_api_fills_and_holds(preheat_env, remote, publish):
    from preheat.cache import NodeCache, cached_artifact, use_artifact

    manifest, files = publish("org/api-model")
    store = remote.store()
    path = cached_artifact(manifest, store)
    assert tree(path) == files
    mark = remote.mark()
    with use_artifact(manifest, store) as held:
        assert held == path
        (entry,) = NodeCache().list()
        assert entry.in_use and entry.complete and entry.ref == str(manifest.ref)
    assert remote.object_bytes(mark) == {}
    assert not NodeCache().list()[0].in_use


# --------------------------------------------------------------------------- damage


def test_a_damaged_entry_is_detected_and_repaired(preheat_env, remote, publish):
    manifest, files = publish("org/damaged-model")
    path = Path(remote.resolve(manifest.name).ok().json["path"])
    weights = sorted(p for p in files if p.endswith(".safetensors"))
    corrupt, missing, touched = weights[0], "config.json", "tokenizer.json"
    data = bytearray((path / corrupt).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / corrupt).write_bytes(bytes(data))  # same size, other bytes
    (path / missing).unlink()
    os.utime(path / touched, ns=(1, 1))  # another mtime, intact bytes
    (path / "stray.safetensors").write_bytes(b"not part of the artifact")
    before = {p: os.stat(path / p).st_ino for p in files if p not in (corrupt, missing)}

    mark = remote.mark()
    again = remote.resolve(manifest.name).ok().json
    assert again["path"] == str(path) and again["cache"]["hit"] is False
    assert again["cache"]["filled_files"] == 3
    # only the damaged and missing files came from the store; the touched one was re-hashed here
    assert remote.object_bytes(mark) == {p: len(files[p]) for p in (corrupt, missing)}
    assert tree(path) == files, "the stray file is gone and every file is intact"
    assert {p: os.stat(path / p).st_ino for p in before if p != corrupt} == {
        p: i for p, i in before.items() if p != corrupt
    }
    mark = remote.mark()
    assert remote.resolve(manifest.name).ok().json["cache"]["hit"] is True
    assert remote.object_bytes(mark) == {}


def test_an_interrupted_fill_is_resumed(preheat_env, remote, publish):
    from preheat.cache import NodeCache

    manifest, files = publish("org/interrupted-model")
    cache = NodeCache(settings(preheat_env))
    cache.fill(manifest, remote.store())
    key = cache.list()[0].key
    state_path = cache.entries_dir / key / "state.json"
    state = json.loads(state_path.read_text())
    state["complete"] = False  # as left by a killed fill: nothing is trusted but recorded files
    del state["files"]["config.json"]
    state_path.write_text(json.dumps(state))
    assert cache.list()[0].to_dict()["status"] == "incomplete"
    mark = remote.mark()
    result, _ = cache.fill(manifest, remote.store())
    assert not result.hit and result.filled_files == 1
    assert remote.object_bytes(mark) == {}, "the file there was re-verified, not fetched"
    assert tree(result.path) == files


# --------------------------------------------------------------------------- limits and eviction


def test_eviction_takes_the_least_recently_used_down_to_the_low_watermark(
    preheat_env, remote, publish
):
    from preheat.cache import NodeCache

    a, _ = publish("org/evict-a")
    b, _ = publish("org/evict-b", "mistral_kv2")
    c, _ = publish("org/evict-c", "qwen2_bias")
    low, high = 0.8, 0.95
    limit = int((a.total_bytes + c.total_bytes) / low) + 1
    assert (
        a.total_bytes + b.total_bytes
        <= high * limit
        < a.total_bytes + b.total_bytes + c.total_bytes
    )
    cache = NodeCache(
        settings(preheat_env, max_bytes=limit, high_watermark=high, low_watermark=low)
    )
    store = remote.store()
    assert cache.fill(manifest=a, store=store)[0].evicted == ()
    time.sleep(0.02)
    assert cache.fill(manifest=b, store=store)[0].evicted == ()
    time.sleep(0.02)
    assert cache.fill(manifest=a, store=store)[0].hit  # a is now the most recently used
    time.sleep(0.02)
    result, _ = cache.fill(manifest=c, store=store)
    assert [e.ref for e in result.evicted] == [str(b.ref)]
    assert [e.ref for e in cache.list()] == [str(a.ref), str(c.ref)]
    assert sum(e.bytes for e in cache.list()) <= low * limit


def test_cache_size_on_the_command_line(preheat_env, remote, publish):
    a, _ = publish("org/size-a")
    b, _ = publish("org/size-b", "mistral_kv2")
    remote.resolve(a.name).ok()
    size = str(max(a.total_bytes, b.total_bytes) + 10)
    data = remote.resolve(b.name, "--cache-size", size).ok().json
    assert data["cache"]["evicted"] == [str(a.ref)]
    listed = remote.cli("cache", "list", "--json").ok().json
    assert [(e["name"], e["status"]) for e in listed["entries"]] == [(b.name, "ready")]
    assert listed["bytes"] == b.total_bytes and listed["max_bytes"] is None


def test_a_limit_smaller_than_the_artifact_is_refused_before_any_copy(preheat_env, remote, publish):
    manifest, _ = publish("org/toobig-model")
    line = remote.resolve(manifest.name, "--cache-size", "1Ki").error_line()
    assert f"{manifest.ref} is" in line and "more than the node cache limit 1.0 KiB" in line
    assert "--cache-size" in line
    assert remote.object_bytes() == {} and cache_entries(preheat_env) == []
    (preheat_env.home / "config.toml").write_text('[cache]\nmax_bytes = "2Ki"\n')
    line = remote.resolve(manifest.name).error_line()
    assert "more than the node cache limit 2.0 KiB" in line and "max_bytes" in line


def test_an_entry_in_use_survives_pruning_and_eviction(preheat_env, remote, publish):
    a, files = publish("org/held-a")
    b, _ = publish("org/held-b", "mistral_kv2")
    path = remote.resolve(a.name).ok().json["path"]
    holder = remote.start("--hold", path, stdin=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == f"holding {path}"
        listed = remote.cli("cache", "list", "--json").ok().json["entries"]
        assert [(e["name"], e["in_use"]) for e in listed] == [(a.name, True)]
        pruned = remote.cli("cache", "prune", "--max-size", "0", "--json").ok().json
        assert pruned["removed"] == [] and [e["name"] for e in pruned["in_use"]] == [a.name]
        line = remote.cli("cache", "rm", a.name).error_line()
        assert f"{a.ref} in use by a running process" in line
        # a fill that needs the held entry's room fails instead of evicting it
        size = str(a.total_bytes + b.total_bytes - 1)
        line = remote.resolve(b.name, "--cache-size", size).error_line()
        assert "no room in the node cache" in line and "in use" in line
        assert tree(Path(path)) == files
    finally:
        holder.stdin.close()
        holder.wait(30)
    pruned = remote.cli("cache", "prune", "--max-size", "0", "--json").ok().json
    assert [e["name"] for e in pruned["removed"]] == [a.name] and pruned["in_use"] == []
    assert pruned["freed_bytes"] == a.total_bytes and pruned["bytes"] == 0
    assert cache_entries(preheat_env) == []
    assert not list((preheat_env.home / "cache" / "locks").iterdir()), "orphan lock files swept"


def test_a_fill_in_progress_is_neither_evicted_nor_pruned(preheat_env, remote, publish):
    a, files = publish("org/filling-a")
    b, _ = publish("org/filling-b", "mistral_kv2")
    args = ("resolve", a.name, "--store", remote.url, "--cache", "--json")
    gate = preheat_env.root / "gate"
    gate.touch()  # the fill of `a` streams no artifact file until the gate is removed
    filling = remote.start(*args, env={"FAKE_REMOTE_GATE": str(gate)})

    def reserved():
        states = [p / "state.json" for p in cache_entries(preheat_env)]
        return any(s.is_file() and not json.loads(s.read_text())["complete"] for s in states)

    preheat_env.wait_for(reserved, what="the first fill to reserve its room")
    size = str(a.total_bytes + b.total_bytes - 1)
    line = remote.resolve(b.name, "--cache-size", size).error_line()
    assert "no room in the node cache" in line
    listed = remote.cli("cache", "list", "--json").ok().json["entries"]
    assert [(e["name"], e["status"], e["in_use"]) for e in listed] == [(a.name, "filling", True)]
    pruned = remote.cli("cache", "prune", "--max-size", "0", "--json").ok().json
    assert pruned["removed"] == []
    gate.unlink()
    done = remote.finish(filling, args).ok().json
    assert done["cache"]["hit"] is False and tree(Path(done["path"])) == files


def test_prune_older_than_and_rm(preheat_env, remote, publish):
    a, _ = publish("org/old-a")
    b, _ = publish("org/old-b", "mistral_kv2")
    remote.resolve(a.name).ok()
    remote.resolve(b.name).ok()
    state = next(p for p in cache_entries(preheat_env) if p.name.startswith(a.name)) / "state.json"
    old = time.time() - 3 * 86400
    os.utime(state, (old, old))
    pruned = remote.cli("cache", "prune", "--older-than", "2d", "--json").ok().json
    assert [e["name"] for e in pruned["removed"]] == [a.name]
    assert (
        remote.cli("cache", "prune", "--older-than", "soon")
        .error_line()
        .startswith("error: invalid --older-than 'soon'")
    )
    removed = remote.cli("cache", "rm", b.name, "--json").ok().json["removed"]
    assert [(e["name"], e["version"]) for e in removed] == [(b.name, b.version)]
    line = remote.cli("cache", "rm", b.name).error_line()
    assert f"{b.name} is not in the node cache" in line


# --------------------------------------------------------------------------- errors and settings


def test_a_cache_dir_that_is_not_writable_is_one_line(preheat_env, remote, publish, tmp_path):
    manifest, _ = publish("org/readonly-model")
    if os.geteuid() == 0:
        target = Path("/sys/preheat-test-cache")  # root ignores modes; sysfs refuses
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "cache"
    (preheat_env.home / "config.toml").write_text(f'[cache]\ndir = "{target}"\n')
    line = remote.resolve(manifest.name).error_line()
    assert f"cannot write the node cache {target}" in line and "[cache]" in line
    assert remote.object_bytes() == {}


def test_conflicting_destinations_are_a_usage_error(preheat_env, publish, tmp_path):
    manifest, _ = publish("org/conflict-model")
    result = preheat_env.cli_in_process("resolve", manifest.name, "--to", str(tmp_path), "--cache")
    assert result.returncode == 2
    assert "--to and --cache cannot be combined" in result.error_line()
    result = preheat_env.cli_in_process("resolve", manifest.name, "--cache-size", "1Gi")
    assert result.returncode == 2 and "--cache-size applies to --cache only" in result.error_line()


def test_cache_settings_from_the_config_file(preheat_env):
    from preheat.config import cache_settings
    from preheat.errors import PreheatError

    config = preheat_env.home / "config.toml"
    assert cache_settings().dir == preheat_env.home / "cache"
    assert cache_settings().max_bytes is None
    config.write_text(
        textwrap.dedent(
            """
            [cache]
            dir = "node-cache"
            max_bytes = "200Gi"
            high_watermark = 0.9
            low_watermark = 0.5

            [stores."s3://bucket"]
            region = "eu-west-1"
            """
        )
    )
    got = cache_settings()
    assert got.dir == preheat_env.home / "node-cache"
    assert (got.max_bytes, got.high_watermark, got.low_watermark) == (200 * 2**30, 0.9, 0.5)
    assert cache_settings("1G").max_bytes == 10**9, "--cache-size wins over the file"
    for body, message in [
        ("[cache]\nmax_size = 1\n", "unknown key(s) max_size in [cache]"),
        ('[cache]\nmax_bytes = "lots"\n', "invalid cache.max_bytes"),
        ("[cache]\nhigh_watermark = 1.5\n", "invalid cache.high_watermark"),
        ("[cache]\nlow_watermark = 0.99\n", "cache.low_watermark (0.99) is above"),
        ("[cache\n", "cannot read the preheat config file"),
    ]:
        config.write_text(body)
        with pytest.raises(PreheatError, match=re.escape(message)):
            cache_settings()
    config.write_text("")
    preheat_env.set("PREHEAT_CONFIG", str(preheat_env.root / "other.toml"))
    (preheat_env.root / "other.toml").write_text("[cache]\nmax_bytes = 5\n")
    assert cache_settings().max_bytes == 5


def test_hold_refuses_what_is_not_a_complete_entry(preheat_env, remote, publish):
    from preheat.cache import NodeCache, hold
    from preheat.errors import NotFound, PreheatError

    manifest, _ = publish("org/hold-model")
    cache = NodeCache()
    path = cache.fill(manifest, remote.store())[0].path
    with (
        pytest.raises(PreheatError, match="is not an entry of the node cache"),
        hold(preheat_env.root),
    ):
        pass
    (path / "config.json").unlink()
    with pytest.raises(NotFound, match="no longer complete"), hold(path):
        pass
    assert attrs.asdict(cache.list()[0])["complete"] is True


def test_cache_commands_follow_the_cli_conventions(preheat_env):
    for command, usage in [
        (("cache",), "COMMAND [ARGS]..."),
        (("cache", "list"), ""),
        (("cache", "rm"), "REF"),
        (("cache", "prune"), ""),
    ]:
        text = preheat_env.cli_in_process(*command, "--help").ok().stdout
        assert (
            text.splitlines()[0].rstrip()
            == f"Usage: preheat {' '.join(command)} [OPTIONS] {usage}".rstrip()
        )
        assert "{" not in text and not re.search(r"<\w", text), text
    prune = preheat_env.cli_in_process("cache", "prune", "--help").ok().stdout
    assert "  --max-size Q  " in prune and "  --older-than D  " in prune and "  --json  " in prune
    assert "  --store URL  " in preheat_env.cli_in_process("cache", "rm", "--help").ok().stdout
    resolve = preheat_env.cli_in_process("resolve", "--help").ok().stdout
    for option in ("--cache", "--cache-size Q", "--hf-cache", "--hf-cache-dir DIR", "--to DIR"):
        assert f"  {option}  " in resolve, option
    empty = preheat_env.cli_in_process("cache", "list")
    assert empty.ok().stdout == "" and "no artifacts in the node cache" in empty.stderr
    assert preheat_env.cli_in_process("cache", "list", "--json").ok().json == {
        "dir": str(preheat_env.home / "cache"),
        "bytes": 0,
        "max_bytes": None,
        "entries": [],
    }
