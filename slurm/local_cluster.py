"""A real two-node SLURM cluster on loopback, for tests and CI.

``python -m slurm.local_cluster start|stop|status [--state-dir DIR]`` installs the Debian packages
``slurmctld slurmd slurm-client munge`` (and ``slurmdbd mariadb-server`` for accounting) when
missing (needs root and apt), writes a munge key, ``slurm.conf`` and ``slurmdbd.conf`` into the
state directory, starts ``munged``, a MariaDB server and ``slurmdbd`` (so that ``sacct``, which
submitit polls for job states, works), one ``slurmctld`` and two ``slurmd -N node1|node2`` on
127.0.0.1 with their own ports, and waits until both nodes are idle.
``stop`` cancels the cluster's jobs, stops the daemons and removes the state directory. Clients
reach the cluster with ``SLURM_CONF=<state-dir>/slurm.conf`` in their environment.

No systemd and no cgroups are assumed: daemons are started directly, with ``proctrack/linuxproc``
and ``task/none``. This module imports nothing from blockmix.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "slurmdbd", "mariadb-server")
PROGRAMS = ("slurmctld", "slurmd", "sbatch", "munged", "slurmdbd", "mariadbd", "mariadb-install-db")
NODES = ("node1", "node2")
PARTITION = "debug"
DEFAULT_STATE_DIR = Path("/tmp/blockmix-slurm")
# A requeued job may start again only after the credential lifetime; SLURM's default is 120 s.
CRED_EXPIRE_S = 5


class ClusterUnavailable(RuntimeError):
    """The local cluster cannot be installed or started here; the message says why."""


@dataclass(frozen=True)
class LocalCluster:
    """Paths of one local cluster's state directory."""

    state_dir: Path

    @property
    def conf(self) -> Path:
        return self.state_dir / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.state_dir / "munge" / "munge.socket"

    @property
    def db_conf(self) -> Path:
        return self.state_dir / "mariadb.cnf"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point SLURM clients (sbatch, squeue, ...) at this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def pid_files(self) -> list[list[Path]]:
        """Daemon pid files in groups: SLURM daemons stop before the services they rely on."""
        slurm = [self.state_dir / f"{name}.pid" for name in ("slurmctld", "slurmdbd")]
        slurm += [self.state_dir / f"slurmd-{node}.pid" for node in NODES]
        services = [self.state_dir / "mariadb.pid", self.state_dir / "munge" / "munged.pid"]
        return [slurm, services]

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command against this cluster."""
        return subprocess.run(
            command,
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=check,
            timeout=30,
        )

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of every daemon log, for error messages."""
        parts = []
        for log in sorted(self.log_dir.glob("*.log")) if self.log_dir.is_dir() else []:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts) or "(no daemon logs)"


