"""Screenshots of a tracked sweep in the MLflow UI and in TensorBoard, for docs/guides/tracking.md.

What it runs, all in a temporary folder that is removed at the end:

1. an MLflow tracking server (SQLite backend store, local artifact root) on a free localhost port;
2. the tracked sweep ``SWEEP`` below (digits-star, strategy fl,fpl x lr 0.01,0.1, 2 rounds: four
   cells, under a minute of CPU on a 2-core machine), logged to that server and to a TensorBoard
   folder with ``--track mlflow:URI --track tensorboard:DIR``;
3. ``tensorboard --logdir DIR`` on a free localhost port;
4. headless Chromium, driven over the DevTools protocol (``--remote-debugging-pipe``, so no
   extra Python package), which opens (a) the MLflow experiment's runs table with the sweep's
   parent run expanded to its four child runs (the Run Name column widened so that their names
   show whole) and (b) TensorBoard's time series of ``accuracy``
   and ``bytes`` with the four cells overlaid, and saves them as
   docs/tracking-sweep-mlflow.png and docs/tracking-sweep-tensorboard.png;

then stops every server it started.

Needs the ``track`` extra (``pip install 'flexpl[track]'``: mlflow and tensorboard, whose
executables are looked up beside this Python, then on PATH) and Chromium (``/usr/bin/chromium``
or ``$CHROMIUM``). Run it from the repository root::

    python tools/tracking_screenshots.py [--out-dir docs] [--keep TMPDIR]

Not imported by the tests; the screenshots it makes are checked in.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the sweep that the screenshots show (the docs' caption quotes it; URI and DIR are filled in)
SWEEP = ["sweep", "digits-star", "--grid", "strategy=fl,fpl", "--grid", "training.optimizer.lr=0.01,0.1",
         "--set", "training.rounds=2", "--quiet"]
SIZE = (1360, 850)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        sys.exit(f"tracking_screenshots: {name} not found; pip install 'flexpl[track]'")
    return found


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc.poll() is not None:
                sys.exit(f"tracking_screenshots: {what} exited (rc {proc.returncode})")
            time.sleep(0.5)
    sys.exit(f"tracking_screenshots: {what} did not answer at {url} in {timeout:.0f} s")


@contextlib.contextmanager
def _server(cmd: list[str], health: str, what: str, log: Path) -> Iterator[None]:
    """Start ``cmd`` in its own process group, wait until ``health`` answers, stop the group after."""
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(health, proc, what)
        yield
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out)."""

    def __init__(self, profile: Path, size: tuple[int, int]) -> None:
        exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: fd 3 is what we write, fd 4 what it writes
            r, w = os.dup(to_chrome_r), os.dup(from_chrome_w)  # out of the way of 3 and 4 first
            os.dup2(r, 3)
            os.dup2(w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
             f"--window-size={size[0]},{size[1]}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds,  # subprocess closes the others after preexec_fn start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buf = b""
        self._id = 0
        self.size = size
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.send("Page.enable", session=True)
        self.send("Emulation.setDeviceMetricsOverride", session=True, width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=False)

    def send(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str):
        res = self.send("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                        returnByValue=True)
        return res.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", session=True, url=url)

    def wait_for(self, expression: str, what: str, timeout: float = 90) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.js(expression):
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out waiting for {what}")

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        """Press the left mouse button at ``start``, move to ``end`` in steps, release."""
        (x0, y0), (x1, y1) = start, end
        self.send("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=x0, y=y0)
        self.send("Input.dispatchMouseEvent", session=True, type="mousePressed", x=x0, y=y0, button="left",
                  buttons=1, clickCount=1)
        for i in range(1, 11):
            self.send("Input.dispatchMouseEvent", session=True, type="mouseMoved", x=x0 + (x1 - x0) * i / 10,
                      y=y0 + (y1 - y0) * i / 10, button="left", buttons=1)
            time.sleep(0.05)
        self.send("Input.dispatchMouseEvent", session=True, type="mouseReleased", x=x1, y=y1, button="left",
                  clickCount=1)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", session=True, format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            os.write(self._w, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            _stop(self.proc)
        os.close(self._w)
        os.close(self._r)


def _body_has(*texts: str) -> str:
    return " && ".join(f"document.body && document.body.innerText.includes({json.dumps(t)})" for t in texts)


def _click(selector: str, text: str = "") -> str:
    """JS that clicks the first element matching ``selector`` (whose text includes ``text``); true if one did."""
    return (f"(() => {{ const e = Array.from(document.querySelectorAll({json.dumps(selector)}))"
            f".find(x => x.innerText.includes({json.dumps(text)})); if (e) e.click(); return !!e; }})()")


_WIDEN_RUN_NAME = """(() => {
  const name = Array.from(document.querySelectorAll('.ag-header-cell')).find(c => c.innerText.includes('Run Name'));
  const id = name.getAttribute('col-id'), edge = name.offsetLeft + name.offsetWidth;
  const px = v => parseFloat(v || '0');
  for (const e of document.querySelectorAll('[col-id]')) {
    if (e.getAttribute('col-id') === id) e.style.width = (e.offsetWidth + DELTA) + 'px';
    else if (e.offsetLeft >= edge - 1 && e.style.left) e.style.left = (px(e.style.left) + DELTA) + 'px';
  }
  for (const e of document.querySelectorAll('.ag-row, .ag-header-row, [class*="-cols-container"], [class*="-container"]'))
    if (e.style.width && e.querySelector('[col-id="' + id + '"]')) e.style.width = (px(e.style.width) + DELTA) + 'px';
  // the last column (Models, empty) would stick out past the table's right edge: hide it
  const last = Array.from(document.querySelectorAll('.ag-header-cell')).find(c => c.innerText.trim() === 'Models');
  if (last) for (const e of document.querySelectorAll('[col-id="' + last.getAttribute('col-id') + '"]')) e.style.display = 'none';
  return id;
})()"""


def shoot_mlflow(chrome: Chromium, uri: str, png: Path) -> None:
    """The experiment's runs table, the sweep's parent run expanded to its child runs."""
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(uri).get_experiment_by_name("flexpl/digits-star")
    chrome.goto(f"{uri}/#/experiments/{exp.experiment_id}/runs")
    chrome.wait_for(_body_has("Run Name", "digits-star/sweep"), "the MLflow runs table")
    time.sleep(2)
    chrome.js(_click("button[aria-label='Close']"))  # the assistant's side panel
    chrome.js(_click("button[aria-label='Toggle sidebar']"))
    # the expand (+) button left of the parent run's name
    chrome.js("Array.from(document.querySelectorAll('a')).find(a => a.innerText.includes('digits-star/sweep'))"
              ".closest('.ag-cell-value').querySelector('button').click()")
    chrome.wait_for(_body_has("strategy=fpl__training.optimizer.lr=0.1"), "the child runs")
    time.sleep(1)
    # widen the Run Name column so that the child runs' names show whole (ag-grid lays its cells out
    # with absolute left/width styles: the column grows, the ones right of it and their rows move over)
    chrome.js(_WIDEN_RUN_NAME.replace("DELTA", "200"))
    time.sleep(1)
    chrome.screenshot(png)


def shoot_tensorboard(chrome: Chromium, url: str, png: Path) -> None:
    """Time series of accuracy and bytes per round, the cells overlaid, no smoothing."""
    chrome.goto(f"{url}/#timeseries")
    chrome.wait_for(_body_has("accuracy"), "TensorBoard's time series")
    # no smoothing, settings pane closed: TensorBoard's persisted settings, then a reload
    chrome.js("localStorage.setItem('_tb_global_settings', JSON.stringify({scalarSmoothing: 0, "
              "timeSeriesSettingsPaneOpened: false}))")
    chrome.send("Page.reload", session=True)
    time.sleep(1)
    chrome.wait_for(_body_has("accuracy") + " && !document.body.innerText.includes('Smoothed')",
                    "TensorBoard without smoothing")
    set_input = ("(sel, v) => {{ const e = document.querySelector(sel); e.value = v; "
                 "for (const k of ['input', 'change']) e.dispatchEvent(new Event(k, {{bubbles: true}})); "
                 "e.dispatchEvent(new KeyboardEvent('keyup', {{key: 'Enter', bubbles: true}})); }}")
    chrome.js(f"({set_input.format()})('input[placeholder=\"Filter tags (regex)\"]', '^(accuracy|bytes)$')")
    chrome.js(_click("button[aria-label='Close side pane']"))
    chrome.wait_for("!document.body.innerText.includes('accuracy_min')", "the tag filter")
    time.sleep(3)
    chrome.screenshot(png)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, default=ROOT / "docs", help="where the PNGs go (default: docs/)")
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one); "
                    "a folder that already holds the tracked sweep is reused, only the screenshots are taken again")
    args = ap.parse_args(argv)
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = args.keep.resolve()
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flexpl-shots-")))
        port = _free_port()
        uri = f"http://127.0.0.1:{port}"
        stack.enter_context(_server(
            [_exe("mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
             "--default-artifact-root", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], f"{uri}/health", "mlflow server", tmp / "mlflow.log"))
        tb_dir = tmp / "tb"
        cmd = [sys.executable, "-m", "flexpl.cli", *SWEEP, "--out", str(tmp / "sweep"),
               "--track", f"mlflow:{uri}", "--track", f"tensorboard:{tb_dir}"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
        if (tmp / "sweep" / "sweep.csv").exists() and (tmp / "mlflow.db").exists():  # --keep, run before
            print(f"tracking_screenshots: reusing the sweep tracked in {tmp}", flush=True)
        else:
            print("tracking_screenshots: flexpl", " ".join(SWEEP), flush=True)
            subprocess.run(cmd, check=True, env=env, cwd=tmp)
        tb_port = _free_port()
        tb_url = f"http://127.0.0.1:{tb_port}"
        stack.enter_context(_server(
            [_exe("tensorboard"), "--logdir", str(tb_dir), "--host", "127.0.0.1", "--port", str(tb_port)],
            f"{tb_url}/data/runs", "tensorboard", tmp / "tensorboard.log"))
        chrome = Chromium(tmp / "chromium", SIZE)
        stack.callback(chrome.close)
        for name, shoot, where in (("mlflow", shoot_mlflow, uri), ("tensorboard", shoot_tensorboard, tb_url)):
            png = out_dir / f"tracking-sweep-{name}.png"
            shoot(chrome, where, png)
            print(f"tracking_screenshots: {png} ({png.stat().st_size // 1024} KB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
