"""A one-node SLURM cluster in a temporary folder, for the tests: munged, slurmctld and slurmd
from Debian's packages (slurmctld, slurmd, slurm-client, munge), started directly as root and
stopped by their process ids. ``SLURM_CONF`` points the clients (sbatch, squeue, srun) at it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel")
START_SECONDS = 30


def missing() -> str | None:
    """Why no cluster can be started here (None when it can)."""
    absent = [name for name in BINARIES if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]
    if absent:
        return f"SLURM or munge is not installed ({', '.join(absent)} not found; apt-get install slurmctld slurmd slurm-client munge)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


CONF = """\
ClusterName=mimtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """The daemons of a one-node cluster under ``root``; ``env`` is what a client needs."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    def start(self) -> "Cluster":
        root = self.root
        for name in ("state", "spool", "munge"):
            (root / name).mkdir(parents=True, exist_ok=True)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (root / "munge").chmod(0o700)
        host = socket.gethostname().split(".")[0]
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 // 2
        (root / "slurm.conf").write_text(CONF.format(host=host, root=root, ctld_port=free_port(), d_port=free_port(),
                                                     cpus=os.cpu_count(), memory=memory))
        self.spawn([binary("munged"), "--foreground", "--force", f"--socket={root}/munge.sock", f"--key-file={key}",
                    f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munge/seed"])
        self.wait_for(lambda: (root / "munge.sock").exists(), "munged")
        self.spawn([binary("slurmctld"), "-D", "-i", "-f", str(root / "slurm.conf")])
        self.wait_for(lambda: self.client(["scontrol", "ping"]).returncode == 0, "slurmctld")
        self.spawn([binary("slurmd"), "-D", "-f", str(root / "slurm.conf")])
        self.wait_for(lambda: "idle" in self.client(["sinfo", "-h", "-o", "%t"]).stdout, "slurmd")
        return self

    def spawn(self, command: list[str]) -> None:
        log = open(self.root / f"{Path(command[0]).name}.out", "w")
        self.processes.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def client(self, command: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=30)

    def wait_for(self, ready, what: str) -> None:
        deadline = time.time() + START_SECONDS
        while not ready():
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{what}: {process.args[0]} exited with {process.returncode}: "
                                       f"{(self.root / (Path(process.args[0]).name + '.out')).read_text()[-2000:]}")
            if time.time() > deadline:
                raise RuntimeError(f"{what} did not come up in {START_SECONDS} s; logs in {self.root}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by process id, newest first."""
        self.client(["scancel", "--full", "--user", "root"])
        for process in reversed(self.processes):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
