"""The Capsule Manager command's start-up and operation, each through ``trustflow
capsule-manager`` in a subprocess on 127.0.0.1: log levels scoped to the project's loggers,
private modes of the data directory and database, one CM per port, and storage-URL errors that
name the problem without the password."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trustflow_core.attestation import ra_user_data
from trustflow_core.manager import get_plugin_manager
from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
    capsule_manager_pb2 as cm_pb2,
)
from trustflow_core.registry import ATTESTER, backend_class
from trustflow_core.roles.capsule_manager_client.client import (
    CapsuleManagerClient,
    CapsuleManagerError,
)
from trustflow_core.roles.capsule_manager_client.keyexchange import ephemeral_credentials
from trustflow_core.roles.capsule_manager_protocol.reports import report_to_pb
from trustflow_core.testing.fixtures import free_port
from trustflow_core.wire import serialize_canonical

TRUSTFLOW = str(Path(sys.executable).parent / "trustflow")
LISTENING = re.compile(r"capsule-manager listening on 127\.0\.0\.1:(\d+)")


class CM:
    """``trustflow capsule-manager`` in a subprocess, its stderr in a file (a debug log may be
    large; a file never blocks the server)."""

    def __init__(self, env: dict[str, str], data_dir: Path, *args: str) -> None:
        self.log = data_dir.parent / f"{data_dir.name}.stderr"
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [TRUSTFLOW, "capsule-manager", "--plat", "sim", "--data-dir", str(data_dir), *args],
                env=env,
                stderr=err,
                stdout=subprocess.DEVNULL,
            )
        self.port = 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_listening(self, timeout: float = 60) -> CM:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = LISTENING.search(self.output())
            if found:
                self.port = int(found.group(1))
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}: {self.output()}")
            time.sleep(0.1)
        raise AssertionError(f"not listening after {timeout} s: {self.output()}")

    def exit_code(self, timeout: float = 60) -> int:
        """Wait for the process to end by itself (a CM that keeps running fails the test)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise AssertionError(f"still running after {timeout} s: {self.output()}") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> CM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def grant_and_get_keys(target: str, times: int) -> None:
    """An owner stores a key with a CEL-constrained rule; a SIM-attested app gets the key
    ``times`` times (each request evaluates the rule's constraints)."""
    pm = get_plugin_manager()
    owner, app = ephemeral_credentials("owner", key_size=2048), ephemeral_credentials("app")
    uuid = "log-" + os.urandom(4).hex()
    async with CapsuleManagerClient(target, pm=pm) as client:
        await client.create_data_keys(owner, [(uuid, base64.b64encode(os.urandom(16)).decode())])
        rule = cm_pb2.Rule(rule_id="r", grantee_party_ids=[app.party_id], columns=["*"])
        rule.op_constraints.add(op_name="op", constraints=['r.op_name.startsWith("o")'])
        rule.global_constraints.append('r.env.tee.platform == "sim" && size(r.scope) > 0')
        await client.create_data_policy(owner, "default", uuid, [rule])
        rr = cm_pb2.ResourceRequest(initiator_party_id=app.party_id, scope="default", op_name="op")
        rr.resources.add(resource_uri=uuid)
        attester = backend_class(pm, ATTESTER, "sim").from_settings()
        digest = ra_user_data(app.chain_pems[0].encode(), serialize_canonical(rr))
        report = report_to_pb(await attester.generate(digest))
        for _ in range(times):
            keys = await client.get_data_keys(app, rr, report)
            assert [k.resource_uri for k in keys] == [uuid]
        rr.op_name = "other"  # the constraint refuses: evaluated, not just looked up
        digest = ra_user_data(app.chain_pems[0].encode(), serialize_canonical(rr))
        report = report_to_pb(await attester.generate(digest))
        with pytest.raises(CapsuleManagerError):
            await client.get_data_keys(app, rr, report)


# ---- finding 8: --log-level debug is the project's, not every library's -------------------


def test_debug_level_logs_the_project_not_the_cel_library(
    sim_env: dict[str, str], tmp_path: Path
) -> None:
    with CM(sim_env, tmp_path / "cm", "--port", "0", "--log-level", "debug") as cm:
        cm.wait_listening()
        asyncio.run(grant_and_get_keys(cm.target, 3))
    lines = cm.output().splitlines()
    library = [line for line in lines if "celpy" in line or "sqlalchemy" in line]
    assert library == [], (len(library), library[:3])
    served = [line for line in lines if "|get_data_keys|" in line]
    assert len(served) == 4, lines[-20:]  # the project's monitor lines (INFO)
    debug = [line for line in lines if "DEBUG" in line and "capsule_manager.server" in line]
    assert any("storage" in line for line in debug), lines[:10]  # and its DEBUG lines


