"""`luodi serve` and `luodi keys`: run the OpenAI-compatible server; manage its API keys.

`serve` starts listening at once and loads (pulling if needed) the model in the background, so
clients get 503 with a clear message until it is ready. It refuses to bind a non-loopback
address without API keys unless told `--insecure-no-auth`.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from luodi.cli.kb import IngestLimitOpt, ingest_limits
from luodi.cli.options import DEFAULT_MODEL, DeviceOpt, DtypeOpt, ModelOpt, SpeculativeOpt
from luodi.errors import InvalidParameterError, LuodiError

out = Console()
err = Console(stderr=True)
log = logging.getLogger("luodi.server")

KeysFileOpt = Annotated[
    Path | None, typer.Option("--file", "-f", help="Keys file (default: $LUODI_HOME/api-keys.json).")
]


class InsecureBindError(LuodiError):
    """Serving on a network address without API keys, without saying so explicitly."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat it as network


def resolve_keys_file(api_key_file: Path | None, host: str, insecure_no_auth: bool) -> Path | None:
    """The keys file to enforce, or None (no auth) — refusing an unprotected network bind."""
    from luodi.server.auth import KeyStore, default_keys_file

    if api_key_file is not None:
        KeyStore.open(api_key_file)  # fail now, with the fix, if it is missing or empty
        return api_key_file
    default = default_keys_file()
    if default.is_file() and KeyStore(default).names:
        return default  # keys were added with `luodi keys add`: use them without being asked
    if is_loopback(host):
        return None
    if not insecure_no_auth:
        raise InsecureBindError(
            f"--host {host} exposes the model to the network but no API keys are configured; create one "
            "with `luodi keys add NAME` (then clients send 'Authorization: Bearer KEY'), or pass "
            "--insecure-no-auth to serve without authentication"
        )
    log.warning(
        "serving on %s WITHOUT authentication (--insecure-no-auth): anyone who can reach it can use it", host
    )
    return None


LOCAL_HOST_NAMES = ("localhost", "127.0.0.1", "[::1]")
_HOST_NAME = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)$")  # a DNS name, IPv4, or [IPv6]


def allowed_hosts(host: str, extra: list[str]) -> tuple[str, ...] | None:
    """The Host names a server without keys answers (checked only then): the loopback names plus
    `--allowed-host`s; None (any) for a network bind with none given, which answers its own names."""
    for name in extra:
        if not _HOST_NAME.match(name):
            raise InvalidParameterError(
                f"--allowed-host {name!r} is not a host name (give it without scheme or port, e.g. "
                "--allowed-host my-pc.local)", param="allowed_host")
    if not is_loopback(host) and not extra:
        return None
    return (*LOCAL_HOST_NAMES, *(name.lower() for name in extra))


def served_name(model: str) -> str:
    """The id clients send as "model": the catalog name, or the file or directory name."""
    path = Path(model)
    return path.stem if path.suffix == ".gguf" else path.name or model


_ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def parse_lora_specs(specs: list[str]) -> dict[str, Path]:
    """`--lora NAME=DIR` values as {name: adapter directory}, each checked to be a LoRA adapter."""
    from luodi.models.adapters import read_adapter_config

    adapters: dict[str, Path] = {}
    for spec in specs:
        name, sep, directory = spec.partition("=")
        if not sep or not directory or not _ADAPTER_NAME.fullmatch(name):
            raise InvalidParameterError(
                f"--lora {spec!r} is not NAME=DIR (NAME: letters, digits, '.', '_', '-'; e.g. --lora support=./out)",
                param="lora",
            )
        if name in adapters:
            raise InvalidParameterError(f"--lora {name} is given twice; give each adapter its own name", param="lora")
        path = Path(directory).expanduser()
        if not path.is_dir():
            raise InvalidParameterError(f"--lora {spec!r}: {path} is not a directory", param="lora")
        read_adapter_config(path)
        adapters[name] = path
    return adapters


