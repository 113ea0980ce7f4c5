"""`preheat plugins`."""

from __future__ import annotations

from preheat.cli.options import Json


def plugins(as_json: Json = False) -> None:
    """List installed plugins: name, version, hooks and what each provides."""
    from preheat import serde
    from preheat.cli.output import print_json, table
    from preheat.plugins import get_registry

    infos = get_registry().plugins()
    if as_json:
        print_json({"plugins": [serde.to_dict(i) for i in infos]})
        return
    table(
        [
            {
                "name": i.name,
                "distribution": i.distribution,
                "version": i.version,
                "provides": "; ".join(f"{k}: {', '.join(v)}" for k, v in i.provides.items()),
                "hooks": ", ".join(h.removeprefix("preheat_register_") for h in i.hooks),
                "error": i.error,
            }
            for i in infos
        ],
        ["name", "distribution", "version", "provides", "hooks", "error"],
    )
