"""Build the hub's configuration from a few ``TRE_HUB_*`` environment variables.

``jupyter/jupyterhub_config.py`` calls :func:`configure` so ``jupyterhub -f jupyter/jupyterhub_config.py``
is the whole start command. Everything security-relevant is decided here rather than left to the
defaults: loopback only, no password login, named servers only, researchers without API tokens or
sharing, the idle culler, and the control plane's service account with just the scopes it needs.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
CONTROL_PLANE_SERVICE = "tre-control-plane"

# The default 'user' role expands to 'self', which includes 'tokens' (minting API tokens that outlive
# the control plane's decision) and 'users:shares' (handing a workspace to someone outside the
# project). Researchers keep only what the spawn page and their own server need.
RESEARCHER_SCOPES = ["read:users!user", "users:activity!user", "servers!user", "access:servers!user"]
# Stop (and at closure remove) any workspace when the access gate closes; list users to find them.
CONTROL_PLANE_SCOPES = ["admin:servers", "list:users", "read:users"]
CULLER_SCOPES = ["list:users", "read:users:activity", "read:servers", "delete:servers"]


@dataclass
class HubSettings:
    """Everything that differs between a developer's machine, a test and production."""

    state_dir: Path
    port: int = 8000
    # Unless set, the hub's API and the proxy's admin API sit beside the public port (8000: 8081 and
    # 8001), so a second instance given another public port needs no other port settings.
    hub_port: int = 0
    proxy_api_port: int = 0
    control_plane_url: str = "http://127.0.0.1:5000"
    service_token_file: str = ""
    control_plane_api_token_file: str = ""
    runtime_prefix: str = "/opt/tre-workspace"
    home_root: str = "/var/lib/tre/workspaces"
    insecure_dev: bool = False
    # The bubblewrap sandbox (ADR 0005); off only to measure what it costs (benchmarks/workspace_open.py).
    fs_sandbox: bool = True
    # How often the spawner checks that a starting server listens (seconds; 0: JupyterHub's own backoff,
    # which sleeps up to 5 s between checks). Docs: workspaces.md, "Opening fast".
    ready_poll_seconds: float = 0.05
    # The autogroup nice of a workspace's session while its server starts (ADR 0028; 0: an equal share).
    start_nice: int = -10
    # Unless set, derived from the state folder, so two instances on one machine never share a
    # nftables table, namespace names or veth names.
    egress_prefix: str = ""
    egress_pool: str = "10.231.0.0/16"
    named_server_limit: int = 10
    cull_idle_seconds: int = 3600
    proxy_command: list[str] = field(default_factory=list)
    # The control plane's instance folder when ``tre run`` started the hub (TRE_INSTANCE_PATH). The hub's
    # services get it in their environment, which JupyterHub otherwise empties, so that ``tre run``'s
    # straggler sweep finds a service a hub killed abruptly left behind (tre/cli/processes.py).
    instance_path: str = ""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> HubSettings:
        env = dict(os.environ if env is None else env)
        state_dir = Path(env.get("TRE_HUB_STATE_DIR", str(REPO_ROOT / "instance" / "jupyterhub")))
        settings = cls(state_dir=state_dir)
        integers = {
            "TRE_HUB_PORT": "port",
            "TRE_HUB_API_PORT": "hub_port",
            "TRE_HUB_PROXY_API_PORT": "proxy_api_port",
            "TRE_HUB_NAMED_SERVER_LIMIT": "named_server_limit",
            "TRE_HUB_CULL_IDLE_SECONDS": "cull_idle_seconds",
            "TRE_HUB_START_NICE": "start_nice",
        }
        for name, attr in integers.items():
            if name in env:
                setattr(settings, attr, int(env[name]))
        texts = {
            "TRE_CONTROL_PLANE_URL": "control_plane_url",
            "TRE_HUB_SERVICE_TOKEN_FILE": "service_token_file",
            "TRE_HUB_CONTROL_PLANE_API_TOKEN_FILE": "control_plane_api_token_file",
            "TRE_WORKSPACE_RUNTIME": "runtime_prefix",
            "TRE_WORKSPACE_HOME_ROOT": "home_root",
            "TRE_HUB_EGRESS_PREFIX": "egress_prefix",
            "TRE_HUB_EGRESS_POOL": "egress_pool",
        }
        for name, attr in texts.items():
            if env.get(name):
                setattr(settings, attr, env[name])
        settings.instance_path = env.get("TRE_INSTANCE_PATH", "")
        settings.insecure_dev = env.get("TRE_HUB_INSECURE_DEV", "").lower() in {"1", "true", "yes"}
        settings.fs_sandbox = env.get("TRE_HUB_FS_SANDBOX", "").lower() not in {"0", "false", "no", "off"}
        if env.get("TRE_HUB_READY_POLL_SECONDS"):
            settings.ready_poll_seconds = float(env["TRE_HUB_READY_POLL_SECONDS"])
        if env.get("TRE_HUB_PROXY_CMD"):
            settings.proxy_command = [env["TRE_HUB_PROXY_CMD"]]
        if not settings.service_token_file:
            settings.service_token_file = str(state_dir / "control_plane_service_token")
        if not settings.control_plane_api_token_file:
            settings.control_plane_api_token_file = str(state_dir / "hub_api_token_for_control_plane")
        return settings.with_defaults()

    def with_defaults(self) -> HubSettings:
        """Fill in what follows from other settings: the two inner ports and the egress prefix."""
        self.hub_port = self.hub_port or self.port + 81
        self.proxy_api_port = self.proxy_api_port or self.port + 1
        self.egress_prefix = self.egress_prefix or instance_prefix(self.state_dir)
        return self


