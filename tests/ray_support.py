"""A real two-node Ray cluster on this machine for the Ray engine's tests: ``ray start --head`` and
``ray start --address`` as separate processes, each with its own ports and explicit (small) resources, in a temp
dir of their own. Stopping kills exactly the processes of this cluster (by pid, found by their temp dir and as
children of its raylets) — never ``ray stop``, which would stop every Ray on the machine — and checks that none
is left."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
# Ray 2.60 turns token authentication on by default; a throwaway loopback cluster opts out (NOTES.md).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def processes_with(marker: str) -> list[psutil.Process]:
    """Every process whose command line names ``marker`` (the cluster's temp dir), with all their descendants."""
    found: dict[int, psutil.Process] = {}
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if proc.pid not in me and marker in " ".join(proc.info["cmdline"] or []):
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except psutil.Error:
            continue
    return list(found.values())


class RayCluster:
    """Head + one more node. ``address`` is what ``--ray-address`` takes."""

    def __init__(self, cpus_per_node: float = 1.0, env: dict[str, str] | None = None) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="cr", dir="/tmp")  # short: Ray's socket paths have a length limit
        self.env = {**os.environ, **RAY_ENV, **(env or {})}
        self.cpus = cpus_per_node
        self.seen: dict[int, psutil.Process] = {}
        self.address = ""
        self.second_node_port = 0  # the second node's raylet (node manager) port

    def _node_args(self, ports: list[int]) -> list[str]:
        return [
            f"--num-cpus={self.cpus:g}",
            "--num-gpus=0",
            f"--node-manager-port={ports[0]}",
            f"--object-manager-port={ports[1]}",
            f"--dashboard-agent-listen-port={ports[3]}",
            f"--dashboard-agent-grpc-port={ports[4]}",
            f"--metrics-export-port={ports[5]}",
            f"--runtime-env-agent-port={ports[6]}",
            "--object-store-memory=150000000",
            "--disable-usage-stats",
        ]

    def start(self) -> RayCluster:
        head_ports, node_ports = free_ports(7), free_ports(7)
        gcs, dashboard = free_ports(2)
        self.second_node_port = node_ports[0]
        self.address = f"127.0.0.1:{gcs}"
        head = [
            RAY,
            "start",
            "--head",
            f"--port={gcs}",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}",
            "--include-dashboard=false",
            f"--dashboard-port={dashboard}",
            '--resources={"head": 1}',
            *self._node_args(head_ports),
        ]
        worker = [
            RAY,
            "start",
            f"--address={self.address}",
            "--node-ip-address=127.0.0.1",
            '--resources={"second": 1}',
            *self._node_args(node_ports),
        ]
        try:
            for cmd in (head, worker):
                done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
                self._track()
                if done.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd[:3])} failed: {done.stderr[-2000:]}")
            self.wait_nodes(2)
        except BaseException:
            self.stop()
            raise
        return self

    def _track(self) -> None:
        for proc in processes_with(self.temp_dir):
            self.seen.setdefault(proc.pid, proc)

    def nodes(self) -> list[dict]:
        script = (
            f"import json, ray; ray.init(address={self.address!r}, logging_level='ERROR'); "
            "print(json.dumps([n for n in ray.nodes() if n['Alive']])); ray.shutdown()"
        )
        out = subprocess.run(
            [sys.executable, "-c", script], env=self.env, capture_output=True, text=True, timeout=120, check=True
        ).stdout
        import json

        return json.loads(out.strip().splitlines()[-1])

    def wait_nodes(self, n: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.nodes()) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster at {self.address} has fewer than {n} live nodes")
            time.sleep(1)

    def workers(self, name: str) -> list[psutil.Process]:
        """Live worker processes of this cluster whose title contains ``name`` (e.g. ``MapWorker``)."""
        self._track()
        out = []
        for proc in processes_with(self.temp_dir):
            try:
                if name in " ".join(proc.cmdline()):
                    out.append(proc)
            except psutil.Error:
                continue
        return out

    def second_raylet(self) -> psutil.Process:
        """The second node's raylet (found by its node manager port): killing it takes that node down."""
        for proc in processes_with(self.temp_dir):
            try:
                if proc.name() == "raylet" and f"--node_manager_port={self.second_node_port}" in proc.cmdline():
                    return proc
            except psutil.Error:
                continue
        raise RuntimeError(f"no raylet with node manager port {self.second_node_port}")

    def stop(self) -> list[str]:
        """Kill every process of this cluster (TERM, then KILL); returns what is still alive (should be [])."""
        self._track()
        procs = list({**self.seen, **{p.pid: p for p in processes_with(self.temp_dir)}}.values())
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _gone, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        _gone, alive = psutil.wait_procs(alive, timeout=10)
        left = [f"{p.pid} {p.name()}" for p in alive if p.is_running()]
        left += [f"{p.pid} {p.name()}" for p in processes_with(self.temp_dir)]
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left