def test_log_level_for_names_a_library_logger(sim_env: dict[str, str], tmp_path: Path) -> None:
    args = ["--port", "0", "--log-level", "warning", "--log-level-for", "celpy=debug"]
    log_file = tmp_path / "cm.log"
    with CM(sim_env, tmp_path / "cm", *args, "--log-path", str(log_file)) as cm:
        cm.wait_listening()
        asyncio.run(grant_and_get_keys(cm.target, 1))
    text = log_file.read_text()
    assert "[DEBUG] [celpy" in text
    assert "|get_data_keys|" not in text  # the project's INFO lines stay off at warning


# ---- finding 15: the storage URL's password is never shown; a missing driver names the extra


def run_cm(env: dict[str, str], *args: str, block: str = "") -> subprocess.CompletedProcess[str]:
    """``trustflow capsule-manager ARGS`` to its end, in a Python whose imports of the
    comma-separated modules ``block`` fail (as when a driver is not installed)."""
    code = "import sys\n"
    code += "".join(f"sys.modules[{name!r}] = None\n" for name in block.split(",") if name)
    code += "from trustflow_core.cli import main\nmain(sys.argv[1:])\n"
    return subprocess.run(
        [sys.executable, "-c", code, "capsule-manager", "--plat", "none", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://user:s3cret@127.0.0.1:1/db",  # nothing listens on port 1
            "postgresql+psycopg://user:***@127.0.0.1:1/db is not usable: connection failed",
        ),
        (
            "postgresql+psycopg://user:s3cret@127.0.0.1:x/db",
            "postgresql+psycopg://user:***@127.0.0.1:x/db is not a valid SQLAlchemy URL",
        ),
        (
            "mysql+pymysql://user:s3cr@t@127.0.0.1:1/db",  # an unencoded '@' in the password
            "mysql+pymysql://user:***@127.0.0.1:1/db is not usable",
        ),
        (
            "postgresql+psycopg://user@127.0.0.1:1/db?password=s3cret",
            "postgresql+psycopg://user@127.0.0.1:1/db?password=*** is not usable",
        ),
    ],
)
def test_storage_url_password_is_redacted(
    sim_env: dict[str, str], tmp_path: Path, url: str, shown: str
) -> None:
    done = run_cm(sim_env, "--port", "0", "--data-dir", str(tmp_path), "--storage-url", url)
    assert done.returncode == 1
    assert "s3cr" not in done.stderr + done.stdout
    assert done.stderr.startswith("Error: storage") and shown in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_settings_repr_hides_the_password() -> None:
    from trustflow_core.roles.capsule_manager.settings import CMSettings

    settings = CMSettings(storage_url="postgresql+psycopg://cm:s3cret@db.local:5432/cm")
    assert "s3cret" not in repr(settings) and "cm:***@db.local:5432/cm" in repr(settings)


@pytest.mark.parametrize(
    ("url", "block", "extra"),
    [
        ("postgresql+psycopg://user:s3cret@127.0.0.1:1/db", "psycopg", "postgresql"),
        ("mysql+pymysql://user:s3cret@127.0.0.1:1/db", "pymysql", "mysql"),
        ("mariadb+pymysql://user@127.0.0.1:1/db", "pymysql", "mysql"),
    ],
)
def test_missing_driver_names_the_extra(
    sim_env: dict[str, str], tmp_path: Path, url: str, block: str, extra: str
) -> None:
    args = ["--port", "0", "--data-dir", str(tmp_path), "--storage-url", url]
    done = run_cm(sim_env, *args, block=block)
    assert done.returncode == 1
    line = f"its database driver {block!r} cannot be imported; "
    line += f"install it with: pip install 'trustflow-core[{extra}]'"
    assert done.stderr.startswith("Error: storage") and done.stderr.strip().endswith(line)
    assert "s3cret" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ---- finding 13: the data directory is 0700, the database and keys 0600 -------------------

PRIVATE = ("cm.db", "cm.db-wal", "cm.db-shm", "cm.db.writer-lock", "cm.key", "storage.key")


def modes(data_dir: Path) -> dict[str, int]:
    names = [".", *PRIVATE, "cm.crt"]
    return {n: (data_dir / n).stat().st_mode & 0o777 for n in names if (data_dir / n).exists()}


def test_new_data_dir_is_private(sim_env: dict[str, str], tmp_path: Path) -> None:
    data_dir = tmp_path / "cm"
    old_umask = os.umask(0o022)  # the usual umask: new files 0644 unless made private
    try:
        with CM(sim_env, data_dir, "--port", "0") as cm:
            cm.wait_listening()
            asyncio.run(grant_and_get_keys(cm.target, 1))  # writes: -wal and -shm exist
            found = modes(data_dir)
    finally:
        os.umask(old_umask)
    assert found == {".": 0o700, **dict.fromkeys(PRIVATE, 0o600), "cm.crt": 0o644}
    assert "tightened" not in cm.output()


