"""A cluster run as the official ``apache/age`` container (where a Docker engine exists).

The data directory ``<data_dir>/postgres`` is bind-mounted as the container's PGDATA
and the port is published on 127.0.0.1 only. The password reaches ``docker run``
through the environment, never the command line (which any local user can read).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Mapping

from heimdall_core.dbctl import bootstrap
from heimdall_core.dbctl.files import Layout, State
from heimdall_core.dbctl.model import DB_NAME, DB_ROLE, LISTEN_HOST, DbctlError, DbStatus, Method
from heimdall_core.dbctl.osutil import TOOL_ENV, run, succeeds
from heimdall_core.dbctl.scram import scram_sha256_verifier

IMAGE_ENV = "HMD_PG_DOCKER_IMAGE"
# PostgreSQL 17, like the chroot root: a data directory can move between the two.
IMAGE_DEFAULT = "apache/age:release_PG17_1.6.0"
CONTAINER_PORT = 5432
CONTAINER_PGDATA = "/var/lib/postgresql/data"
CONTAINER_PREFIX = "heimdall-pg-"
CONTAINER_KEY_HEX_CHARS = 12
SHM_SIZE = "256m"
INFO_TIMEOUT_S = 10.0
TOOL_TIMEOUT_S = 120.0  # docker run may pull the image first
READY_TIMEOUT_S = 90.0
READY_POLL_S = 0.5
STOP_TIMEOUT_S = 30
LOG_TAIL_LINES = 40
SCRAM_SALT_BYTES = 16
# What the docker client needs from the caller's environment to find its engine.
CLIENT_ENV_PREFIXES = ("DOCKER_",)
CLIENT_ENV_NAMES = ("HOME", "XDG_RUNTIME_DIR")


def docker_client() -> str | None:
    """The docker client found on the caller's PATH, as an absolute path.

    Resolved once here because the tools themselves run with a fixed PATH.
    """
    return shutil.which("docker")


def docker_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    client = docker_client()
    return client is not None and succeeds([client, "info"], timeout_s=INFO_TIMEOUT_S)


def container_name(layout: Layout) -> str:
    key = hashlib.sha256(str(layout.data_dir.absolute()).encode()).hexdigest()
    return CONTAINER_PREFIX + key[:CONTAINER_KEY_HEX_CHARS]


def image() -> str:
    return os.environ.get(IMAGE_ENV) or IMAGE_DEFAULT


def _client_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(TOOL_ENV)
    env.update(
        (k, v)
        for k, v in os.environ.items()
        if k.startswith(CLIENT_ENV_PREFIXES) or k in CLIENT_ENV_NAMES
    )
    env.update(extra or {})
    return env


def run_argv(client: str, name: str, layout: Layout, port: int) -> list[str]:
    """``docker run`` for a fresh container; the password comes from the environment."""
    return [
        client, "run", "--detach", "--name", name,
        "--label", f"io.heimdall.data-dir={layout.data_dir.absolute()}",
        "--publish", f"{LISTEN_HOST}:{port}:{CONTAINER_PORT}",
        "--shm-size", SHM_SIZE,
        "--env", f"POSTGRES_USER={DB_ROLE}",
        "--env", f"POSTGRES_DB={DB_NAME}",
        "--env", "POSTGRES_PASSWORD",
        "--env", "POSTGRES_INITDB_ARGS=--auth-host=scram-sha-256 --encoding=UTF8",
        "--env", "POSTGRES_HOST_AUTH_METHOD=scram-sha-256",
        "--volume", f"{layout.pgdata.absolute()}:{CONTAINER_PGDATA}",
        image(),
        "postgres", "-c", "shared_preload_libraries=age",
        *(arg for name, value in bootstrap.TUNING for arg in ("-c", f"{name}={value}")),
    ]


class DockerBackend:
    method: Method = "docker"

    def __init__(self, layout: Layout) -> None:
        client = docker_client()
        if client is None:
            raise DbctlError("the docker client is not on PATH")
        self.client = client
        self.layout = layout
        self.name = container_name(layout)

    def _docker(self, *args: str, what: str, stdin_text: str | None = None) -> str:
        return run(
            [self.client, *args], what=what, timeout_s=TOOL_TIMEOUT_S,
            stdin_text=stdin_text, env=_client_env(),
        )

    def running_pid(self) -> int | None:
        try:
            out = self._docker(
                "inspect", "--format", "{{.State.Running}} {{.State.Pid}}", self.name,
                what="docker inspect",
            ).split()
        except DbctlError:
            return None  # no such container
        return int(out[1]) if len(out) == 2 and out[0] == "true" and out[1].isdigit() else None

    def status(self, state: State) -> DbStatus:
        pid = self.running_pid()
        pgdata = self.layout.pgdata
        if pid is None:
            return DbStatus(False, pgdata, f"stopped (container {self.name})", "docker", state.port)
        detail = f"running (container {self.name}, {image()})"
        return DbStatus(True, pgdata, detail, "docker", state.port, pid)

    def state(self, port: int) -> State:
        return State(method="docker", port=port, container=self.name)

    def start(self, port: int, password: str) -> None:
        self.layout.pgdata.mkdir(mode=0o700, exist_ok=True)
        # A stopped container may carry an old port or image: replace it (data is on the host).
        succeeds([self.client, "rm", "--force", self.name], timeout_s=TOOL_TIMEOUT_S)
        run(
            run_argv(self.client, self.name, self.layout, port), what="docker run", timeout_s=TOOL_TIMEOUT_S,
            env=_client_env({"POSTGRES_PASSWORD": password}),
        )
        self._wait_ready()
        verifier = scram_sha256_verifier(password, os.urandom(SCRAM_SALT_BYTES))
        self._docker(
            "exec", "-i", self.name, "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-U", DB_ROLE, "-d", DB_NAME,
            what="setting the password and creating the AGE extension",
            stdin_text=bootstrap.role_password_sql(verifier) + bootstrap.age_extension_sql(),
        )

    def _wait_ready(self) -> None:
        # The image's entrypoint first runs a socket-only server to initialize; asking
        # over TCP waits for the real one.
        probe = [self.client, "exec", self.name, "pg_isready", "-q", "-h", LISTEN_HOST,
                 "-U", DB_ROLE, "-d", DB_NAME]
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if succeeds(probe, timeout_s=INFO_TIMEOUT_S):
                return
            if self.running_pid() is None:
                break
            time.sleep(READY_POLL_S)
        try:
            logs = self._docker("logs", "--tail", str(LOG_TAIL_LINES), self.name, what="docker logs")
        except DbctlError as e:
            logs = str(e)
        raise DbctlError(f"container {self.name} did not become ready:\n{logs}")

    def stop(self) -> None:
        if self.running_pid() is not None:
            self._docker("stop", "--time", str(STOP_TIMEOUT_S), self.name, what="docker stop")
        succeeds([self.client, "rm", "--force", self.name], timeout_s=TOOL_TIMEOUT_S)
