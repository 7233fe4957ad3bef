"""Faults survived under torchrun, for real (slow: several torchrun launches).

- two "hosts": ``torchrun --nnodes 2`` in two network namespaces of this machine joined by a veth
  pair (addresses assigned here, inside those namespaces only); training and evaluation agree with
  a single process evaluating the same weights;
- an elastic run (``--max-restarts 1``) whose worker is killed with SIGKILL mid-run restarts,
  resumes from the last checkpoint and ends bit-exact with an uninterrupted run.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from test_engine import SyntheticSet, TinySeg, tiny_cfg

from lightseg.evaluation import evaluate
from lightseg.training.checkpoints import load_train_checkpoint

pytestmark = pytest.mark.slow

TESTS = str(Path(__file__).parent)

SCRIPT = """
import json, os, signal, sys, torch
sys.path.insert(0, {tests!r})
from test_engine import SyntheticSet, TinySeg, tiny_cfg
from lightseg.training import train

class KilledOnce(SyntheticSet):
    # the process of rank 1 SIGKILLs itself when it reads its {kill_after}+1-th sample, in the first attempt only
    calls = 0
    def __getitem__(self, key):
        self.calls += 1
        first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if {kill_after} and first and os.environ["RANK"] == "1" and self.calls > {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(key)

torch.manual_seed(0)
cfg = tiny_cfg({work!r}, **{{"train.iters": 8, "train.batch_size": 4, "train.ckpt_interval": 2}})
res = train(cfg, model=TinySeg(), train_set=KilledOnce(), val_set=SyntheticSet(n=7))
if torch.distributed.get_rank() == 0:
    json.dump(res["metrics"], open({out!r}, "w"))
"""


def _script(tmp_path, name, kill_after=0):
    work, out = tmp_path / name, tmp_path / f"{name}.json"
    path = tmp_path / f"{name}.py"
    path.write_text(SCRIPT.format(tests=TESTS, work=str(work), out=str(out), kill_after=kill_after))
    return path, work, out


def _env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path), **extra}


def _single_process_metrics(work):
    model = TinySeg()
    model.load_state_dict(load_train_checkpoint(work / "last.pt")["model"])
    return evaluate(model, SyntheticSet(n=7), tiny_cfg("x").eval, progress=False)


def test_elastic_run_survives_a_sigkilled_worker_bit_exact(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    straight, straight_work, _ = _script(tmp_path, "straight")
    proc = subprocess.run([*torchrun, str(straight)], env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 2 samples per process per step: the 11th read is in iteration 6, after the checkpoint at 4
    killed, killed_work, out = _script(tmp_path, "killed", kill_after=10)
    proc = subprocess.run(
        [*torchrun, "--max-restarts", "1", str(killed)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "(exitcode: -9)" in log, log[-3000:]  # the worker really died (SIGKILL)
    records = [json.loads(line) for line in (killed_work / "log.jsonl").read_text().splitlines()]
    (resume,) = [r for r in records if r["kind"] == "resume"]
    assert resume["iter"] == 4 and resume["from"].endswith("last.pt")
    assert [r["iter"] for r in records if r["kind"] == "train"] == list(range(1, 9))
    a = load_train_checkpoint(straight_work / "last.pt")
    b = load_train_checkpoint(killed_work / "last.pt")
    assert a["iteration"] == b["iteration"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert json.loads(out.read_text())["mIoU"] == pytest.approx(_single_process_metrics(killed_work)["mIoU"])


def _netns(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a veth pair: (namespace, interface, address) per host."""
    tag = uuid.uuid4().hex[:6]
    hosts = [(f"ls{tag}{i}", f"ls{tag}v{i}", f"10.251.14.{i + 1}") for i in range(2)]
    made = []
    try:
        for ns, _, _ in hosts:
            r = _netns("netns", "add", ns)
            if r.returncode:
                pytest.skip(f"network namespaces are not permitted here: {r.stderr.strip()}")
            made.append(ns)
        r = _netns("link", "add", hosts[0][1], "type", "veth", "peer", "name", hosts[1][1])
        if r.returncode:
            pytest.skip(f"cannot create a veth pair here: {r.stderr.strip()}")
        for ns, dev, addr in hosts:
            for cmd in (
                ["link", "set", dev, "netns", ns],
                ["-n", ns, "addr", "add", f"{addr}/24", "dev", dev],
                ["-n", ns, "link", "set", dev, "up"],
                ["-n", ns, "link", "set", "lo", "up"],
            ):
                r = _netns(*cmd)
                assert r.returncode == 0, r.stderr
        yield hosts
    finally:
        for ns in made:
            _netns("netns", "del", ns)  # also removes the veth pair


def test_two_hosts_in_network_namespaces_train_and_evaluate_like_one_process(tmp_path, two_hosts):
    script, work, out = _script(tmp_path, "two_hosts")
    master = two_hosts[0][2]
    procs = []
    for rank, (ns, dev, _) in enumerate(two_hosts):
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc_per_node", "1", "--node_rank", str(rank), "--master_addr", master,
               "--master_port", "29531", str(script)]  # fmt: skip
        env = _env(GLOO_SOCKET_IFNAME=dev)
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    assert "2 processes on CPU (gloo)" in logs[0]
    dist_metrics = json.loads(out.read_text())
    single = _single_process_metrics(work)
    for k in ("mIoU", "mAcc", "aAcc"):
        assert dist_metrics[k] == pytest.approx(single[k], abs=1e-9), k
