"""GPU numbers in one command: the 12B shape (random weights made on the device) on a bare CUDA machine.

Installs the wheels of the offline bundle that the machine lacks (bench/gpu_requirements.txt, filled by
bench/gpu_prepare.sh), unpacks the bundle's ComfyUI source, then measures in a fixed order, each part with its own time budget, printing a Markdown
table as each part ends and writing them all under --out: per-stage time and DiT TFLOP/s (load, stages), a video
clip through the one-item loop (video), peak memory in bf16 (memory_bf16), ours vs diffusers' FluxKontextPipeline
at 1 and 8 steps (diffusers), fp8_e4m3fn weights (fp8), and bf16 with ComfyUI left ~16 GiB of the card, by dynamic
VRAM and by --lowvram (capped_dynamic, capped_lowvram). The parts run in child processes (bench/gpu_parts.py):
ComfyUI's flags are fixed per process, and a part over its budget is ended from here while the rest still run.

    bash bench/gpu_suite.sh                 # on the GPU machine ($OUT gets the tables)
    bash bench/gpu_suite.sh --dry-run       # the same on the CPU: mid shape, small sizes
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.gpu_parts import CAPPED_PARTS, EVENT_MARKER, MAIN_PARTS  # noqa: E402
from e2p_dev.comfy_runtime import DEFAULT_CACHE_DIR, read_comfyui_version  # noqa: E402

REQUIREMENTS = REPO_ROOT / "bench" / "gpu_requirements.txt"
DEFAULT_BUNDLE = REPO_ROOT / ".gpu_bundle"
DEFAULT_WORK = Path("/tmp/e2p_gpu_suite")
ALL_PARTS = (*MAIN_PARTS, *CAPPED_PARTS)
# Seconds per part, sized on an H200 (sum 420: the whole run, setup included, stays under 8 minutes). Measured parts stop
# repeating when the next run would not fit; a part still running at its budget x1.2 + 10 s is ended.
GPU_BUDGETS = {"setup": 40, "load": 70, "stages": 35, "video": 25, "memory_bf16": 15, "diffusers": 75, "fp8": 50,
               "capped_dynamic": 55, "capped_lowvram": 55}
DRY_BUDGETS = {name: 300 for name in GPU_BUDGETS}
GPU_TOTAL_S = 450
BOOT_TIMEOUT_S = 180
PART_DESCRIPTIONS = {
    "setup": "install missing wheels, unpack ComfyUI",
    "load": "random weights on the device -> pack loader -> first prediction",
    "stages": "per-stage time, DiT TFLOP/s",
    "video": "clip through the one-item loop",
    "memory_bf16": "peak memory, bf16 weights",
    "diffusers": "ours vs FluxKontextPipeline",
    "fp8": "fp8_e4m3fn weights: load, peak memory",
    "capped_dynamic": "dynamic VRAM, ComfyUI left ~cap GiB",
    "capped_lowvram": "--lowvram, ComfyUI left ~cap GiB",
}


# ---------------------------------------------------------------------------------------------------------------
# Setup: wheels and ComfyUI
# ---------------------------------------------------------------------------------------------------------------


def bundled_requirements() -> list[tuple[str, str]]:
    """(name, version) pairs of bench/gpu_requirements.txt."""
    pairs = []
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pairs.append((name.strip(), version.strip()))
    return pairs


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def install_missing(bundle: Path, site_dir: Path) -> dict:
    """pip-install, from the bundle's wheels only, each requirement this Python does not have (any version: the
    machine's own packages win), into ``site_dir``, which is put on the path of this process and its children.
    Without a bundle folder (the tests' own environment) nothing is installed."""
    if not bundle.is_dir():
        return {"installed": [], "already_present": [], "note": f"no bundle folder at {bundle}: packages as they are"}
    site_dir.mkdir(parents=True, exist_ok=True)   # on the path first: a rerun finds what an earlier run installed
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site_dir), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(site_dir))
    present, missing = [], []
    for name, version in bundled_requirements():
        try:
            present.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            missing.append((name, version))
    installed = []
    if missing:
        wheel_dir = bundle / "wheels"
        wheels = {}
        for path in wheel_dir.glob("*.whl"):
            wheels[normalized(path.name.split("-")[0])] = path
        absent = [f"{name}=={version}" for name, version in missing if normalized(name) not in wheels]
        if absent:
            raise SystemExit(f"missing here and not in the bundle {wheel_dir}: {', '.join(absent)}. Run "
                             "`bash bench/gpu_prepare.sh` on a machine with PyPI access and copy its folder here.")
        files = [str(wheels[normalized(name)]) for name, _ in missing]
        command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", str(site_dir), *files]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            raise SystemExit(f"pip could not install the bundle's wheels:\n{completed.stderr[-3000:]}")
        installed = [Path(f).name for f in files]
        importlib.invalidate_caches()
    return {"installed": installed, "already_present": present}


