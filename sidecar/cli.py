"""Command line: ``serve``, ``exec -- COMMAND``, ``credentials``, ``inspect``, ``health``,
``node-agent``, ``link-local``.
The only module that exits.

Every flag can also come from an environment variable (listed in ``--help``), so
containers can be configured without a command line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sidecar import __version__
from sidecar.config import (
    EXEC_DEFAULTS,
    SETTINGS,
    SETTINGS_BY_NAME,
    Config,
    Supplied,
    dev_requested,
    load_config,
    resolve_raw,
)
from sidecar.config.checks import check_profile
from sidecar.config.node_agent import NODE_SETTINGS, load_node_agent_config
from sidecar.config.settings import LOG_LEVELS, TOKEN_SETTINGS, Setting, as_text
from sidecar.core.credentials import Credentials
from sidecar.core.errors import (
    AuthTokenError,
    ConfigError,
    FetchError,
    ListenError,
    OutputError,
    SidecarError,
)
from sidecar.daemon import Running, running_daemon
from sidecar.logs import configure_logging
from sidecar.outputs.execute import ExecSignals, loopback_url, prepare_environment, wait_ready
from sidecar.outputs.exports import FORMATS
from sidecar.outputs.health import probe_ready
from sidecar.outputs.link_local import (
    CAPABILITY_ADDRESS,
    DEFAULT_INTERFACE,
    InterfaceNotFoundError,
    LinkLocalAddressError,
    LinkLocalError,
    Outcome,
    add_addresses,
    interface_is_up,
    remove_addresses,
)
from sidecar.outputs.one_shot import check_url, emit, fetch_credentials, read_client_token
from sidecar.tenancy.capability import RELATIVE_PREFIX

if TYPE_CHECKING:
    # Dev mode, the node agent and inspect are imported where they are used: `serve`
    # starts faster and holds less memory without them (docs/benchmarks.md).
    from sidecar.devmode.environment import DevEnvironment
    from sidecar.devmode.pods import DevCluster
    from sidecar.node_agent import RunningAgent

_T = TypeVar("_T")
EXIT_OK = 0
EXIT_FAILURE = 1  # an unexpected error (a bug): the traceback is logged
EXIT_CONFIG = 2  # bad configuration or auth token file: the message says what to fix
EXIT_LISTEN = 3  # cannot bind the listen address (in use, not local, no permission)
EXIT_PROBLEMS = 4  # inspect: the token or the trust policy would be refused
EXIT_UNAVAILABLE = 5  # exec: no credentials within --wait, the command was not run
EXIT_UNHEALTHY = 1  # health: not ready (a container HEALTHCHECK knows only 0 and 1)
EXIT_LINK_LOCAL = 6  # link-local: the kernel refused (no CAP_NET_ADMIN, ...)

log = logging.getLogger("sidecar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="credential-sidecar",
        description="Exchange an OIDC web-identity token for AWS credentials, keep them "
        "fresh, and serve them to AWS SDKs on an ECS-compatible endpoint.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve",
        help="run the daemon",
        description="Run the credentials daemon. Flags override environment variables.",
    )
    _add_settings(serve_parser, SETTINGS)
    exec_parser = commands.add_parser(
        "exec",
        help="run a command with refreshed credentials, for as long as it runs",
        description="Serve credentials on a free loopback port with a fresh auth token, run "
        "COMMAND with AWS_CONTAINER_CREDENTIALS_FULL_URI and AWS_CONTAINER_AUTHORIZATION_TOKEN"
        "[_FILE] set, credential-free AWS config files, and neither other credentials nor "
        "the web-identity token in its environment, then exit with its exit code. Takes "
        "every serve flag.",
    )
    _add_settings(exec_parser, SETTINGS)
    exec_parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait for credentials before giving up (exit 5) [default 30]",
    )
    exec_parser.add_argument("child", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    credentials_parser = commands.add_parser(
        "credentials",
        help="print the role's current credentials in a tool's format (process, env, ...)",
        description="Print the default role's credentials in the form a tool expects, like "
        "`aws configure export-credentials`: from a running daemon (--url, "
        "--auth-token-file, with the SDKs' host rules) or, without --url, by one exchange "
        "with serve's flags. Secrets go only to stdout (github-env: to $GITHUB_ENV, with "
        "::add-mask:: lines on stdout). See docs/exports.md.",
    )
    credentials_parser.add_argument(
        "--format",
        required=True,
        choices=list(FORMATS),
        metavar="FORMAT",
        help="; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()),
    )
    credentials_parser.add_argument(
        "--url",
        metavar="URL",
        help="a running daemon's credentials URL (http only for 127.0.0.0/8, [::1], "
        "localhost, 169.254.170.2, 169.254.170.23, [fd00:ec2::23]; else https)",
    )
    credentials_parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="without --url: how long to wait for credentials (exit 5) [default 30]",
    )
    _add_settings(credentials_parser, SETTINGS)
    inspect_parser = commands.add_parser(
        "inspect",
        help="check a token (and a role's trust policy) before STS does",
        description="Fetch one token from the configured source and explain what STS will "
        "think of it: expiry, audience, and with --trust-policy the provider, aud and sub "
        "conditions (including a missing sub condition). Never prints the token.",
    )
    _add_settings(inspect_parser, [SETTINGS_BY_NAME[name] for name in TOKEN_SETTINGS])
    inspect_parser.add_argument(
        "--trust-policy",
        metavar="FILE",
        help="the role's trust policy JSON, or `aws iam get-role` output",
    )
    health_parser = commands.add_parser(
        "health",
        help="exit 0 if the daemon on --listen is ready, else 1 (a container HEALTHCHECK)",
        description="GET /readyz from the daemon listening on --listen (SIDECAR_LISTEN) and "
        "exit 0 on 200, 1 otherwise. Needs no tool in the image besides credential-sidecar.",
    )
    _add_settings(health_parser, [SETTINGS_BY_NAME["listen"]])
    node_parser = commands.add_parser(
        "node-agent",
        help="one daemon per Kubernetes node: every pod gets its service account's role",
        description="Serve every pod on this node the role its service account is associated "
        "with, authenticated by the pod's projected service-account token (verified here "
        "against the cluster issuer's keys) and exchanged with STS as the pod itself.",
    )
    _add_settings(node_parser, NODE_SETTINGS)
    token_parser = commands.add_parser(
        "dev-pod-token",
        help="print a pod token minted by `node-agent --dev`'s issuer",
        description="Mint the token the kubelet would project into a pod of this service "
        "account, from the issuer `node-agent --dev` prints (dev mode only).",
    )
    token_parser.add_argument("--namespace", required=True)
    token_parser.add_argument("--service-account", required=True)
    token_parser.add_argument("--issuer", required=True, help="the dev issuer URL it printed")
    token_parser.add_argument("--ttl", type=float, default=3600.0, metavar="SECONDS")
    link_parser = commands.add_parser(
        "link-local",
        help="add (up) or remove (down) the link-local addresses to listen on; needs CAP_NET_ADMIN",
        description="Put link-local addresses on an interface of this host (up) or take "
        "them off (down), as /32 or /128, so a listener can bind them: 169.254.170.2 for "
        "the ECS capability endpoint, 169.254.170.23 and fd00:ec2::23 for the node agent. "
        "Idempotent. Needs root or CAP_NET_ADMIN. See docs/link-local.md.",
    )
    link_parser.add_argument("action", choices=("up", "down"))
    link_parser.add_argument(
        "--address",
        action="append",
        metavar="ADDR",
        help="an IPv4 link-local (169.254.0.0/16) or IPv6 unique local (fc00::/7) address; "
        f"repeatable [default {CAPABILITY_ADDRESS}]",
    )
    link_parser.add_argument(
        "--interface",
        default=DEFAULT_INTERFACE,
        metavar="NAME",
        help=f"the interface to put them on [default {DEFAULT_INTERFACE}]",
    )
    return parser


def _add_settings(parser: argparse.ArgumentParser, settings: Sequence[Setting]) -> None:
    for setting in settings:
        sources = ", ".join(setting.envs)
        default = f"; default {setting.default}" if setting.default is not None else ""
        if setting.is_switch:
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                action="store_const",
                const="1",
                help=f"{setting.help} [env {sources}=1]",
            )
        else:
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                metavar="VALUE",
                action="append" if setting.repeatable else "store",
                help=f"{setting.help} [env {sources}{default}]",
            )


def dev_instructions(running: Running, dev: DevEnvironment) -> str:
    from sidecar.devmode.environment import DEV_REGION

    lines = [
        "# credential-sidecar dev mode is serving credentials. In another shell:",
        "unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE",
        f"export AWS_CONTAINER_CREDENTIALS_FULL_URI={shlex.quote(loopback_url(running.url))}",
    ]
    if running.auth_token_file:
        path = shlex.quote(running.auth_token_file)
        # Both: older SDKs read only the plain variable. The shell reads the token itself,
        # so it is never printed.
        lines += [
            f"export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={path}",
            # Assigned, then exported: `export X="$(cat F)"` would hide a failing cat.
            f'AWS_CONTAINER_AUTHORIZATION_TOKEN="$(cat {path})"',
            "export AWS_CONTAINER_AUTHORIZATION_TOKEN",
        ]
    if running.imds_url:
        lines.append(
            f"# or, for IMDS clients: export AWS_EC2_METADATA_SERVICE_ENDPOINT="
            f"{shlex.quote(loopback_url(running.imds_url))}"
        )
    for name, path in running.relative_id_files.items():
        # The id is a credential: the shell reads it, it is never printed.
        lines.append(
            f"# or, for clients that know only RELATIVE_URI (they connect to "
            f"169.254.170.2:80), role {name}, instead of FULL_URI: "
            f'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI="{RELATIVE_PREFIX}$(cat {shlex.quote(path)})"'
        )
    lines += [
        f"export AWS_ENDPOINT_URL_STS={shlex.quote(dev.sts_url)}",
        f"export AWS_REGION={DEV_REGION} AWS_DEFAULT_REGION={DEV_REGION}",
        "aws sts get-caller-identity",
    ]
    return "\n".join(lines)


class _Exit(Exception):
    """A startup failure already explained on stderr; carries the exit code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class _Started:
    running: Running
    config: Config
    dev: DevEnvironment | None


