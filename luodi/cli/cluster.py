"""`luodi serve --replicas N` (a gateway over local replica processes) and `luodi cluster status`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from luodi.errors import InvalidParameterError, LuodiError

out = Console()
err = Console(stderr=True)

cluster_app = typer.Typer(name="cluster", no_args_is_help=True, help="Inspect a gateway and its replicas.")


def serve_replicas(count: int, threads: int | None, replica_args: list[str], host: str, port: int,
                   keys_file: Path | None, allowed_hosts: tuple[str, ...] | None, policy: str,
                   slo_tpot_ms: float | None, when_no_replica_fits: str, log_level: str) -> None:
    """Start `count` replicas and serve the gateway in front of them until stopped."""
    import uvicorn

    from luodi.cluster.gateway import GatewayConfig, create_gateway
    from luodi.cluster.local import LocalReplicas
    from luodi.cluster.routing import POLICIES
    from luodi.paths import luodi_home

    if policy not in POLICIES:
        raise InvalidParameterError(f"--routing {policy!r} is not one of {', '.join(POLICIES)}", param="routing")
    if when_no_replica_fits not in ("queue", "reject"):
        raise InvalidParameterError("--when-no-replica-fits must be queue or reject", param="when_no_replica_fits")
    log_dir = luodi_home() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    replicas = LocalReplicas(count, replica_args, threads, log_dir=str(log_dir))
    config = GatewayConfig(replicas.urls(), policy=policy, slo_tpot_ms=slo_tpot_ms,  # type: ignore[arg-type]
                           when_no_replica_fits=when_no_replica_fits,  # type: ignore[arg-type]
                           api_keys_file=keys_file, allowed_hosts=allowed_hosts)
    replicas.start()
    try:
        err.print(f"[green]luodi[/green] gateway on http://{host}:{port} over {count} replicas "
                  f"({threads or 'all'} threads each; routing {policy}"
                  f"{f', target {slo_tpot_ms:g} ms/token' if slo_tpot_ms else ''}); replica logs in {log_dir}",
                  soft_wrap=True)
        server = uvicorn.Server(uvicorn.Config(create_gateway(config), host=host, port=port, log_level=log_level,
                                               timeout_graceful_shutdown=5))
        server.run()
    finally:
        replicas.stop()


def replica_args(model: str, options: dict[str, object]) -> list[str]:
    """`luodi serve` arguments for a replica: the model and every option given that a replica takes."""
    args = ["--model", model]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            args.append(flag)
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


@cluster_app.command("status")
def status(
    url: Annotated[str, typer.Option(help="The gateway's address.")] = "http://127.0.0.1:8000",
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON the gateway returns.")] = False,
    api_key: Annotated[str | None, typer.Option(help="API key, if the gateway needs one (or $LUODI_API_KEY).")] = None,
) -> None:
    """Replicas behind a gateway: id, pid, host, hardware, queue, time per token, prefix-cache hit rate."""
    import httpx

    key = api_key or os.environ.get("LUODI_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/v1/cluster/status", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise LuodiError(f"cannot reach a gateway at {url} ({type(exc).__name__}); is `luodi serve --replicas N` "
                         "running there?") from None
    if response.status_code != 200:
        raise LuodiError(f"{url} answered {response.status_code}: {response.text[:200]} (a gateway serves "
                         "/v1/cluster/status; a single `luodi serve` does not)")
    body = response.json()
    if as_json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"routing {body['policy']}" + (f", target {body['slo_tpot_ms']:g} ms/token"
                                                      if body.get("slo_tpot_ms") else ""))
    for column in ("id", "status", "pid", "host", "hardware", "in flight", "waiting", "running", "tpot ms",
                   "prefix hit", "served", "failures"):
        table.add_column(column)
    for r in body["replicas"]:
        hit = r.get("prefix_cache_hit_rate")
        table.add_row(r["id"], r["status"], str(r.get("pid") or "-"), str(r.get("host") or "-"),
                      str(r.get("hardware") or "-"), str(r["in_flight"]), str(r.get("waiting") or 0),
                      str(r.get("running") or 0), str(r.get("tpot_ms") or "-"),
                      f"{hit:.2f}" if hit is not None else "-", str(r["served"]), str(r["failures"]))
    out.print(table)