def find_comfyui(args) -> tuple[Path, str]:
    """The ComfyUI to run: --comfyui, else the bundle's archive unpacked under the work folder, else the tests'
    ComfyUI ($E2P_COMFYUI_DIR or the default cache path)."""
    if args.comfyui:
        return args.comfyui, "given with --comfyui"
    archives = sorted(args.bundle.glob("ComfyUI-*.tar.gz")) if args.bundle.is_dir() else []
    if archives:
        archive = archives[-1]
        target = args.work_dir / archive.name[:-len(".tar.gz")]
        if read_comfyui_version(target) is None:
            shutil.rmtree(target, ignore_errors=True)
            with tarfile.open(archive) as bundle:
                bundle.extractall(args.work_dir, filter="data")
        return target, f"unpacked from {archive.name}"
    configured = os.environ.get("E2P_COMFYUI_DIR")
    root = Path(configured) if configured else DEFAULT_CACHE_DIR / "comfyui"
    return root, "the tests' ComfyUI (" + ("$E2P_COMFYUI_DIR" if configured else "default cache path") + ")"


def machine_line() -> str:
    """The GPU as nvidia-smi names it (without starting CUDA in this process), or the CPU."""
    if shutil.which("nvidia-smi"):
        completed = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                    "--format=csv,noheader"], capture_output=True, text=True)
        if completed.returncode == 0 and completed.stdout.strip():
            return f"GPU: {completed.stdout.strip()} (name, memory, driver); {os.cpu_count()} CPU cores"
    return f"no NVIDIA GPU visible; {os.cpu_count()} CPU cores"


# ---------------------------------------------------------------------------------------------------------------
# Running the parts
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PartOutcome:
    status: str = "not run"
    seconds: float | None = None
    budget: float | None = None
    result: dict = field(default_factory=dict)
    error: str | None = None