def serve(
    model: ModelOpt = DEFAULT_MODEL,
    host: Annotated[
        str, typer.Option(help="Address to bind; a non-loopback one needs API keys.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key_file: Annotated[
        Path | None,
        typer.Option(
            "--api-key-file",
            help="Keys file made by `luodi keys add` (default: $LUODI_HOME/api-keys.json if it holds keys).",
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option("--insecure-no-auth", help="Allow a non-loopback --host without API keys.")
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option("--allowed-host", help="Also answer this Host name without API keys (besides localhost, "
                     "127.0.0.1, [::1]); repeatable."),
    ] = None,
    max_num_seqs: Annotated[
        int, typer.Option("--max-num-seqs", help="Most sequences decoded together.")
    ] = 16,
    kv_cache_gb: Annotated[float, typer.Option("--kv-cache-gb", help="Memory for the KV cache, GiB.")] = 1.0,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Requests queued beyond the batch before 429.")
    ] = 64,
    served_model_name: Annotated[
        str | None,
        typer.Option("--served-model-name", help="The model id clients use (default: the model's name)."),
    ] = None,
    kb_store: Annotated[
        str | None,
        typer.Option("--kb-store", help="Knowledge bases: default SQLite under $LUODI_HOME/kb, or postgresql://…"),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option("--lora", help="Serve a LoRA adapter unmerged as model MODEL:NAME (NAME=DIR; repeatable)."),
    ] = None,
    ingest_limit: IngestLimitOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    log_level: Annotated[str, typer.Option(help="debug | info | warning | error")] = "info",
    speculative: SpeculativeOpt = "ngram",
    hardware_class: Annotated[
        str | None, typer.Option("--hardware-class", help="The class a gateway knows this server by "
                                 "(default: cuda:<GPU> or cpu-<ISA level>).")] = None,
    replicas: Annotated[
        int, typer.Option("--replicas", help="Serve through a gateway over this many local replica processes "
                          "(0: one process, no gateway).")] = 0,
    threads_per_replica: Annotated[
        int | None, typer.Option("--threads-per-replica", help="CPU threads of each replica (default: all).")
    ] = None,
    routing: Annotated[
        str, typer.Option("--routing", help="With --replicas: latency (target, then cached prefix) | round-robin.")
    ] = "latency",
    slo_tpot_ms: Annotated[
        float | None, typer.Option("--slo-tpot-ms", help="With --replicas: route each request where its time per "
                                   "output token stays under this (a request's slo_tpot_ms overrides it).")
    ] = None,
    when_no_replica_fits: Annotated[
        str, typer.Option("--when-no-replica-fits", help="With --replicas: queue | reject (429).")] = "queue",
    ray: Annotated[
        str | None, typer.Option("--ray", help="Place the replicas on Ray: the cluster's address (HOST:PORT), "
                                 "or 'local' for a Ray started here.")] = None,
    ray_resource: Annotated[
        str | None, typer.Option("--ray-resource", help="With --ray: a custom resource each replica needs (a "
                                 "hardware class, e.g. cpu-fast), or a JSON object of them.")] = None,
    gpus_per_replica: Annotated[
        float, typer.Option("--gpus-per-replica", help="With --ray: GPUs each replica reserves.")] = 0.0,
) -> None:
    """Serve a model over an OpenAI-compatible API, with a web chat at http://HOST:PORT/."""
    import uvicorn

    from luodi.engine.engine import EngineConfig
    from luodi.engine.speculative import SpeculativeConfig
    from luodi.llm import LLM
    from luodi.server import ModelService, ServerConfig, create_app

    _check_serve_options(port, max_num_seqs, kv_cache_gb, max_queue)
    adapters = parse_lora_specs(lora or [])
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s:     %(message)s")
    keys_file = resolve_keys_file(api_key_file, host, insecure_no_auth)
    if replicas or ray:
        from luodi.cli.cluster import ClusterOptions, replica_args, serve_replicas

        replicas = replicas or 1
        if replicas < 1 or (threads_per_replica is not None and threads_per_replica < 1):
            raise InvalidParameterError("--replicas and --threads-per-replica must be at least 1", param="replicas")
        cluster = ClusterOptions(replicas, threads_per_replica, routing, slo_tpot_ms, when_no_replica_fits, ray,
                                 ray_resource, gpus_per_replica)
        options = dict(max_num_seqs=max_num_seqs, kv_cache_gb=kv_cache_gb, max_queue=max_queue,
                       served_model_name=served_model_name or served_name(model), kb_store=kb_store, lora=lora,
                       ingest_limit=ingest_limit, device=device, dtype=dtype, speculative=speculative,
                       api_key_file=None if ray else keys_file, hardware_class=hardware_class)
        serve_replicas(cluster, replica_args(model, options), host, port, keys_file,
                       allowed_hosts(host, allowed_host or []), log_level)
        return
    engine_config = EngineConfig(max_num_seqs=max_num_seqs, kv_cache_bytes=int(kv_cache_gb * 2**30),
                                 speculative=SpeculativeConfig(method=speculative))
    config = ServerConfig(
        model_name=served_model_name or served_name(model), max_queue=max_queue, api_keys_file=keys_file,
        kb_store=kb_store, ingest_limits=ingest_limits(ingest_limit),
        allowed_hosts=allowed_hosts(host, allowed_host or []), hardware=hardware_class,
    )

    def load() -> LLM:
        return LLM.load(
            model, device=device, dtype=None if dtype == "auto" else dtype, engine_config=engine_config,
            adapters=adapters,
        )

    service = ModelService(config, load)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service), host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5
        )
    )
    failure: list[str] = []

    def stop(detail: str) -> None:
        failure.append(detail)
        server.should_exit = True

    service.start(on_failure=stop)
    auth = f"API keys from {keys_file}" if keys_file else "no authentication"
    err.print(
        f"[green]luodi[/green] serving {config.model_name}{_adapter_ids(config.model_name, adapters)} on http://{host}:{port} ({auth}); "
        f"web chat at http://{host}:{port}/",
        soft_wrap=True,
    )
    server.run()
    if failure:
        raise LuodiError(f"could not serve {model}: {failure[0]}")