def instance_prefix(state_dir: Path) -> str:
    """A short name for this hub's host objects (``w`` and 5 hex digits of its state folder's path)."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()
    return f"w{digest[:5]}"


def secret_from_file(path: Path, create: bool = True) -> str:
    """Read a secret, creating it (0600, random) on first use so no default secret ever exists."""
    if not path.exists():
        if not create:
            raise FileNotFoundError(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path} must not be readable by group or others (chmod 600)")
    return path.read_text(encoding="utf-8").strip()


def default_proxy_command() -> list[str]:
    local = REPO_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
    return [str(local)] if local.exists() else ["configurable-http-proxy"]


def control_plane_service(token_file: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hub service entry and role that let the control plane stop and remove workspaces."""
    service = {"name": CONTROL_PLANE_SERVICE, "api_token": secret_from_file(token_file)}
    role = {
        "name": "tre-control-plane",
        "description": "Stops and removes workspaces when the TRE access gate closes.",
        "scopes": CONTROL_PLANE_SCOPES,
        "services": [CONTROL_PLANE_SERVICE],
    }
    return service, role


def configure(c: Any, settings: HubSettings | None = None) -> HubSettings:
    """Apply the TRE's hub configuration to a traitlets config object ``c``."""
    settings = (settings or HubSettings.from_env()).with_defaults()
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)

    c.JupyterHub.bind_url = f"http://127.0.0.1:{settings.port}"
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{settings.hub_port}"
    c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(state / "jupyterhub.pid")
    c.JupyterHub.cleanup_servers = True

    c.JupyterHub.proxy_class = "jupyterhub.proxy.ConfigurableHTTPProxy"
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings.proxy_api_port}"
    c.ConfigurableHTTPProxy.auth_token = secret_from_file(state / "proxy_auth_token")
    c.ConfigurableHTTPProxy.command = settings.proxy_command or default_proxy_command()
    c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
    c.ConfigurableHTTPProxy.should_start = True

    c.JupyterHub.authenticator_class = "jupyter.authenticator.TreAuthenticator"
    c.Authenticator.admin_users = set()
    c.Authenticator.enable_auth_state = False
    c.ControlPlane.url = settings.control_plane_url
    c.ControlPlane.service_token_file = settings.service_token_file

    c.JupyterHub.spawner_class = "jupyter.spawner.TreLocalSpawner"
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.named_server_limit_per_user = settings.named_server_limit
    c.JupyterHub.implicit_spawn_seconds = 0
    c.Spawner.default_url = "/lab"
    c.Spawner.disable_user_config = True
    c.Spawner.start_timeout = 120
    c.Spawner.http_timeout = 60
    c.TreLocalSpawner.runtime_prefix = settings.runtime_prefix
    c.TreLocalSpawner.home_root = settings.home_root
    c.TreLocalSpawner.insecure_dev = settings.insecure_dev
    c.TreLocalSpawner.fs_sandbox = settings.fs_sandbox
    c.TreLocalSpawner.ready_poll_seconds = settings.ready_poll_seconds
    c.TreLocalSpawner.start_nice = settings.start_nice
    c.TreLocalSpawner.egress_prefix = settings.egress_prefix
    c.TreLocalSpawner.egress_pool = settings.egress_pool

    service, service_role = control_plane_service(Path(settings.control_plane_api_token_file))
    culler = {
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={settings.cull_idle_seconds}",
            "--cull-every=60",
        ],
    }
    if settings.instance_path:
        culler["environment"] = {"TRE_INSTANCE_PATH": settings.instance_path}
    c.JupyterHub.services = [service, culler]
    c.JupyterHub.load_roles = [
        {
            "name": "user",
            "description": "Researchers: their own project servers only",
            "scopes": RESEARCHER_SCOPES,
        },
        service_role,
        {"name": "idle-culler", "scopes": CULLER_SCOPES, "services": ["idle-culler"]},
    ]
    c.JupyterHub.template_paths = [str(REPO_ROOT / "jupyter" / "templates")]
    c.JupyterHub.template_vars = {"tre_control_plane_url": settings.control_plane_url.rstrip("/")}
    c.JupyterHub.tornado_settings = {
        "headers": {"Content-Security-Policy": "frame-ancestors 'self'", "Referrer-Policy": "no-referrer"},
    }
    return settings


def configure_kubernetes(c: Any) -> None:
    """The Zero-to-JupyterHub side (``hub.extraConfig`` in infra/jupyterhub/values.yaml).

    The chart owns the proxy, the database, the culler and the roles (``hub.loadRoles``, which mirror
    RESEARCHER_SCOPES and CONTROL_PLANE_SCOPES and are checked against them by a test); this sets only
    what is ours: the authenticator, the gate-asking spawner, and named servers.
    """
    c.JupyterHub.authenticator_class = "jupyter.authenticator.TreAuthenticator"
    c.Authenticator.admin_users = set()
    c.ControlPlane.url = os.environ.get("TRE_CONTROL_PLANE_URL", "http://tre-control-plane:5000")
    c.ControlPlane.service_token_file = os.environ.get(
        "TRE_HUB_SERVICE_TOKEN_FILE", "/etc/tre/hub-service-token/token"
    )
    c.JupyterHub.spawner_class = "jupyter.kubespawner.TreKubeSpawner"
    c.JupyterHub.allow_named_servers = True
    c.JupyterHub.implicit_spawn_seconds = 0
    c.Spawner.disable_user_config = True


def main() -> None:
    """``python -m jupyter.hub_config``: print the settings the hub would start with (no secrets)."""
    settings = HubSettings.from_env()
    for key, value in vars(settings).items():
        print(f"{key} = {value}")


if __name__ == "__main__":
    main()
