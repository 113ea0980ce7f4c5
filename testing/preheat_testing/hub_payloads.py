"""The JSON the loopback hub answers: model info, refs, commits, tree entries, card data."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from typing import Any

from preheat_testing.hub_data import Commit, Repo


def expanded(entry: dict[str, Any], commit: Commit) -> dict[str, Any]:
    out = dict(entry)
    out["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": commit.date}
    if out.get("type") == "file":
        out["securityFileStatus"] = {
            "status": "safe",
            "avScan": {"virusFound": False, "virusNames": None},
            "pickleImportScan": None,
        }
    return out


def refs(repo: Repo, include_prs: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"branches": [], "converts": [], "tags": []}
    if include_prs:
        out["pullRequests"] = []
    for name, sha in sorted(repo.branches.items()):
        if name.startswith("refs/pr/"):
            if include_prs:
                out["pullRequests"].append({"name": name[8:], "ref": name, "targetCommit": sha})
            continue
        out["branches"].append({"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha})
    for name, sha in sorted(repo.tags.items()):
        out["tags"].append({"name": name, "ref": f"refs/tags/{name}", "targetCommit": sha})
    return out


def commits(repo: Repo, commit: Commit | None) -> list[dict[str, Any]]:
    out = []
    while commit is not None:
        out.append(
            {
                "id": commit.sha,
                "title": commit.title,
                "message": "",
                "authors": [{"user": "preheat-testing", "avatar": None}],
                "date": commit.date,
            }
        )
        commit = repo.commits.get(commit.parent) if commit.parent else None
    return out


def model_info(repo: Repo, commit: Commit, blobs: bool, expand: list[str]) -> dict[str, Any]:
    siblings = []
    for entry in commit.entries:
        if entry.get("type") != "file":
            continue
        sib: dict[str, Any] = {"rfilename": entry.get("path")}
        if blobs:
            sib["size"] = entry.get("size")
            sib["blobId"] = entry.get("oid")
            lfs = entry.get("lfs")
            if lfs:
                sib["lfs"] = {
                    "sha256": lfs["oid"],
                    "size": lfs["size"],
                    "pointerSize": lfs["pointerSize"],
                }
        siblings.append(sib)
    card = _card_data(commit)
    config = _config(commit)
    library = card.get("library_name") or ("transformers" if config else None)
    tags = [str(t) for t in _as_list(card.get("tags"))]
    if library and library not in tags:
        tags.insert(0, library)
    first = min(repo.commits.values(), key=lambda c: c.date)
    info: dict[str, Any] = {
        "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
        "sha": commit.sha,
        "lastModified": commit.date,
        "createdAt": first.date,
        "private": repo.private,
        "gated": repo.gated,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": tags,
        "library_name": library,
        "pipeline_tag": card.get("pipeline_tag"),
        "cardData": card or None,
        "config": config,
        "safetensors": _safetensors_summary(commit),
        "siblings": siblings,
        "spaces": [],
        "usedStorage": sum(b.size for b in commit.files.values()),
    }
    info = {k: v for k, v in info.items() if v is not None}
    if expand:
        info = {k: v for k, v in info.items() if k in ("_id", "id", *expand)}
    return info


def _small_text(commit: Commit, path: str, limit: int = 1 << 20) -> str | None:
    blob = commit.files.get(path)
    if blob is None or blob.size > limit:
        return None
    return blob.read().decode("utf-8", "replace")


def _config(commit: Commit) -> dict[str, Any] | None:
    text = _small_text(commit, "config.json")
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    return {k: data[k] for k in ("architectures", "model_type") if k in data}


def _card_data(commit: Commit) -> dict[str, Any]:
    if "card" not in commit.cache:
        commit.cache["card"] = _front_matter(_small_text(commit, "README.md") or "")
    return commit.cache["card"]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    return text


def _front_matter(text: str) -> dict[str, Any]:
    """The flat keys and simple lists of a README's YAML front matter."""
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    data: dict[str, Any] = {}
    key = None
    for line in text[3:end].splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("- ") and key is not None and line[:1] in (" ", "\t", "-"):
            if isinstance(data.get(key), list):
                data[key].append(_scalar(stripped[2:]))
            continue
        if line[:1] in (" ", "\t") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not value:
            data[key] = []
        elif value.startswith("[") and value.endswith("]"):
            data[key] = [_scalar(v) for v in value[1:-1].split(",") if v.strip()]
        else:
            data[key] = _scalar(value)
    return {k: (v if v != [] else None) for k, v in data.items()}


def _safetensors_summary(commit: Commit) -> dict[str, Any] | None:
    if "safetensors" in commit.cache:
        return commit.cache["safetensors"]
    params: dict[str, int] = {}
    for path, blob in commit.files.items():
        if not path.endswith(".safetensors") or blob.size < 8:
            continue
        try:
            (n,) = struct.unpack("<Q", blob.read(0, 8))
            if n > min(blob.size - 8, 100 << 20):
                continue
            header = json.loads(blob.read(8, n))
            for name, meta in header.items():
                if name == "__metadata__":
                    continue
                count = 1
                for dim in meta["shape"]:
                    count *= int(dim)
                params[meta["dtype"]] = params.get(meta["dtype"], 0) + count
        except (ValueError, KeyError, TypeError, AttributeError, OSError, struct.error):
            continue
    summary = {"parameters": params, "total": sum(params.values())} if params else None
    commit.cache["safetensors"] = summary
    return summary
