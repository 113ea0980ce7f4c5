"""Shard refusals as the suites check them: the run fails in one line, having read only headers."""

from __future__ import annotations

from preheat_testing.sharding import assert_only_header_reads, n_weight_files


def refused(world, engine: str, key: str, files: dict[str, bytes], args: dict, **fields) -> str:
    """Prefetch `files` (as repo `ENGINE-bad/KEY`) with a shard config in-process; its one-line error.

    Asserts the run failed without an internal error, looked at config.json, read nothing of
    the weights but their headers, and published nothing.
    """
    repo, name = f"{engine}-bad/{key}", f"{engine}-bad-{key}"
    world.add_repo(repo, files)
    outcome = world.prefetch(repo, {"engine": engine, "args": args}, artifact_name=name, **fields)
    error = outcome.record.error or ""
    assert outcome.record.status == "failed", outcome.record
    assert error and "\n" not in error and "internal error" not in error, error
    assert any(r.file == "config.json" for r in outcome.requests), "refused without looking"
    assert_only_header_reads(outcome.requests, n_weight_files(files))
    assert world.catalog().versions(name) == [], "something was published"
    return error


def cli_refusal(world, repo: str, yaml_text: str, name: str, yaml_name: str | None = None):
    """`preheat prefetch hf-model REPO --shard-config FILE --wait`: (error line, hub requests)."""
    path = world.write_yaml(f"{yaml_name or name}.yaml", yaml_text)
    mark = world.mark()
    result = world.cli(
        "prefetch", "hf-model", repo, "--artifact-name", name, "--shard-config", str(path), "--wait"
    )
    return result.error_line(), world.requests_since(mark)