def _adapter_ids(model_name: str, adapters: dict[str, Path]) -> str:
    return f" (adapters: {', '.join(f'{model_name}:{name}' for name in adapters)})" if adapters else ""


def _check_serve_options(port: int, max_num_seqs: int, kv_cache_gb: float, max_queue: int) -> None:
    if not 0 <= port <= 65535:
        raise InvalidParameterError(f"--port {port} is not a TCP port (0-65535)", param="port")
    if max_num_seqs < 1:
        raise InvalidParameterError(f"--max-num-seqs {max_num_seqs} must be at least 1", param="max_num_seqs")
    if not kv_cache_gb > 0:
        raise InvalidParameterError(f"--kv-cache-gb {kv_cache_gb} must be > 0", param="kv_cache_gb")
    if max_queue < 0:
        raise InvalidParameterError(f"--max-queue {max_queue} must be >= 0", param="max_queue")


# -- keys ---------------------------------------------------------------------------------------------

keys_app = typer.Typer(
    name="keys", no_args_is_help=True, help="Manage the server's API keys (stored hashed)."
)


@keys_app.command("add")
def keys_add(
    name: Annotated[str, typer.Argument(help="A name for the key (who or what uses it).")],
    file: KeysFileOpt = None,
) -> None:
    """Create a key and print it once: only its hash is stored."""
    from luodi.server.auth import add_key, default_keys_file

    path = file or default_keys_file()
    key = add_key(path, name)
    print(key)  # stdout: the key alone, so `KEY=$(luodi keys add NAME)` works
    err.print(f"[green]✓[/green] key {name!r} added to {path}; it is shown only now, store it safely")


@keys_app.command("list")
def keys_list(file: KeysFileOpt = None) -> None:
    """List key names (never the keys)."""
    from luodi.server.auth import default_keys_file, read_keys

    path = file or default_keys_file()
    keys = read_keys(path)
    if not keys:
        out.print(f"No API keys in {path}: `luodi keys add NAME` creates one.")
        return
    for key in keys:
        out.print(f"{key.name}\t{key.hint}…")


@keys_app.command("remove")
def keys_remove(
    name: Annotated[str, typer.Argument(help="The key's name.")], file: KeysFileOpt = None
) -> None:
    """Revoke a key (a running server stops accepting it at once)."""
    from luodi.server.auth import default_keys_file, remove_key

    path = file or default_keys_file()
    remove_key(path, name)
    err.print(f"[green]✓[/green] key {name!r} removed from {path}")
