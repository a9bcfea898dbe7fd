"""`make e2e` (Slurm): a real single-node Slurm cluster (Debian's slurmctld + slurmd + munge,
22.05) runs `examples/slurm-array.sh` as written, resources overridden on the sbatch line:

1. a range (--array=0-3) and 2. a step (--array=0-6:2): every job done exactly once;
3. a list (--array=0,2,4): every task refuses before doing anything (exit 2), nothing written;
4. the range again: every job up to date;
5. scancel of one task mid-verify: it stops on SIGTERM well inside KillWait, says what it had
   published, leaves no staging and no half output; resubmitting that task alone (N=2
   --array=1) does its share, and nothing is done twice.

The cluster lives in e2e-out/slurm (private slurm.conf through SLURM_CONF, its own munge
socket); its daemons are stopped by PID at the end. Needs root and the Debian packages
(`make e2e` installs them). Figures go to e2e-out/slurm.json.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "e2e-out" / "slurm"
EXAMPLE = ROOT / "examples" / "slurm-array.sh"
KILL_WAIT = 30
SMALL = ["--cpus-per-task=1", "--mem=3G"]

CONF = """ClusterName=q2l
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={work}/munge/sock
StateSaveLocation={work}/state
SlurmdSpoolDir={work}/spool
SlurmctldPidFile={work}/slurmctld.pid
SlurmdPidFile={work}/slurmd.pid
SlurmctldLogFile={work}/slurmctld.log
SlurmdLogFile={work}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
KillWait={kill_wait}
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def sh(*args, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=check, **kw)


