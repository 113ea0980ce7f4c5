"""The non-secret environment a streaming model loader needs to reach a store."""

from __future__ import annotations

from collections.abc import Callable

from preheat_storage.settings import Settings


def streaming_env(settings: Settings, kind: str, scrub: Callable[[str], str]) -> dict[str, str]:
    """Region, endpoint and account of a `kind` store ("s3", "azure", "gcs"), scrubbed.

    Credentials stay out: the engine's environment must provide its own.
    """
    s = settings
    env: dict[str, str] = {}
    if kind == "s3":
        env = {
            "AWS_REGION": s.region or "us-east-1",
            "AWS_DEFAULT_REGION": s.region or "us-east-1",
        }
        if s.custom_endpoint:
            env["AWS_ENDPOINT_URL"] = s.endpoint
            # runai-model-streamer (vLLM's and SGLang's S3 loader) defaults to virtual hosts.
            env["RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"] = "1" if s.virtual_hosted else "0"
        if s.profile and s.profile != "default":
            env["AWS_PROFILE"] = s.profile
    elif kind == "azure":
        if s.account:
            env["AZURE_STORAGE_ACCOUNT_NAME"] = s.account
        if s.custom_endpoint:
            env["AZURE_STORAGE_ENDPOINT"] = s.endpoint
    elif kind == "gcs" and s.custom_endpoint:
        env["GOOGLE_BASE_URL"] = s.endpoint
    return {k: scrub(v) for k, v in env.items()}