class Suite:
    def __init__(self, args):
        self.args = args
        self.outcomes = {name: PartOutcome(budget=args.budgets[name]) for name in ("setup", *args.parts)}
        self.environment: list[str] = []
        self.process_notes: list[str] = []
        self.started = time.monotonic()
        self.log = open(args.out / "gpu_suite.log", "a")

    def remaining_s(self) -> float:
        return self.args.total_s - (time.monotonic() - self.started)

    def worker_command(self, parts: list[str]) -> list[str]:
        a = self.args
        return [sys.executable, str(REPO_ROOT / "bench" / "gpu_parts.py"), "--parts", *parts,
                "--budgets", *(str(a.budgets[p]) for p in parts), "--device", a.device, "--shape", a.shape,
                "--resolutions", *map(str, a.resolutions), "--video-frames", str(a.video_frames),
                "--video-resolution", str(a.video_resolution), "--diffusers-steps", *map(str, a.diffusers_steps),
                "--warmup", str(a.warmup), "--repeats", str(a.repeats), "--cap-gib", str(a.cap_gib),
                "--base-dir", str(a.work_dir / "base"),
                *(["--peak-tflops", str(a.peak_tflops)] if a.peak_tflops else [])]

    def run_group(self, parts: list[str]) -> None:
        """Run ``parts`` in one worker; when one overruns or the worker dies, go on with a fresh worker (the main
        group reloads the model first)."""
        pending = list(parts)
        while pending:
            affordable = [p for p in pending if self.remaining_s() > 0]
            if not affordable:
                for part in pending:
                    self.outcomes[part].status = "not run: the run's total time budget was spent"
                return
            pending = self.run_worker(pending)
            if pending and "load" in parts:
                if not self.outcomes["load"].status.startswith("done"):
                    for part in pending:
                        self.outcomes[part].status = "not run: the model load did not finish"
                    return
                if pending[0] != "load":
                    pending = ["load", *pending]   # a fresh process needs the model again

    def run_worker(self, parts: list[str]) -> list[str]:
        """One worker process over ``parts``; returns the parts it did not get to."""
        command = self.worker_command(parts)
        self.log.write(f"\n$ {' '.join(command)}\n")
        self.log.flush()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put(None)],
                         daemon=True).start()
        todo = list(parts)
        current, deadline = None, time.monotonic() + BOOT_TIMEOUT_S
        tail: list[str] = []
        while True:
            deadline_now = min(deadline, self.started + self.args.total_s + 30)
            try:
                line = lines.get(timeout=max(0.1, deadline_now - time.monotonic()))
            except queue.Empty:
                line = ""
            if line is None:
                break
            if line:
                self.log.write(line)
                tail = (tail + [line])[-40:]
                if line.startswith(EVENT_MARKER):
                    current, deadline = self.handle_event(json.loads(line[len(EVENT_MARKER):]), todo, current,
                                                          deadline)
                continue
            if time.monotonic() >= deadline_now:
                what = current or "start-up (ComfyUI import)"
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                if current:
                    outcome = self.outcomes[current]
                    outcome.status = f"over budget: ended after {time.monotonic() - self.part_start:.0f} s"
                    outcome.seconds = time.monotonic() - self.part_start
                    todo.remove(current)
                    self.report_part(current)
                self.process_notes.append(f"worker for {', '.join(parts)} ended during {what} (over its time)")
                if not current:
                    self.fail_all(todo, "not run: the worker did not start in time")
                    return []
                return todo
        process.wait()
        self.log.flush()
        if current:   # the worker died inside a part
            outcome = self.outcomes[current]
            outcome.status = f"failed: the process ended (exit {process.returncode})"
            outcome.error = "".join(tail[-15:])
            todo.remove(current)
            self.report_part(current)
        if todo and process.returncode != 0 and not current:
            self.fail_all(todo, f"not run: the worker failed at start-up (exit {process.returncode})",
                          "".join(tail[-25:]))
            return []
        for part in todo:
            if self.outcomes[part].status == "not run":
                self.outcomes[part].status = "not run: an earlier part of its process failed"
        return []

    def fail_all(self, parts: list[str], status: str, error: str | None = None) -> None:
        for part in parts:
            self.outcomes[part].status, self.outcomes[part].error = status, error
        if error:
            print(f"[suite] {status}:\n{error}", flush=True)

    def handle_event(self, event: dict, todo: list[str], current, deadline):
        kind, part = event["event"], event["part"]
        if kind == "environment":
            if not self.environment:
                self.environment = event["lines"]
            self.process_notes.append(f"process {', '.join(todo)}: ComfyUI flags {' '.join(event['comfy_args'])}; "
                                      f"dynamic VRAM {event['dynamic_vram']}")
            return None, time.monotonic() + 3600
        if kind == "start":
            self.part_start = time.monotonic()
            budget = min(event["budget_s"], max(1.0, self.remaining_s()))
            print(f"[suite] {part}: started (budget {event['budget_s']:.0f} s)", flush=True)
            return part, time.monotonic() + budget * 1.2 + 10
        outcome = self.outcomes[part]
        if part == "load" and outcome.status == "done":   # the reload of a restarted process
            todo.remove(part)
            self.process_notes.append(f"model reloaded in a fresh process: {kind}, {event.get('seconds', 0):.0f} s")
            return None, time.monotonic() + 3600
        outcome.seconds = event.get("seconds")
        if kind == "done":
            outcome.result = event["result"]
            skipped = outcome.result.get("skipped")
            over = outcome.seconds is not None and outcome.seconds > outcome.budget
            outcome.status = f"skipped: {skipped}" if skipped else ("done, over budget" if over else "done")
        else:
            outcome.status, outcome.error = f"failed: {event['error']}", event.get("trace")
        todo.remove(part)
        self.report_part(part)
        return None, time.monotonic() + 3600

    def report_part(self, part: str) -> None:
        outcome = self.outcomes[part]
        seconds = f"{outcome.seconds:.1f} s" if outcome.seconds is not None else "-"
        print(f"[suite] {part}: {outcome.status} ({seconds} of {outcome.budget:.0f} s)", flush=True)
        if outcome.error and outcome.status.startswith("failed"):
            print(outcome.error, flush=True)
        from bench import gpu_report

        text = gpu_report.part_tables(part, self)
        if text:
            print("\n" + text + "\n", flush=True)
        self.write_outputs()

    def write_outputs(self) -> None:
        from bench import gpu_report

        (self.args.out / "gpu_suite.md").write_text(gpu_report.full_report(self))
        payload = {"command": self.args.command_line, "environment": self.environment,
                   "parts": {name: vars(outcome) for name, outcome in self.outcomes.items()}}
        (self.args.out / "gpu_suite.json").write_text(json.dumps(payload, indent=2, default=str))


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dry-run", action="store_true",
                        help="prove the command on the CPU: --device cpu --shape mid, small sizes, one timed run, "
                             "CPU budgets")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda, or cpu with --dry-run")
    parser.add_argument("--shape", choices=["smoke", "mid", "full"], help="default: full, or mid with --dry-run")
    parser.add_argument("--resolutions", type=int, nargs="+", help="default: 768 1024, or 128 256 with --dry-run")
    parser.add_argument("--video-frames", type=int, default=16)
    parser.add_argument("--video-resolution", type=int, help="default: 768, or 128 with --dry-run")
    parser.add_argument("--diffusers-steps", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--warmup", type=int, help="untimed runs first; default 1, or 0 with --dry-run")
    parser.add_argument("--repeats", type=int, help="timed runs (median reported); default 3, or 1 with --dry-run")
    parser.add_argument("--parts", nargs="+", choices=ALL_PARTS, default=list(ALL_PARTS))
    parser.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS",
                        help="override one part's time budget (repeatable)")
    parser.add_argument("--total-s", type=float, help=f"the whole run's budget; default {GPU_TOTAL_S} on the GPU")
    parser.add_argument("--cap-gib", type=float, default=16.0, help="GPU memory ComfyUI is left in the capped parts")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak, if the device name is not known")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE,
                        help="offline wheel bundle from bench/gpu_prepare.sh")
    parser.add_argument("--comfyui", type=Path, help="use this ComfyUI folder instead of the bundle's archive")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK,
                        help="scratch: unpacked ComfyUI, installed wheels, ComfyUI base folder")
    parser.add_argument("--out", type=Path, help="where the tables go; default $OUT, else bench/results/gpu_run")
    args = parser.parse_args(argv)
    args.command_line = " ".join(["bench/gpu_suite.sh", *(argv if argv is not None else sys.argv[1:])])
    dry = args.dry_run
    args.device = args.device or ("cpu" if dry else "cuda")
    args.shape = args.shape or ("mid" if dry else "full")
    args.resolutions = args.resolutions or ([128, 256] if dry else [768, 1024])
    args.video_resolution = args.video_resolution or (128 if dry else 768)
    args.warmup = (0 if dry else 1) if args.warmup is None else args.warmup
    args.repeats = (1 if dry else 3) if args.repeats is None else args.repeats
    if dry and args.video_frames == 16:
        args.video_frames = 4
    from e2p_core.imaging import MIN_WORKING_SIZE

    for resolution in (*args.resolutions, args.video_resolution):
        if resolution < MIN_WORKING_SIZE or resolution % 16:
            parser.error(f"resolution {resolution}: use a multiple of 16, at least {MIN_WORKING_SIZE}")
    if args.repeats < 1 or args.warmup < 0 or args.video_frames < 1:
        parser.error("--repeats and --video-frames must be >= 1, --warmup >= 0")
    budgets = dict(DRY_BUDGETS if args.device == "cpu" else GPU_BUDGETS)
    for item in args.budget:
        name, _, seconds = item.partition("=")
        if name not in budgets or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--budget {item!r}: use PART=SECONDS with PART one of {', '.join(budgets)}")
        budgets[name] = float(seconds)
    args.budgets = budgets
    args.total_s = args.total_s or (GPU_TOTAL_S if args.device == "cuda" else 3600)
    args.out = args.out or Path(os.environ.get("OUT") or REPO_ROOT / "bench" / "results" / "gpu_run")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    if "load" not in args.parts and any(p in MAIN_PARTS for p in args.parts):
        args.parts = ["load", *args.parts]
    args.parts = [p for p in ALL_PARTS if p in args.parts]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite = Suite(args)
    print(f"[suite] {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC, {machine_line()}",
          flush=True)
    print(f"[suite] {args.command_line}", flush=True)
    setup = suite.outcomes["setup"]
    start = time.monotonic()
    try:
        setup.result = install_missing(args.bundle, args.work_dir / "site")
        root, origin = find_comfyui(args)
        version = read_comfyui_version(root)
        if version is None:
            raise SystemExit(f"no ComfyUI at {root} ({origin}); copy the bundle (bench/gpu_prepare.sh) or pass "
                             "--comfyui DIR")
        os.environ["E2P_COMFYUI_DIR"] = str(root)
        setup.result.update({"comfyui": version, "comfyui_origin": origin, "comfyui_dir": str(root),
                             "machine": machine_line(), "python": sys.version.split()[0]})
        setup.status = "done"
    except SystemExit as error:
        setup.status, setup.error = "failed", str(error)
    setup.seconds = time.monotonic() - start
    suite.report_part("setup")
    if setup.status != "done":
        return 1
    main_parts = [p for p in args.parts if p in MAIN_PARTS]
    if main_parts:
        suite.run_group(main_parts)
    for part in (p for p in args.parts if p in CAPPED_PARTS):
        if part == "capped_dynamic" and args.device != "cuda":   # comfy-aimdo is CUDA-only: no process to start
            suite.outcomes[part].status = "skipped: dynamic VRAM needs CUDA"
            suite.report_part(part)
            continue
        suite.run_group([part])
    from bench import gpu_report

    suite.write_outputs()
    print("\n" + gpu_report.full_report(suite), flush=True)
    print(f"[suite] tables written to {args.out / 'gpu_suite.md'} (raw: gpu_suite.json, log: gpu_suite.log); "
          f"{time.monotonic() - suite.started:.0f} s in all", flush=True)
    failed = [name for name, outcome in suite.outcomes.items() if outcome.status.startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