class Cluster:
    def __init__(self, work: Path):
        self.work = work
        self.env = {**os.environ, "SLURM_CONF": str(work / "slurm.conf"),
                    "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"}

    def start(self) -> None:
        for d in ("state", "spool", "munge"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        (self.work / "munge").chmod(0o755)  # munged refuses a socket folder others can write
        key = self.work / "munge" / "key"
        sh("mungekey", "--create", "--keyfile", key, "--force")
        m = self.work / "munge"
        sh("munged", "--force", f"--key-file={key}", f"--socket={m / 'sock'}", f"--pid-file={m / 'pid'}",
           f"--log-file={m / 'log'}", f"--seed-file={m / 'seed'}")
        node = dict(re.findall(r"(\w+)=(\S+)", sh("slurmd", "-C").stdout.splitlines()[0]))
        (self.work / "slurm.conf").write_text(CONF.format(
            host=node["NodeName"], cpus=node["CPUs"], memory=int(node["RealMemory"]) - 1000, work=self.work,
            kill_wait=KILL_WAIT))
        sh("slurmctld", env=self.env)
        sh("slurmd", env=self.env)
        for _ in range(60):
            if "idle" in sh("sinfo", "-h", "-o", "%T", env=self.env, check=False).stdout:
                return
            time.sleep(1)
        log = (self.work / "slurmctld.log").read_text()[-2000:]
        raise RuntimeError("the Slurm node never became idle:\n" + log)

    def stop(self) -> None:
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/pid"):
            try:
                os.kill(int((self.work / pid_file).read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass

    def sbatch(self, cwd: Path, *args, env: dict | None = None, wait: bool = True) -> str:
        run = sh("sbatch", "--parsable", *(["--wait"] if wait else []), *SMALL, *args, EXAMPLE, cwd=cwd,
                 env={**self.env, **(env or {})}, check=False)
        job = run.stdout.strip().split(";")[0]
        if not job:
            raise RuntimeError(f"sbatch failed: {run.stderr}")
        return job

    def tasks(self, job: str) -> dict[int, dict]:
        """Task id -> scontrol's fields (state, exit code) for an array job (no slurmdbd: no sacct)."""
        out = sh("scontrol", "show", "job", "-o", job, env=self.env, check=False).stdout
        found = {}
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if fields.get("ArrayTaskId", "").isdigit():
                found[int(fields["ArrayTaskId"])] = fields
        return found


def summaries(cwd: Path) -> list[dict]:
    return [j for p in sorted((cwd / "summaries").glob("*.json")) for j in json.loads(p.read_text())["jobs"]]


class Run:
    """The cases, on one cluster and one data set."""

    def __init__(self, cluster: Cluster, base: Path, runs: Path, big: Path):
        self.cluster, self.base, self.runs, self.big = cluster, base, runs, big

    def submit(self, name: str, array: str, out: str, data: Path | None = None, env: dict | None = None,
               wait: bool = True) -> tuple[Path, str]:
        cwd = WORK / name
        cwd.mkdir(exist_ok=True)
        shutil.rmtree(cwd / "summaries", ignore_errors=True)
        env = {"RUNS": str(data or self.runs), "OUT": str(WORK / out), "BASE": str(self.base), **(env or {})}
        return cwd, self.cluster.sbatch(cwd, f"--array={array}", wait=wait, env=env)

    def cover(self, name: str, array: str) -> dict:
        """A range or a step: every job exactly once, all passed."""
        cwd, job = self.submit(name, array, f"out-{name}")
        done, tasks = summaries(cwd), self.cluster.tasks(job)
        outs = [j["out"] for j in done]
        row = {"array": array, "tasks": len(tasks),
               "exit_codes": sorted({t["ExitCode"] for t in tasks.values()}),
               "jobs_done": len(outs), "distinct": len(set(outs)),
               "statuses": sorted({j["status"] for j in done})}
        row["passed"] = row["jobs_done"] == row["distinct"] == 4 and row["statuses"] == ["passed"] and \
            row["exit_codes"] == ["0:0"]
        return row

    def range(self) -> dict:
        return self.cover("range", "0-3")

    def step(self) -> dict:
        return self.cover("step", "0-6:2")

    def list(self) -> dict:
        cwd, job = self.submit("list", "0,2,4", "out-list")
        tasks = self.cluster.tasks(job)
        logs = " ".join(p.read_text() for p in cwd.glob("*.log"))
        row = {"array": "0,2,4", "tasks": len(tasks),
               "exit_codes": sorted({t["ExitCode"] for t in tasks.values()}),
               "refused": logs.count("not a plain range"), "written": (WORK / "out-list").exists()}
        row["passed"] = row["exit_codes"] == ["2:0"] and row["refused"] == 3 and not row["written"]
        return row

    def rerun(self) -> dict:
        if not (WORK / "out-range").exists():
            self.range()
        cwd, _ = self.submit("range", "0-3", "out-range")
        statuses = [j["status"] for j in summaries(cwd)]
        return {"statuses": statuses, "passed": statuses == ["up to date"] * 4}

    def cancel(self) -> dict:
        """scancel of task 1 mid-verify, then task 1 alone resubmitted with N=2."""
        quick = {"ARGS": "--quick"}
        cwd, job = self.submit("cancel", "0-1", "out-cancel", data=self.big, env=quick, wait=False)
        deadline = time.monotonic() + 900

        def log():
            return next(iter(cwd.glob(f"*{job}_1.log")), None)

        while time.monotonic() < deadline and not (log() and "logits" in log().read_text()):
            time.sleep(0.2)
        t_cancel = time.monotonic()
        sh("scancel", f"{job}_1", env=self.cluster.env)
        # stopped: the task's qwen2llama process is gone (Slurm sends SIGTERM, SIGKILL only after KillWait)
        while time.monotonic() < deadline and sh("pgrep", "-f", "summaries/shard-1.json",
                                                 check=False).stdout.strip():
            time.sleep(0.1)
        stopped_after = time.monotonic() - t_cancel
        while time.monotonic() < deadline and self.cluster.tasks(job).get(0,
                                                                          {}).get("JobState") != "COMPLETED":
            time.sleep(1)
        text = log().read_text()
        out = WORK / "out-cancel"
        row = {"seconds_to_stop": round(stopped_after, 1), "kill_wait": KILL_WAIT,
               "said_interrupted": "interrupted: published before the signal" in text,
               "staging_left": [p.name for p in out.glob(".*qwen2llama-staging*")],
               "half_output": (out / "wide--checkpoint-2").exists()}
        cwd, _ = self.submit("cancel", "1", "out-cancel", data=self.big, env={**quick, "N": "2"})
        again = summaries(cwd)
        row["resubmitted"] = [(j["name"], j["status"]) for j in again]
        row["outputs"] = sorted(p.name for p in out.iterdir() if p.is_dir())
        row["passed"] = (row["said_interrupted"] and stopped_after < KILL_WAIT and not row["staging_left"]
                         and not row["half_output"]
                         and row["resubmitted"] == [("wide--checkpoint-2", "passed")]
                         and row["outputs"] == ["wide--checkpoint-1", "wide--checkpoint-2"])
        return row


CASES = ("range", "step", "list", "rerun", "cancel")


def main() -> int:
    from qwen2llama.synth import synthesize

    if os.geteuid() != 0 or not shutil.which("slurmctld"):
        print("slurm e2e needs root and Debian's slurmctld slurmd slurm-client munge "
              "(make e2e installs them)")
        return 1
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    base = synthesize(WORK / "data" / "base", "tiny", layers=1, seed=1)
    runs = WORK / "data" / "runs"
    for k, step in enumerate((100, 200, 300, 400)):
        synthesize(runs / "sft" / f"checkpoint-{step}", "tiny", layers=1, seed=10 + k, trainer=True)
    big = WORK / "data" / "big"
    for k, step in enumerate((1, 2)):  # long enough to cancel mid-verify
        synthesize(big / "wide" / f"checkpoint-{step}", "qwen-1_8b", layers=2, seed=20 + k, trainer=True)
    cluster = Cluster(WORK)
    rows = {}
    t0 = time.perf_counter()
    try:
        cluster.start()
        rows["cluster_start_seconds"] = round(time.perf_counter() - t0, 1)
        run = Run(cluster, base, runs, big)
        for name in os.environ.get("E2E_SLURM_ONLY", ",".join(CASES)).split(","):
            rows[name] = getattr(run, name)()
            print(f"{name}: {rows[name]}", flush=True)
    finally:
        cluster.stop()
    rows["seconds"] = round(time.perf_counter() - t0, 1)
    ok = all(r["passed"] for r in rows.values() if isinstance(r, dict))
    version = sh("sinfo", "--version", check=False).stdout.strip()
    (ROOT / "e2e-out" / "slurm.json").write_text(json.dumps({"slurm": version, "rows": rows, "passed": ok},
                                                            indent=2))
    print("slurm e2e:", "passed" if ok else "FAILED", f"({rows['seconds']} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
