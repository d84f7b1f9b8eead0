"""Spawners that start a project workspace only when the control plane's access gate says yes.

The gate is asked inside ``start()``, the one path every start takes (the spawn page, the hub REST
API, a restart after the hub itself restarted), so no route around it exists. One named server per
(user, project): the server name is the project id, the default server is refused, and a server is
bound to the name it first started with so a rename cannot point it at another project.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
from typing import Any
from urllib.parse import urlsplit

from jupyterhub.spawner import LocalProcessSpawner
from traitlets import Any as AnyTrait
from traitlets import Bool, Float, HasTraits, Instance, Integer, Unicode, default

from jupyter import fs_sandbox, sandbox
from jupyter.controlplane import ControlPlane, SpawnGrant, WorkspaceRefused, expected_server_name

LOOPBACK_HOSTS = {"127.0.0.1", "localhost"}
PROJECT_URL_VAR = "TRE_PROJECT_URL"
STATE_KEY = "tre"


def project_group(grant: SpawnGrant) -> str:
    """The unix group that reads the project's extract: the control plane's name for it when it sends one."""
    return grant.unix_group or sandbox.project_group_name(grant.project_id)


class TreSpawnerMixin(HasTraits):
    """The gate, the project binding and the refusals shared by the local and Kubernetes spawners.

    Mix in before the JupyterHub spawner class; subclasses prepare the workspace in ``tre_prepare``.
    """

    control_plane = Instance(ControlPlane)
    tre_grant: SpawnGrant | None = None
    tre_bound_server: str = ""

    @default("control_plane")
    def _default_control_plane(self) -> ControlPlane:
        return ControlPlane(parent=self)

    async def tre_authorise(self) -> SpawnGrant:
        """Refuse unless this is a project server, still under its first name, and the gate allows it now."""
        name = self.name  # type: ignore[attr-defined]
        if not name:
            raise WorkspaceRefused(
                "Workspaces belong to projects: open yours from the project page of the TRE control plane."
            )
        if self.tre_bound_server and self.tre_bound_server != name:
            raise WorkspaceRefused(
                f"This workspace was created for {self.tre_bound_server!r} and cannot be started as {name!r}."
            )
        try:
            grant = await self.control_plane.authorise_spawn(self.user.name, name)  # type: ignore[attr-defined]
            if expected_server_name(grant.project_id) != name:
                raise WorkspaceRefused("The access gate answered for a different project; nothing was started.")
        except Exception:
            if not self.tre_bound_server:
                # Never started: the refusal must not leave a stopped server behind on the person's hub page.
                asyncio.get_running_loop().create_task(self._tre_forget_refused())
            raise
        self.tre_grant = grant
        self.tre_bound_server = name
        self.log.info(  # type: ignore[attr-defined]
            "Access gate allowed %s/%s (project %s, account %s)",
            self.user.name,
            name,
            grant.project_id,
            grant.unix_user,
        )
        return grant

    async def _tre_forget_refused(self, timeout: float = 60.0) -> None:
        """Once the hub has finished the refused spawn, remove the named server it created for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.active:  # type: ignore[attr-defined]
            if loop.time() > deadline:
                return
            await asyncio.sleep(0.1)
        user, name = self.user, self.name  # type: ignore[attr-defined]
        if self.tre_bound_server or user.spawners.get(name) is not self:
            return  # started meanwhile, or already gone
        orm_spawner = self.orm_spawner  # type: ignore[attr-defined]
        await user._delete_spawner(self)
        user.spawners.pop(name, None)
        user.db.delete(orm_spawner)
        user.db.commit()
        self.log.info("Removed %s's server %r left by a refused start", user.name, name)  # type: ignore[attr-defined]

    def tre_env(self) -> dict[str, str]:
        """What the workspace learns about its project (the gate's variables, and where its folders are)."""
        grant = self.tre_grant
        if grant is None:
            return {}
        env = dict(grant.env)
        env.setdefault("TRE_PROJECT_ID", grant.project_id)
        env.setdefault("TRE_PROJECT_NAME", grant.project_id)
        # For the person's browser (JupyterLab's link back), never rewritten to the workspace's gateway.
        env[PROJECT_URL_VAR] = f"{self.control_plane.url.rstrip('/')}/projects/{grant.project_id}"
        env["TRE_EXTRACT_DIR"] = grant.extract_path
        env["TRE_OUTPUTS_DIR"] = grant.outputs_path
        return env

    async def rename(self, old_name: str, new_name: str) -> None:
        """A server's name is its project: renaming would change which project's data it opens."""
        raise WorkspaceRefused("Workspaces cannot be renamed: each one belongs to exactly one project.")

    def tre_state(self) -> dict[str, Any]:
        return {"bound_server": self.tre_bound_server}

    def tre_load_state(self, state: dict[str, Any]) -> None:
        self.tre_bound_server = str(state.get("bound_server") or "")


