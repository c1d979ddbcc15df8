"""A fork server for tests that run ``flexpl`` many times: every command forked from one warm process.

Run as ``python tests/forkserver.py [--warm-up]`` (``ForkServer`` below starts it). It imports the
whole package, one torch thread (as ``OMP_NUM_THREADS=1 flexpl ...``). With ``--warm-up``
(tests/test_docs_examples.py) it also trains digits-star for two steps, predicts one plan and
draws one figure, so that each command starts with the data loaded and torch's first-call costs
paid. Without it a command starts from the package imported and nothing run, as a fresh
``flexpl`` process does after its imports (the kill -9 tests: the reference run, the killed run
and its resume are three such children, not three fresh interpreters importing torch).

For every JSON line ``{"argv": [...], "cwd": "...", "log": "..."}`` on stdin (optional: ``"err"``,
a separate file for stderr; ``"env"``, variables set in the child; ``"prelude"``, Python source the
child runs before the command, e.g. a patched ``os.fsync``) it forks a child, in a process group
of its own, that runs ``flexpl ARGV`` in ``cwd`` (stdout and stderr through pipes to ``log``), and
answers two JSON lines on stdout: ``{"pid": N}`` when the child starts (the test kills its group
on a timeout) and ``{"rc": R}`` when it has ended and the pipes are closed: as with
``subprocess.run(capture_output=True)``, a process it started that outlives it with its stdout or
stderr (a worker not stopped with a killed run) holds the answer back until it ends. ``R`` is
``-9`` for a child killed by SIGKILL, as subprocess reports it. A private server, not
multiprocessing's: the distributed backend keeps its own fork server, and the two never meet.

Nothing in the preload or the warm-up starts a thread a forked child would inherit half-alive:
one torch thread, the sequential executor, no checkpoint (its writer is a thread).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def preload(warm_up: bool) -> None:
    """Import every module of the package, then (``warm_up``) warm up (see the module docstring)."""
    import torch

    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 flexpl ...: the 2-core test machines are shared
    import matplotlib

    matplotlib.use("Agg")
    import importlib

    import matplotlib.pyplot as plt

    import flexpl

    src = Path(flexpl.__file__).parent
    for p in sorted(src.rglob("*.py")):
        parts = list(p.relative_to(src.parent).with_suffix("").parts)
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        try:
            importlib.import_module(".".join(parts))
        except Exception:  # an optional extra missing: the command that needs it says so itself
            pass
    if not warm_up:
        return
    try:
        sets = {"training.rounds": 1, "training.max_steps_per_round": 2, "training.checkpoint_every": 0,
                "engine.executor": "sequential"}
        for strategy in ("fl", "fpl"):
            scn = flexpl.load_scenario("digits-star", overrides=sets, strategy=strategy)
            flexpl.simulate(scn)
            flexpl.predict(scn)
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1], label="warm-up")
        ax.legend()
        fig.savefig(io.BytesIO(), format="png")
        plt.close(fig)
    except Exception:  # a warm-up only: the commands themselves report what is wrong
        pass


def child(req: dict, out: int, err: int) -> None:
    """The forked child: one ``flexpl`` command, stdout to the pipe ``out``, stderr to ``err``; never returns."""
    rc = 1
    try:
        os.setpgid(0, 0)  # a group of its own: on a timeout the test kills it with whatever it started
        os.chdir(req["cwd"])
        sys.path.insert(0, req["cwd"])  # a scenario may name user code in this folder by import path
        os.environ.update(req.get("env") or {})
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.argv = ["flexpl", *req["argv"]]
        try:
            if req.get("prelude"):
                exec(compile(req["prelude"], "<prelude>", "exec"), {"__name__": "__prelude__"})
            from flexpl.cli import main

            rc = int(main(req["argv"]) or 0)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            rc = 1
        from multiprocessing import util

        util._exit_function()  # what a multiprocessing child does on its way out: join its own children
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


def drain(pipes: dict[int, str]) -> None:
    """Copy each pipe to its file until every process holding its write end has ended (the command and any
    process it started that inherited its stdout or stderr), as ``subprocess.run(capture_output=True)`` waits."""
    files = {fd: open(path, "wb") for fd, path in pipes.items()}  # noqa: SIM115 (closed below)
    try:
        while files:
            ready, _, _ = select.select(list(files), [], [])
            for fd in ready:
                chunk = os.read(fd, 65536)
                if chunk:
                    files[fd].write(chunk)
                else:
                    files.pop(fd).close()
                    os.close(fd)
    finally:
        for f in files.values():
            f.close()


def serve(warm_up: bool) -> None:
    preload(warm_up)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe() if req.get("err") else (out_r, out_w)
        pid = os.fork()
        if pid == 0:
            os.close(out_r)
            if err_r != out_r:
                os.close(err_r)
            child(req, out_w, err_w)
        os.close(out_w)
        if err_w != out_w:
            os.close(err_w)
        print(json.dumps({"pid": pid}), flush=True)
        drain({out_r: req["log"], **({err_r: req["err"]} if err_r != out_r else {})})
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)


class ForkServer:
    """The client: starts ``python tests/forkserver.py`` (it preloads while the caller goes on)."""

    def __init__(self, warm_up: bool = False) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1", MPLBACKEND="Agg")
        self.proc = subprocess.Popen([sys.executable, str(HERE / "forkserver.py"), *(["--warm-up"] if warm_up else [])],
                                     cwd=HERE.parent, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)

    def _answer(self, timeout: float | None) -> dict | None:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("the test fork server died")
        return json.loads(line)

    def _start(self, argv: list[str], cwd: Path, log: Path, **extra: object) -> int:
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "log": str(log), **extra}) + "\n")
        self.proc.stdin.flush()
        return self._answer(None)["pid"]  # the server answers once it has preloaded

    def _wait(self, pid: int, timeout: float) -> int | None:
        done = self._answer(timeout)
        if done is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)  # our own command and what it started, by its group id
            self._answer(None)
            return None
        return done["rc"]

    def run(self, argv: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
        """``flexpl ARGV`` in ``cwd``: (exit code, its stdout and stderr together); -9 on a timeout."""
        log = cwd / ".flexpl-command.log"
        rc = self._wait(self._start(argv, cwd, log), timeout)
        text = log.read_text() if log.exists() else ""
        return (-9, f"timed out after {timeout} s\n" + text) if rc is None else (rc, text)

    def completed(self, argv: list[str], timeout: float = 300, env: dict[str, str] | None = None,
                  prelude: str = "") -> subprocess.CompletedProcess:
        """``flexpl ARGV`` in the current folder, as ``subprocess.run([flexpl, *ARGV], capture_output=True,
        text=True, timeout=timeout)`` gives it (TimeoutExpired past ``timeout``); ``env``: variables added."""
        with tempfile.TemporaryDirectory(prefix="flexpl-fork-") as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            rc = self._wait(self._start(argv, Path.cwd(), out, err=str(err), env=env or {}, prelude=prelude),
                            timeout)
            if rc is None:
                raise subprocess.TimeoutExpired(["flexpl", *argv], timeout)
            return subprocess.CompletedProcess(["flexpl", *argv], rc, out.read_text(), err.read_text())

    def cpu_seconds(self) -> float:
        """CPU seconds of the server and of the commands it forked and reaped (Linux)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return 0.0
        return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


if __name__ == "__main__":
    serve(warm_up="--warm-up" in sys.argv[1:])