def test_existing_lax_data_dir_is_tightened_on_start(
    sim_env: dict[str, str], tmp_path: Path
) -> None:
    import sqlite3

    data_dir = tmp_path / "cm"
    with CM(sim_env, data_dir, "--port", "0") as cm:  # a data directory from an earlier run ...
        cm.wait_listening()
    os.chmod(data_dir, 0o755)  # ... left open to everyone, as older versions did
    for name in ("cm.db", "cm.db.writer-lock", "cm.key", "storage.key"):
        os.chmod(data_dir / name, 0o644)
    db = sqlite3.connect(data_dir / "cm.db")  # -wal and -shm (0644) exist while it is open
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("SELECT count(*) FROM cm_meta").fetchone()
        assert modes(data_dir)["cm.db-wal"] == 0o644 and modes(data_dir)["cm.db-shm"] == 0o644
        with CM(sim_env, data_dir, "--port", "0") as cm:
            cm.wait_listening()
            found = modes(data_dir)
    finally:
        db.close()
    assert found == {".": 0o700, **dict.fromkeys(PRIVATE, 0o600), "cm.crt": 0o644}
    out = cm.output()
    assert f"tightened {data_dir} from mode 0755 to 0700" in out, out
    for name in PRIVATE:
        assert f"tightened {data_dir / name} from mode 0644 to 0600" in out, (name, out)


# ---- finding 14: one Capsule Manager per port; --workers share it only among themselves ---


def listening_pids(port: int, pids: list[int]) -> set[int]:
    """Which of ``pids`` hold a socket listening on TCP ``port`` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    holders = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) in inodes:
                    holders.add(pid)
            except OSError:
                continue
    return holders


def worker_pids(cm: CM, count: int) -> list[int]:
    children = Path(f"/proc/{cm.proc.pid}/task/{cm.proc.pid}/children")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        # multiprocessing's resource tracker is a child too: keep those that serve
        found = [int(p) for p in children.read_text().split()]
        serving = listening_pids(cm.port, found)
        if len(serving) == count:
            return sorted(serving)
        time.sleep(0.2)
    raise AssertionError(f"{count} workers did not start: {cm.output()}")


def assert_refused(cm: CM, port: int, reason: str) -> None:
    assert cm.exit_code(30) == 1
    assert cm.output() == f"Error: cannot listen on 127.0.0.1:{port}: {reason}\n"


async def ra_certs(target: str, connections: int) -> set[str]:
    """GetRaCert over ``connections`` separate connections; the certificates seen."""
    import grpc

    from trustflow_core.proto.secretflowapis.v2.sdc.capsule_manager import (
        capsule_manager_pb2_grpc as cm_grpc,
    )

    certs = set()
    for _ in range(connections):
        options = [("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = cm_grpc.CapsuleManagerStub(channel)
            response = await stub.GetRaCert(cm_pb2.GetRaCertRequest(nonce="n"), timeout=30)
            assert response.status.code == 0
            certs.add(response.cert)
    return certs


@pytest.mark.parametrize("first_workers", ["1", "2"])
def test_second_cm_on_a_port_in_use_is_refused(
    sim_env: dict[str, str], tmp_path: Path, first_workers: str
) -> None:
    port = free_port()
    args = ["--port", str(port)]
    with CM(sim_env, tmp_path / "a", *args, "--workers", first_workers) as first:
        first.wait_listening()
        certs = asyncio.run(ra_certs(first.target, 2))
        with CM(sim_env, tmp_path / "b", *args) as second:  # another broker, another database
            assert_refused(second, port, "Address already in use")
        with CM(sim_env, tmp_path / "c", *args, "--workers", "2") as third:
            reason = "Address already in use"
            if first_workers == "2":
                reason = "another trustflow server with --workers serves this port"
            assert_refused(third, port, reason)
        assert asyncio.run(ra_certs(first.target, 8)) == certs  # the first one still serves


def test_cm_on_a_port_a_plain_socket_listens_on_is_refused(
    sim_env: dict[str, str], tmp_path: Path
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for workers in ("1", "2"):
            with CM(sim_env, tmp_path / workers, "--port", str(port), "--workers", workers) as cm:
                assert_refused(cm, port, "Address already in use")


def test_workers_share_the_port_among_themselves(sim_env: dict[str, str], tmp_path: Path) -> None:
    with CM(sim_env, tmp_path / "cm", "--port", str(free_port()), "--workers", "2") as cm:
        cm.wait_listening()
        workers = worker_pids(cm, 1)
        assert listening_pids(cm.port, [cm.proc.pid, *workers]) == {cm.proc.pid, *workers}
        assert len(asyncio.run(ra_certs(cm.target, 8))) == 1  # one identity in both processes
        asyncio.run(grant_and_get_keys(cm.target, 4))
