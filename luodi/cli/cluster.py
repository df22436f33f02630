"""`luodi serve --replicas N` (a gateway over local replica processes) and `luodi cluster status`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from luodi.errors import InvalidParameterError, LuodiError

out = Console()
err = Console(stderr=True)

cluster_app = typer.Typer(name="cluster", no_args_is_help=True, help="Inspect a gateway and its replicas.")


@dataclass(frozen=True, slots=True)
class ClusterOptions:
    count: int
    threads: int | None
    policy: str = "latency"
    slo_tpot_ms: float | None = None
    when_no_replica_fits: str = "queue"
    ray_address: str | None = None  # None: local processes; "local": a Ray started here; else join it
    ray_resource: str | None = None
    gpus_per_replica: float = 0.0


def serve_replicas(options: ClusterOptions, replica_args: list[str], host: str, port: int,
                   keys_file: Path | None, allowed_hosts: tuple[str, ...] | None, log_level: str) -> None:
    """Start the replicas and serve the gateway in front of them until stopped."""
    import uvicorn

    from luodi.cluster.gateway import GatewayConfig, create_gateway
    from luodi.cluster.routing import POLICIES

    if options.policy not in POLICIES:
        raise InvalidParameterError(f"--routing {options.policy!r} is not one of {', '.join(POLICIES)}",
                                    param="routing")
    if options.when_no_replica_fits not in ("queue", "reject"):
        raise InvalidParameterError("--when-no-replica-fits must be queue or reject", param="when_no_replica_fits")
    replicas, where = _backend(options, replica_args, keys_file)
    replicas.start()
    try:
        config = GatewayConfig(replicas.urls(), policy=options.policy,  # type: ignore[arg-type]
                               slo_tpot_ms=options.slo_tpot_ms,
                               when_no_replica_fits=options.when_no_replica_fits,  # type: ignore[arg-type]
                               api_keys_file=keys_file, allowed_hosts=allowed_hosts,
                               replica_key=getattr(replicas, "replica_key", None))
        target = f", target {options.slo_tpot_ms:g} ms/token" if options.slo_tpot_ms else ""
        err.print(f"[green]luodi[/green] gateway on http://{host}:{port} over {options.count} replicas "
                  f"({options.threads or 'all'} threads each; routing {options.policy}{target}); {where}",
                  soft_wrap=True)
        server = uvicorn.Server(uvicorn.Config(create_gateway(config), host=host, port=port, log_level=log_level,
                                               timeout_graceful_shutdown=5))
        server.run()
    finally:
        replicas.stop()


def _backend(options: ClusterOptions, replica_args: list[str], keys_file: Path | None):
    """The replicas' owner (not started) and where their logs are."""
    if options.ray_address is None:
        from luodi.cluster.local import LocalReplicas
        from luodi.paths import luodi_home

        log_dir = luodi_home() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        return LocalReplicas(options.count, replica_args, options.threads, log_dir=str(log_dir)), \
            f"replica logs in {log_dir}"
    from luodi.cluster.ray_replicas import RayReplicas, RaySpec, parse_resources

    spec = RaySpec(options.count, replica_args, options.threads or 1, options.gpus_per_replica,
                   parse_resources(options.ray_resource))
    address = None if options.ray_address == "local" else options.ray_address
    return RayReplicas(address, [spec], keys_file), f"replicas on Ray at {options.ray_address}"


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