class TreLocalSpawner(TreSpawnerMixin, LocalProcessSpawner):
    """One process per workspace on this machine, under its own unix account and network namespace."""

    runtime_prefix = Unicode(
        "/opt/tre-workspace",
        help="The workspace runtime built by infra/jupyterhub/build-workspace-runtime.sh.",
    ).tag(config=True)
    home_root = Unicode(
        "/var/lib/tre/workspaces", help="Where each workspace account's private home (0700) is created."
    ).tag(config=True)
    insecure_dev = Bool(
        False,
        help="Allow starting workspaces without root, i.e. without separate accounts, read-only data or "
        "network isolation. For a developer's laptop only; every start logs what is missing.",
    ).tag(config=True)
    egress_isolation = Bool(True, help="Give every workspace its own network namespace (root only).").tag(config=True)
    egress_prefix = Unicode("tre", help="Names this hub's namespaces, veths and nftables table.").tag(config=True)
    egress_pool = Unicode("10.231.0.0/16", help="Addresses for the workspace veth pairs (/30 each).").tag(config=True)
    fs_sandbox = Bool(
        True,
        help="Run every workspace in its own mount and PID namespace (bubblewrap; root only): it sees the "
        "runtime, its home, its outputs and its project's extract, nothing else on the machine.",
    ).tag(config=True)
    bwrap_path = Unicode("bwrap", help="The bubblewrap executable (Debian package 'bubblewrap').").tag(config=True)
    ready_poll_seconds = Float(
        0.05,
        help="start() returns once the server listens, checking this often (0: return at once and leave the "
        "wait to JupyterHub, whose checks back off to 5 s apart, so a server up after 3 s was seen after 3-8 s).",
    ).tag(config=True)
    start_nice = Integer(
        -10,
        help="While a server starts (until it listens, at most start_boost_seconds), the nice of its session "
        "(autogroup) and of its processes: a negative value gives the start a larger share of the CPU than each "
        "busy session on the host (others' kernels, tests); both are put back to 0 before anyone can reach the "
        "server. 0 (or more): no change.",
    ).tag(config=True)
    start_boost_seconds = Float(
        30.0, help="The longest a starting server keeps the larger share, even if it has not listened yet."
    ).tag(config=True)
    make_preexec_fn = AnyTrait()

    account: sandbox.Account | None = None
    egress: sandbox.Egress | None = None

    @default("cmd")
    def _default_cmd(self) -> list[str]:
        return [os.path.join(self.runtime_prefix, "bin", "jupyterhub-singleuser")]

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        # Not the hub's PATH or PYTHONPATH: they may point into folders the workspace must not use.
        return ["LANG", "LC_ALL"]

    @default("make_preexec_fn")
    def _default_preexec(self) -> Any:
        return lambda _name: self._preexec

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> tuple[str, int]:
        grant = await self.tre_authorise()
        if os.geteuid() == 0:
            await self._prepare_as_root(grant)
        else:
            self._prepare_insecure(grant)
        self._netns_fd = sandbox.open_netns(self.egress.netns) if self.egress else None
        files: dict[str, int] = {}
        try:
            if os.geteuid() == 0:
                files = self._wrap_in_sandbox(grant)
            ip, port = await super().start()
        except BaseException:
            await self._release_network()  # nothing started: leave nothing behind on the host
            raise
        finally:
            for descriptor in files.values():
                os.close(descriptor)
            if self._netns_fd is not None:
                os.close(self._netns_fd)
                self._netns_fd = None
        session = self._starting_session()
        try:
            await self._until_listening(ip, port, session)
        finally:
            if session is not None:
                session.release()
        return ip, port

    def _boost_start(self) -> bool:
        """Whether this start gets a larger CPU share: as root, for a workspace account, and only when the
        spawner waits for the port itself (the wait is what puts the share back)."""
        return (
            self.start_nice < 0
            and self.ready_poll_seconds > 0
            and os.geteuid() == 0
            and self.account is not None
            and self.account.uid != 0
        )

    def _starting_session(self) -> sandbox.StartingSession | None:
        """The sandbox's session, to give its start a larger CPU share until it listens."""
        if self.proc is None or not self._boost_start() or self.account is None:
            return None
        return sandbox.StartingSession(self.account.uid, outer_session=self.proc.pid)

    async def _until_listening(self, ip: str, port: int, session: sandbox.StartingSession | None = None) -> None:
        """Return once the server accepts connections, or has exited, or start_timeout has passed.

        JupyterHub then checks the server over HTTP once and finds it up. Only ever a wait: any failure is
        left to JupyterHub's own check, which reports it as it always did. Meanwhile the starting session,
        once it exists, gets ``start_nice`` for at most ``start_boost_seconds``; the caller releases it.
        """
        if self.ready_poll_seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + self.start_timeout
        while loop.time() < deadline and self.proc is not None and self.proc.poll() is None:
            if session is not None:
                if loop.time() - began > self.start_boost_seconds:
                    session.release()
                    session = None
                elif session.nice == 0 and session.find() and session.set(self.start_nice):
                    self.log.debug("The start of %s has a larger CPU share (autogroup nice %d)",
                                   self._log_name, self.start_nice)
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), timeout=1)
            except (OSError, TimeoutError):
                await asyncio.sleep(self.ready_poll_seconds)
                continue
            writer.close()
            await writer.wait_closed()
            return

    def _wrap_in_sandbox(self, grant: SpawnGrant) -> dict[str, int]:
        """Make this start's command the single-user server inside bwrap; return the descriptors passed."""
        if self._plain_cmd is None:
            self._plain_cmd = list(self.cmd)
        self._private_binds = []
        if not self.fs_sandbox:
            self.log.warning("File-system sandbox is OFF for %s: the workspace sees the whole machine", self._log_name)
            self.cmd = list(self._plain_cmd)
            self.popen_kwargs = {key: value for key, value in self.popen_kwargs.items() if key != "pass_fds"}
            return {}
        bwrap = shutil.which(self.bwrap_path)
        if bwrap is None or self.account is None:
            self.log.error("Refusing to start %s: %r (bubblewrap) is not installed", self._log_name, self.bwrap_path)
            raise WorkspaceRefused(
                "This workspace host cannot isolate workspaces (its sandbox tool is missing), so it will not "
                "open them. Please tell the TRE administrators.",
                status_code=503,
            )
        group = project_group(grant)
        layout = fs_sandbox.SandboxLayout(
            runtime=self.runtime_prefix,
            home=self.account.home,
            account=self.account.name,
            uid=self.account.uid,
            gid=self.account.gid,
            extract=grant.extract_path,
            outputs=grant.outputs_path,
            project_group=group,
            project_gid=grp.getgrnam(group).gr_gid,
            extract_source=self._staging[0],
            outputs_source=self._staging[1],
        )
        self._private_binds = [(grant.extract_path, self._staging[0]), (grant.outputs_path, self._staging[1])]
        files: dict[str, int] = {}
        try:
            for target, text in fs_sandbox.generated_files(layout).items():
                read_end, write_end = os.pipe()
                files[target] = read_end
                with os.fdopen(write_end, "w") as writer:  # small: fits the pipe's buffer
                    writer.write(text)
        except BaseException:
            for descriptor in files.values():
                os.close(descriptor)
            raise
        self.cmd = [*fs_sandbox.bwrap_argv(layout, files, bwrap=bwrap), *self._plain_cmd]
        self.popen_kwargs = {**self.popen_kwargs, "pass_fds": tuple(files.values())}
        return files

    async def stop(self, now: bool = False) -> None:
        await super().stop(now=now)
        if os.geteuid() == 0 and self.account is not None and self.account.uid != os.geteuid():
            left = await sandbox.end_processes_of(self.account)
            if left:
                self.log.error("%d processes of %s outlived its stop", len(left), self._log_name)
        await self._release_network()

    async def _release_network(self) -> None:
        """Delete the workspace's veth and namespace, and the hub's host table if it was the last."""
        if self.egress is not None:
            async with sandbox.HOST_RULES_LOCK:
                await sandbox.delete_egress(self.egress)
                self.egress = None
                if os.geteuid() == 0:
                    await sandbox.delete_host_rules_if_unused(self._egress_plan(ports=()))

    async def delete_forever(self) -> None:
        """The server is removed (closure, or the person is deleted): its unix account and home go too."""
        if os.geteuid() != 0 or self.account is None or self.account.uid == os.geteuid():
            return
        await sandbox.remove_account(self.account, self.home_root, self._outputs_path)
        self.log.info("Removed the unix account and home of %s", self._log_name)
        self.account = None

    def _preexec(self) -> None:
        """In the child, still root: join the namespace first, then give up root for good."""
        if self._netns_fd is not None:
            sandbox.enter_netns(self._netns_fd)
        if self._private_binds:
            sandbox.bind_privately(self._private_binds)
        if os.geteuid() == 0 and self.account is not None:
            if self._boost_start():
                sandbox.raise_own_priority(self.start_nice)
            sandbox.drop_to(self.account)
        elif self.account is not None:
            os.chdir(self.account.home)

    async def _prepare_as_root(self, grant: SpawnGrant) -> None:
        group = project_group(grant)
        self.account = await sandbox.ensure_account(grant.unix_user, group, self.home_root)
        self._outputs_path = grant.outputs_path
        self._staging = sandbox.staging_dirs(self.home_root, self.account)
        sandbox.share_extract_read_only(grant.extract_path, group)
        sandbox.prepare_outputs(grant.outputs_path, self.account)
        sandbox.link_into_home(self.account, "extract", grant.extract_path)
        sandbox.link_into_home(self.account, "outputs", grant.outputs_path)
        if not self.egress_isolation:
            self.log.warning("Egress isolation is OFF for %s: the workspace can reach any network", self._log_name)
            return
        plan = self._egress_plan(ports=self._allowed_ports())
        async with sandbox.HOST_RULES_LOCK:
            await sandbox.ensure_host_rules(plan)
            if self.egress is not None:
                await sandbox.delete_egress(self.egress)
            self.egress = await sandbox.create_egress(plan, grant.unix_user)
        self.ip = self.egress.workspace_ip

    def _egress_plan(self, ports: tuple[int, ...]) -> sandbox.EgressPlan:
        return sandbox.EgressPlan(prefix=self.egress_prefix, pool=self.egress_pool, ports=ports)

    def _prepare_insecure(self, grant: SpawnGrant) -> None:
        if not self.insecure_dev:
            self.log.error(
                "Refusing to start %s: the hub is not root, so the workspace would share the hub's unix "
                "account, could read every project's files and reach any network. Run the hub as root, "
                "or set TreLocalSpawner.insecure_dev = True on a developer machine.",
                self._log_name,
            )
            raise WorkspaceRefused(
                "This workspace host is not configured securely (no per-project isolation), so it will not "
                "open workspaces. Please tell the TRE administrators.",
                status_code=503,
            )
        self.log.warning(
            "INSECURE DEV MODE for %s: no separate unix account, extract NOT read-only, other projects' "
            "files readable, network egress NOT blocked.",
            self._log_name,
        )
        entry = pwd.getpwuid(os.geteuid())
        home = os.path.join(self.home_root, grant.unix_user)
        os.makedirs(home, mode=0o700, exist_ok=True)
        os.makedirs(grant.outputs_path, mode=0o700, exist_ok=True)
        self.account = sandbox.Account(entry.pw_name, entry.pw_uid, entry.pw_gid, home)
        for link_name, target in (("extract", grant.extract_path), ("outputs", grant.outputs_path)):
            link = os.path.join(home, link_name)
            if not os.path.islink(link):
                os.symlink(target, link)
        self.ip = "127.0.0.1"

    def _allowed_ports(self) -> tuple[int, ...]:
        """The hub API and the output API: both must listen on this machine's loopback."""
        ports = []
        for url in (self.hub.api_url, self.tre_env().get("TRE_OUTPUT_API", "")):
            parts = urlsplit(url)
            if parts.hostname not in LOOPBACK_HOSTS or not parts.port:
                raise WorkspaceRefused(
                    f"The workspace network cannot be set up: {url!r} is not an http URL on this machine's "
                    "loopback with an explicit port.",
                    status_code=503,
                )
            ports.append(parts.port)
        return tuple(ports)

    # ----------------------------------------------------------------- environment and state

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        if self.account is not None:
            env["USER"] = self.account.name
            env["HOME"] = self.account.home
        env["SHELL"] = "/bin/bash"
        return env

    def get_env(self) -> dict[str, str]:
        env = super().get_env()
        env.update(self.tre_env())
        env["PATH"] = f"{self.runtime_prefix}/bin:/usr/local/bin:/usr/bin:/bin"
        if self.egress is not None:
            # Inside the namespace 127.0.0.1 is the workspace itself: reach the host through the veth.
            for port in self._allowed_ports():
                for host in LOOPBACK_HOSTS:
                    before, after = f"//{host}:{port}", f"//{self.egress.host_ip}:{port}"
                    env = {
                        key: value if key == PROJECT_URL_VAR else value.replace(before, after)
                        for key, value in env.items()
                    }
        return env

    def get_state(self) -> dict[str, Any]:
        state = super().get_state()
        tre = self.tre_state()
        if self.egress is not None:
            tre["egress"] = self.egress.to_state()
        if self.account is not None and os.geteuid() == 0:
            tre["account"] = self.account.name
            tre["outputs"] = self._outputs_path
        state[STATE_KEY] = tre
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        super().load_state(state)
        tre = state.get(STATE_KEY) or {}
        self.tre_load_state(tre)
        if tre.get("egress"):
            self.egress = sandbox.Egress.from_state(tre["egress"])
        if tre.get("account") and self.account is None:
            self.account = self._account_from_state(str(tre["account"]))
            self._outputs_path = str(tre.get("outputs") or "")

    def _account_from_state(self, name: str) -> sandbox.Account | None:
        """The workspace account a stored server used, if it still exists and is still ours."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            return None
        home = os.path.join(self.home_root, name)
        if entry.pw_uid == 0 or entry.pw_dir != home:
            return None
        return sandbox.Account(name, entry.pw_uid, entry.pw_gid, home)

    _netns_fd: int | None = None
    _plain_cmd: list[str] | None = None
    _staging: tuple[str, str] = ("", "")
    _private_binds: list[tuple[str, str]] = []  # noqa: RUF012 - replaced per start, never mutated
    _outputs_path: str = ""