async def _start(
    stack: contextlib.AsyncExitStack,
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    exec_directory: Path | None = None,
) -> _Started:
    """Dev environment (if asked), configuration, daemon: started and owned by ``stack``.

    ``exec_directory``: exec's private directory (``load_config`` decides what goes there).
    """
    dev: DevEnvironment | None = None
    try:
        if dev_requested(flags, environ):
            from sidecar.devmode.environment import dev_environment

            dev = await stack.enter_async_context(dev_environment())
        supplied = Supplied(dev=dev.supply() if dev else None, exec_directory=exec_directory)
        config = load_config(flags, environ, supplied)
    except ConfigError as exc:
        print(f"credential-sidecar: {exc}", file=sys.stderr)
        raise _Exit(EXIT_CONFIG) from None
    configure_logging(config.log_format, config.log_level)
    try:
        running = await stack.enter_async_context(running_daemon(config))
    except (AuthTokenError, ListenError) as exc:
        print(f"credential-sidecar: {exc}", file=sys.stderr)
        raise _Exit(EXIT_LISTEN if isinstance(exc, ListenError) else EXIT_CONFIG) from None
    return _Started(running, config, dev)


async def serve(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        try:
            started = await _start(stack, flags, environ)
        except _Exit as exc:
            return exc.code
        loop.add_signal_handler(signal.SIGHUP, started.running.refresh_now)
        if started.dev is not None:
            print(dev_instructions(started.running, started.dev), flush=True)
        await stop.wait()
        log.info("signal received, shutting down", extra={"event": "signal"})
    return EXIT_OK


async def exec_child(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    argv: Sequence[str],
    wait: float,
) -> int:
    # Signals first: whatever arrives from here on stops exec with its private directory
    # removed, or reaches the child once it runs.
    signals = ExecSignals()
    with (
        signals.installed(),
        tempfile.TemporaryDirectory(prefix="credential-sidecar-exec-") as private,
    ):
        async with contextlib.AsyncExitStack() as stack:
            try:
                started = await _start(stack, flags, environ, exec_directory=Path(private))
            except _Exit as exc:
                return exc.code
            running = started.running
            ready = running.default is not None and await signals.until_signal(
                wait_ready(running.default, wait)
            )
            if signals.received is not None:
                name = signal.Signals(signals.received).name
                print(
                    f"credential-sidecar: stopped by {name} before {argv[0]} was run",
                    file=sys.stderr,
                )
                return 128 + signals.received
            if not ready:
                print(
                    f"credential-sidecar: no credentials within {wait:g}s (see the errors "
                    f"above); not running {argv[0]}",
                    file=sys.stderr,
                )
                return EXIT_UNAVAILABLE
            try:
                env = prepare_environment(
                    environ,
                    started.running.url,
                    started.running.auth_token_file,
                    started.config,
                    Path(private),
                    dev_sts_url=started.dev.sts_url if started.dev else None,
                    dev_region=_dev_region() if started.dev else None,
                )
            except AuthTokenError as exc:
                print(f"credential-sidecar: {exc}", file=sys.stderr)
                return EXIT_CONFIG
            return await signals.run_child(argv, env)


def print_credentials(
    flags: Mapping[str, str | None],
    environ: Mapping[str, str],
    fmt: str,
    url: str | None,
    wait: float,
) -> int:
    """``credentials``: render the default role's credentials on stdout (or $GITHUB_ENV)."""
    raw = resolve_raw(flags, environ)
    profile = as_text(raw["profile"][0]) or "default"
    token_file = as_text(raw["auth_token_file"][0])
    try:
        # Bad input first, before anything is fetched or exchanged (exit 2).
        check_profile(profile)
        checked = check_url(url) if url else None
        token = read_client_token(Path(token_file)) if url and token_file else None
    except (FetchError, OutputError) as exc:
        print(f"credential-sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if checked:
            creds: Credentials | int = fetch_credentials(checked, token)
        else:
            creds = _run(exchange_once(flags, environ, wait))
        if isinstance(creds, int):
            return creds
        emit(creds, fmt, profile, sys.stdout, environ)
    except FetchError as exc:
        print(f"credential-sidecar: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except OutputError as exc:
        print(f"credential-sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return EXIT_OK


async def exchange_once(
    flags: Mapping[str, str | None], environ: Mapping[str, str], wait: float
) -> Credentials | int:
    """The default role's credentials from one exchange with serve's flags, or an exit code."""
    with tempfile.TemporaryDirectory(prefix="credential-sidecar-credentials-") as private:
        async with contextlib.AsyncExitStack() as stack:
            try:
                started = await _start(stack, flags, environ, exec_directory=Path(private))
            except _Exit as exc:
                return exc.code
            refresher = started.running.default
            if refresher is None:
                print(
                    "credential-sidecar: the config file names no default role: set "
                    "default_role, or use --url with the role's URL",
                    file=sys.stderr,
                )
                return EXIT_CONFIG
            snap = refresher.servable() if await wait_ready(refresher, wait) else None
            if snap is None:
                print(
                    f"credential-sidecar: no credentials within {wait:g}s (see the errors above)",
                    file=sys.stderr,
                )
                return EXIT_UNAVAILABLE
            return snap.credentials


async def inspect_token(
    flags: Mapping[str, str | None], environ: Mapping[str, str], policy: str | None
) -> int:
    from sidecar.exchange.inspection import inspect

    try:
        report = await inspect(
            resolve_raw(flags, environ), environ, Path(policy) if policy else None
        )
    except (ConfigError, SidecarError) as exc:
        print(f"credential-sidecar: {exc}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_PROBLEMS
    print(report.render())
    return EXIT_OK if report.ok else EXIT_PROBLEMS


def link_local(action: str, addresses: Sequence[str], interface: str) -> int:
    """``link-local up|down``: one line per address on stdout, problems on stderr."""
    change = add_addresses if action == "up" else remove_addresses
    try:
        results = change(addresses or [str(CAPABILITY_ADDRESS)], interface)
    except LinkLocalError as exc:
        print(f"credential-sidecar: {exc}", file=sys.stderr)
        bad_input = isinstance(exc, (LinkLocalAddressError, InterfaceNotFoundError))
        return EXIT_CONFIG if bad_input else EXIT_LINK_LOCAL
    for result in results:
        if result.outcome is Outcome.IPV6_DISABLED:
            print(f"credential-sidecar: warning: {result.describe()}", file=sys.stderr)
        else:
            print(result.describe())
    if action == "up" and not interface_is_up(interface):
        print(
            f"credential-sidecar: warning: {interface} is down, so nothing reaches these "
            f"addresses until `ip link set {interface} up`",
            file=sys.stderr,
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "link-local":
        sys.exit(link_local(args.action, args.address or [], args.interface))
    if args.command == "node-agent":
        flags = {s.name: getattr(args, s.name, None) for s in NODE_SETTINGS}
        sys.exit(_run(run_node_agent(flags, os.environ)))
    if args.command == "dev-pod-token":
        sys.exit(dev_pod_token(args.issuer, args.namespace, args.service_account, args.ttl))
    flags = {name: getattr(args, name, None) for name in SETTINGS_BY_NAME}
    if args.command == "inspect":
        sys.exit(asyncio.run(inspect_token(flags, os.environ, args.trust_policy)))
    if args.command == "health":
        problem = probe_ready(as_text(resolve_raw(flags, os.environ)["listen"][0]))
        if problem:
            print(f"credential-sidecar: not ready: {problem}", file=sys.stderr)
        sys.exit(EXIT_UNHEALTHY if problem else EXIT_OK)
    child = list(getattr(args, "child", None) or [])
    if child[:1] == ["--"]:
        child = child[1:]
    if args.command == "exec" and not child:
        build_parser().error("exec needs a command: credential-sidecar exec [flags] -- COMMAND")
    quiet = EXEC_DEFAULTS if args.command in ("exec", "credentials") else None
    raw = resolve_raw(flags, os.environ, defaults=quiet)
    # Provisional logging until the configuration is validated (it may name another format).
    fmt = raw["log_format"][0] if raw["log_format"][0] in ("text", "json") else "text"
    level = raw["log_level"][0] if raw["log_level"][0] in LOG_LEVELS else "info"
    configure_logging(fmt or "text", level or "info")
    if args.command == "exec":
        sys.exit(_run(exec_child(flags, os.environ, child, args.wait)))
    if args.command == "credentials":
        sys.exit(print_credentials(flags, os.environ, args.format, args.url, args.wait))
    sys.exit(_run(serve(flags, os.environ)))


def _run(main: Coroutine[Any, Any, _T]) -> _T | int:
    try:
        return asyncio.run(main)
    except KeyboardInterrupt:  # a second Ctrl-C before handlers were installed
        return EXIT_OK
    except Exception:
        log.exception("credential-sidecar failed unexpectedly", extra={"event": "crashed"})
        return EXIT_FAILURE


def _dev_region() -> str:
    from sidecar.devmode.environment import DEV_REGION

    return DEV_REGION


def node_agent_instructions(agent: RunningAgent, cluster: DevCluster) -> str:
    from sidecar.devmode.environment import DEV_REGION

    url = agent.urls[0]
    mint = (
        f"credential-sidecar dev-pod-token --issuer {cluster.issuer_url} "
        "--namespace payments --service-account api"
    )
    return "\n".join(
        [
            "",
            "node agent dev mode: two service accounts, two roles "
            f"({cluster.associations}). Be a pod of payments/api:",
            "",
            f"  {mint} > /tmp/pod-token",
            f"  AWS_CONTAINER_CREDENTIALS_FULL_URI={url} \\",
            "  AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE=/tmp/pod-token \\",
            f"  AWS_ENDPOINT_URL_STS={cluster.sts_url} AWS_REGION={DEV_REGION} "
            f"AWS_DEFAULT_REGION={DEV_REGION} \\",
            "  aws sts get-caller-identity",
            "",
            "and of builds/ci: --namespace builds --service-account ci (another role).",
            "",
        ]
    )


async def run_node_agent(
    flags: Mapping[str, str | Sequence[str] | None], environ: Mapping[str, str]
) -> int:
    from sidecar.devmode.pods import dev_cluster
    from sidecar.node_agent import add_listen_addresses, running_node_agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        cluster = None
        try:
            if flags.get("dev") or environ.get("SIDECAR_NODE_DEV"):
                cluster = await stack.enter_async_context(dev_cluster())
            config = load_node_agent_config(
                flags, environ, cluster.overrides() if cluster else None
            )
        except ConfigError as exc:
            print(f"credential-sidecar node-agent: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        configure_logging(config.log_format, config.log_level)
        try:
            if config.setup_addresses:
                await add_listen_addresses(config)
            agent = await stack.enter_async_context(running_node_agent(config))
        except LinkLocalError as exc:
            print(f"credential-sidecar node-agent: {exc}", file=sys.stderr)
            return EXIT_LINK_LOCAL
        except ConfigError as exc:
            print(f"credential-sidecar node-agent: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except ListenError as exc:
            print(f"credential-sidecar node-agent: {exc}", file=sys.stderr)
            return EXIT_LISTEN
        loop.add_signal_handler(signal.SIGHUP, agent.reload)
        if cluster is not None:
            print(node_agent_instructions(agent, cluster), flush=True)
        await stop.wait()
        log.info("signal received, shutting down", extra={"event": "signal"})
    return EXIT_OK


def dev_pod_token(issuer: str, namespace: str, account: str, ttl: float) -> int:
    """Print a pod token from the dev issuer (stdout: the token only)."""
    query = urllib.parse.urlencode(
        {"namespace": namespace, "service_account": account, "ttl": str(ttl)}
    )
    url = f"{issuer.rstrip('/')}/_dev/pod-token?{query}"
    host = urllib.parse.urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("credential-sidecar: --issuer must be the dev issuer on loopback", file=sys.stderr)
        return EXIT_CONFIG
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            # No newline: like a projected token file (botocore refuses one in a header).
            print(response.read(64 * 1024).decode(), end="", flush=True)
    except OSError as exc:
        print(
            f"credential-sidecar: the dev issuer at {issuer} did not answer: {exc}", file=sys.stderr
        )
        return EXIT_CONFIG
    return EXIT_OK