def install_packages() -> None:
    """Install the SLURM, munge and MariaDB Debian packages unless their programs are present."""
    missing = [program for program in PROGRAMS if _which(program) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed and not running as root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed and apt-get not available")
    wait_for_lock = "-oDPkg::Lock::Timeout=120"  # another apt run may hold the lock
    install = ["apt-get", wait_for_lock, "install", "-y", "-q", "--no-install-recommends"]
    install += PACKAGES
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        # Package lists are missing or stale: refresh them once and try again.
        _checked(["apt-get", wait_for_lock, "update", "-q"], env=env, what="apt-get update")
        _checked(install, env=env, what="apt-get install")


def start(state_dir: Path = DEFAULT_STATE_DIR, timeout_s: float = 45.0) -> LocalCluster:
    """Install if needed, write the configuration, start all daemons and wait for idle nodes."""
    install_packages()
    cluster = LocalCluster(Path(state_dir).resolve())
    if any(path.exists() for group in cluster.pid_files() for path in group):
        raise ClusterUnavailable(
            f"{cluster.state_dir} holds a cluster; stop it first: "
            f"python -m slurm.local_cluster stop --state-dir {cluster.state_dir}"
        )
    _check_parents(cluster.state_dir)
    shutil.rmtree(cluster.state_dir, ignore_errors=True)
    _write_config(cluster)
    try:
        _start_daemons(cluster, deadline=time.monotonic() + timeout_s)
    except (ClusterUnavailable, subprocess.SubprocessError, OSError) as error:
        tail = cluster.log_tail()
        stop(cluster.state_dir)
        raise ClusterUnavailable(f"{error}\n{tail}") from error
    return cluster


def stop(state_dir: Path = DEFAULT_STATE_DIR) -> None:
    """Cancel the cluster's jobs, stop its daemons and remove its state directory."""
    cluster = LocalCluster(Path(state_dir).resolve())
    if (cluster.state_dir / "slurmctld.pid").exists():
        _cancel_jobs(cluster)
    for group in cluster.pid_files():
        _terminate(group)
    shutil.rmtree(cluster.state_dir, ignore_errors=True)


def status(state_dir: Path = DEFAULT_STATE_DIR) -> str:
    """One line per node with its state, or why the cluster is not reachable."""
    cluster = LocalCluster(Path(state_dir).resolve())
    if not cluster.conf.exists():
        return f"no cluster in {cluster.state_dir}"
    result = cluster.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
    return (result.stdout or result.stderr).strip()


def _check_parents(state_dir: Path) -> None:
    """munged requires every directory above its socket to be searchable by all users."""
    for parent in state_dir.parents:
        if parent.exists() and not parent.stat().st_mode & 0o001:
            raise ClusterUnavailable(
                f"{parent} is not searchable by all users (mode {parent.stat().st_mode & 0o777:o}),"
                " which munged requires; choose a state directory elsewhere, e.g. under /tmp"
            )


def _write_config(cluster: LocalCluster) -> None:
    """Directories, munge key, slurm.conf, slurmdbd.conf and mariadb.cnf, with free ports."""
    munge_dir = cluster.munge_socket.parent
    for directory in (cluster.state_dir, munge_dir):  # munged: clients of all users reach it
        directory.mkdir(parents=True)
        directory.chmod(0o755)
    for directory in (cluster.log_dir, cluster.state_dir / "ctld"):
        directory.mkdir(mode=0o700)
    for node in NODES:
        (cluster.state_dir / "spool" / node).mkdir(parents=True)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    ctld_port, dbd_port, db_port, *node_ports = _free_ports(3 + len(NODES))
    host = socket.gethostname().split(".")[0]
    cluster.conf.write_text(_slurm_conf(cluster, host, ctld_port, dbd_port, node_ports))
    dbd_conf = cluster.state_dir / "slurmdbd.conf"
    dbd_conf.write_text(_slurmdbd_conf(cluster, host, dbd_port, db_port))
    dbd_conf.chmod(0o600)
    cluster.db_conf.write_text(_mariadb_cnf(cluster, db_port))


def _slurm_conf(
    cluster: LocalCluster, host: str, ctld_port: int, dbd_port: int, node_ports: list[int]
) -> str:
    cpus = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    state = cluster.state_dir
    lines = [
        "ClusterName=blockmix",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={cluster.munge_socket},cred_expire={CRED_EXPIRE_S}",
        f"StateSaveLocation={state / 'ctld'}",
        f"SlurmdSpoolDir={state / 'spool' / '%n'}",
        f"SlurmctldPidFile={state / 'slurmctld.pid'}",
        f"SlurmdPidFile={state / 'slurmd-%n.pid'}",
        f"SlurmctldLogFile={cluster.log_dir / 'slurmctld.log'}",
        f"SlurmdLogFile={cluster.log_dir / 'slurmd-%n.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStorageHost=127.0.0.1",
        f"AccountingStoragePort={dbd_port}",
        f"AccountingStoragePass={cluster.munge_socket}",  # the munge socket for slurmdbd
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=sched_interval=1,bf_interval=1",  # start requeued jobs promptly
        "SlurmdParameters=config_overrides",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "JobRequeue=1",
        "KillWait=5",
        "MinJobAge=300",
        "SlurmdTimeout=30",
        *(
            f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
            f"CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN"
            for node, port in zip(NODES, node_ports, strict=True)
        ),
        f"PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
    ]
    return "\n".join(lines) + "\n"


def _slurmdbd_conf(cluster: LocalCluster, host: str, dbd_port: int, db_port: int) -> str:
    lines = [
        f"DbdHost={host}",
        "DbdAddr=127.0.0.1",
        f"DbdPort={dbd_port}",
        "SlurmUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={cluster.munge_socket}",
        f"PidFile={cluster.state_dir / 'slurmdbd.pid'}",
        f"LogFile={cluster.log_dir / 'slurmdbd.log'}",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={db_port}",
        "StorageUser=root",
        "StorageLoc=slurm_acct_db",
    ]
    return "\n".join(lines) + "\n"


def _mariadb_cnf(cluster: LocalCluster, db_port: int) -> str:
    """Root without password, reachable only on 127.0.0.1: a throw-away accounting database."""
    state = cluster.state_dir
    return (
        f"[client]\nport={db_port}\nhost=127.0.0.1\nuser=root\n"
        f"[mariadbd]\ndatadir={state / 'mariadb'}\nport={db_port}\nbind-address=127.0.0.1\n"
        f"socket={state / 'mariadb.socket'}\npid-file={state / 'mariadb.pid'}\n"
        f"log-error={cluster.log_dir / 'mariadb.log'}\nuser=root\n"
    )


def _start_daemons(cluster: LocalCluster, deadline: float) -> None:
    munge_dir = cluster.munge_socket.parent
    _checked(
        [
            _program("munged"),
            f"--socket={cluster.munge_socket}",
            f"--key-file={munge_dir / 'munge.key'}",
            f"--pid-file={munge_dir / 'munged.pid'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
            f"--log-file={cluster.log_dir / 'munged.log'}",
        ],
        what="munged",
    )
    db_defaults = f"--defaults-file={cluster.db_conf}"
    _checked(
        [_program("mariadb-install-db"), db_defaults, "--auth-root-authentication-method=normal"],
        what="mariadb-install-db",
    )
    # mariadbd does not daemonize itself: `setsid -f` detaches it, so no caller has to reap it.
    subprocess.run(
        ["setsid", "-f", _program("mariadbd"), db_defaults],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )

    def database_up() -> bool:
        ping = subprocess.run([_program("mariadb-admin"), db_defaults, "ping"], capture_output=True)
        return ping.returncode == 0

    _wait(deadline, "MariaDB answering", database_up)
    env = {**os.environ, **cluster.env}  # slurmdbd reads slurmdbd.conf beside SLURM_CONF
    _checked([_program("slurmdbd")], env=env, what="slurmdbd")
    _wait(
        deadline,
        "slurmdbd answering",
        lambda: cluster.run("sacctmgr", "-n", "list", "cluster", check=False).returncode == 0,
    )
    conf = str(cluster.conf)
    _checked([_program("slurmctld"), "-c", "-f", conf], what="slurmctld")
    _wait(
        deadline,
        "slurmctld answering",
        lambda: cluster.run("scontrol", "ping", check=False).returncode == 0,
        daemons=(cluster.state_dir / "slurmctld.pid",),
    )
    for node in NODES:
        _checked([_program("slurmd"), "-N", node, "-f", conf], what=f"slurmd -N {node}")

    def nodes_idle() -> bool:
        states = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout.split()
        return states == ["idle"] * len(NODES)

    slurmds = tuple(cluster.state_dir / f"slurmd-{node}.pid" for node in NODES)
    _wait(deadline, "both nodes idle", nodes_idle, daemons=slurmds)


def _cancel_jobs(cluster: LocalCluster) -> None:
    """Cancel every job and give the job steps a few seconds to end."""
    cluster.run("scancel", "--full", f"--partition={PARTITION}", check=False)

    def no_jobs() -> bool:
        result = cluster.run("squeue", "-h", "-o", "%T", check=False)  # active jobs only
        return result.returncode != 0 or not result.stdout.strip()

    try:
        _wait(time.monotonic() + 15, "jobs cancelled", no_jobs)
    except ClusterUnavailable as error:
        print(f"warning: {error}", file=sys.stderr)


def _terminate(pid_files: list[Path], timeout_s: float = 10.0) -> None:
    """Stop the daemons named by pid files: SIGTERM, then SIGKILL after ``timeout_s``."""
    pids = set()
    for pid_file in pid_files:
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            pids.add(pid)
        except (OSError, ValueError):
            continue
    deadline = time.monotonic() + timeout_s
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = {pid for pid in pids if _alive(pid)}
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def _running(pid_file: Path) -> bool:
    """False once the daemon that wrote ``pid_file`` has exited (True before it writes it)."""
    try:
        return _alive(int(pid_file.read_text().strip()))
    except (OSError, ValueError):
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _wait(deadline: float, what: str, ready, daemons: tuple[Path, ...] = ()) -> None:
    """Poll ``ready()`` until the deadline; fail at once if a daemon (by pid file) has died."""
    while True:
        dead = [pid_file.stem for pid_file in daemons if not _running(pid_file)]
        if dead:
            raise ClusterUnavailable(f"{', '.join(dead)} died while waiting for {what}")
        if ready():
            return
        if time.monotonic() > deadline:
            raise ClusterUnavailable(f"timed out waiting for {what}")
        time.sleep(0.2)


def _checked(command: list[str], what: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ClusterUnavailable(f"{what} failed (exit {result.returncode}): " + " | ".join(output))


def _which(program: str) -> str | None:
    """Find a program also in sbin directories, which a non-login PATH may lack."""
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def _program(program: str) -> str:
    path = _which(program)
    if path is None:
        raise ClusterUnavailable(f"{program} not found after installation")
    return path


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m slurm.local_cluster", description=__doc__)
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    if args.action == "start":
        try:
            cluster = start(args.state_dir)
        except ClusterUnavailable as error:
            print(f"local SLURM cluster did not start: {error}", file=sys.stderr)
            return 1
        print(status(cluster.state_dir))
        print(f"export SLURM_CONF={cluster.conf}")
    elif args.action == "stop":
        stop(args.state_dir)
    else:
        print(status(args.state_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
