"""What packs save: N runs of one teacher/student pair on one device, trained one run per
process, one after another in one process (a sequential pack) and in one stacked
forward/backward (a fused pack), with the teacher online or gathered from its per-view cache.

    .venv/bin/python benchmarks/packs.py                       # CPU rows → reports/perf-packs.md
    python benchmarks/packs.py --device cuda --sizes 1 8 40    # on a GPU machine (no Ray needed;
                                                               # benchmarks/gpu_check runs it there)

The engine is the real one (``train_run``, ``train_fused``, the CIFAR-100 task with its
pad-crop-flip augmentation and the teacher-output caches); only the images are synthetic:
CIFAR-shaped uint8 tensors put where the CIFAR loader would return the decoded files (this
benchmark measures throughput, not accuracy), and the teacher is a randomly initialised
checkpoint of its architecture. Runs differ in loss (kd, dkd, cist, ctkd, dist, kd+ls, dtkd,
ce in turn), seed and learning rate, as a campaign's runs of one pair do.

Every mode trains the same N runs from a warm start (the data and, for the per-view rows, the
teacher's cache are on disk already; building the cache is reported on its own line). Two
numbers per row: the **aggregate student samples per second** of the device, N × epochs ×
training samples over the wall time of the whole thing (set-up, training, every epoch's
validation, the test evaluation), and its ratio to one run per process; and the **steady**
rate, training only once warm (the median over the epochs after the first of the epoch's
training samples over its training seconds), and its ratio to one run's steady rate.

Modes: one run per process (a fresh process per run), a sequential pack (one process, one run
after another), a fused pack (one stacked forward/backward, :mod:`cist_bench.engine.fused`) and
the device shared by K processes at once (``--share K``: what Ray does with K trials of
``gpus_per_worker: 1/K``). Rows are written as they are measured (a crash keeps the rows before
it), a row that fails says why.

Without ``--output`` the rows replace those of the same device in ``reports/perf-packs.md`` (and
``reports/perf-packs.json``, which ``cist-bench run --dry-run`` estimates compute from), so the
CPU rows and a GPU machine's rows live side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "perf-packs.md"
LOSSES = [("kd", {}), ("dkd", {}), ("cist", {}), ("ctkd", {}), ("dist", {}),
          ("kd", {"logit_standardize": True, "temperature": 2.0}), ("dtkd", {}), ("ce", {})]
BEGIN, END = "<!-- rows:{device} -->", "<!-- /rows:{device} -->"


def synthetic_cifar(n_train: int, n_test: int) -> None:
    """Serve CIFAR-shaped random images where ``load_cifar`` returns decoded CIFAR files."""
    import cist_bench.data.cifar as cifar

    def load(variant: str, root: str, train: bool, download: bool) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(1 if train else 2)
        n = n_train if train else n_test
        classes = 100 if variant == "cifar100" else 10
        return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                torch.randint(0, classes, (n,), generator=g))

    cifar.load_cifar = load


def make_specs(args: argparse.Namespace, n: int, *, views: bool) -> list:
    from cist_bench.config.resolve import resolve_run
    from cist_bench.spec import (
        LossSpec,
        ModelSpec,
        OptimizerSpec,
        ResourceSpec,
        RunSpec,
        ScheduleSpec,
        TaskSpec,
        TeacherSpec,
        TrainSpec,
    )

    task = TaskSpec("cifar100", {"data_root": str(args.work / "cifar"), "val_size": args.val,
                                 "augment": True})
    teacher = TeacherSpec(model=ModelSpec(args.teacher), checkpoint=str(args.work / "teacher.pt"),
                          cache_views=views, cache_dtype="float16" if views else "float32")
    specs = []
    for i in range(n):
        train = TrainSpec(epochs=args.epochs, batch_size=args.batch_size, eval_batch_size=512,
                          optimizer=OptimizerSpec(name="sgd", lr=0.05 * (1 + (i % 3)) / 2, momentum=0.9,
                                                  weight_decay=5e-4),
                          schedule=ScheduleSpec(name="cosine"), amp=args.amp)
        specs.append(resolve_run(RunSpec(task=task, student=ModelSpec(args.student),
                                         loss=LossSpec(*LOSSES[i % len(LOSSES)]), train=train, teacher=teacher,
                                         seed=i, resources=ResourceSpec(use_gpu=args.device == "cuda"))))
    return specs


def prepare(args: argparse.Namespace) -> None:
    """The teacher's checkpoint (random weights of its architecture) and the data."""
    from cist_bench.models import create_model

    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "teacher.pt"
    if not path.is_file():
        torch.manual_seed(0)
        torch.save(create_model(args.teacher, num_classes=100, in_chans=3).state_dict(), path)


def _teacher(spec, cache: Path):
    from cist_bench.runner.teachers import ensure_teacher

    return ensure_teacher(spec.teacher, spec.task, cache_root=cache)


def _epochs(outcome) -> list[tuple[int, float]]:
    """(training samples, training seconds) of each epoch of a run (validation not included)."""
    return [(h["train_samples"], h["train_seconds"]) for h in outcome.history]


def run_sequential(specs: list, cache: Path) -> list[list[tuple[int, float]]]:
    from cist_bench.engine import train_run

    teacher = _teacher(specs[0], cache)
    return [_epochs(train_run(spec, teacher=teacher, cache_root=cache)) for spec in specs]


def run_fused(specs: list, cache: Path) -> list[list[tuple[int, float]]]:
    from cist_bench.engine import Hooks
    from cist_bench.engine.fused import train_fused

    teacher = _teacher(specs[0], cache)
    out = []
    for result in train_fused(specs, [Hooks() for _ in specs], teacher=teacher, cache_root=cache):
        if isinstance(result, Exception):
            raise result
        out.append(_epochs(result))
    return out


def _child_command(args: argparse.Namespace, specs: list, threads: int) -> list[str]:
    from cist_bench.spec import to_dict

    return [sys.executable, __file__, "--child", json.dumps([to_dict(s) for s in specs]), "--work", str(args.work),
            "--train", str(args.train), "--test", str(args.test), "--threads", str(threads)]


def _child_epochs(stdout: str) -> list[list[tuple[int, float]]]:
    line = [x for x in stdout.splitlines() if x.startswith("EPOCHS ")][-1]
    return [[tuple(e) for e in run] for run in json.loads(line[len("EPOCHS "):])]


def run_processes(args: argparse.Namespace, specs: list, cache: Path) -> list[list[tuple[int, float]]]:
    """Each run in a fresh Python process (import, data, teacher and model set-up every time)."""
    out = []
    for spec in specs:
        done = subprocess.run(_child_command(args, [spec], args.threads), check=True, capture_output=True,
                              text=True)
        out += _child_epochs(done.stdout)
    return out


def run_shared(args: argparse.Namespace, specs: list, cache: Path) -> list[list[tuple[int, float]]]:
    """K processes at once on one device, the runs dealt out among them, each process training
    its runs one after another: what Ray does with K trials of ``gpus_per_worker: 1/K``."""
    k = min(args.share, len(specs))
    shares = [specs[i::k] for i in range(k)]
    procs = [subprocess.Popen(_child_command(args, share, max(1, args.threads // k)), stdout=subprocess.PIPE,
                              text=True) for share in shares]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"a process sharing the device failed: {[p.returncode for p in procs]}")
    return [run for o in outs for run in _child_epochs(o)]


def child(args: argparse.Namespace) -> None:
    from cist_bench.spec import RunSpec, from_dict

    specs = [from_dict(RunSpec, d) for d in json.loads(args.child)]
    print("EPOCHS " + json.dumps(run_sequential(specs, args.work / "cache")), flush=True)


def steady(mode: str, runs: list[list[tuple[int, float]]], k: int = 1) -> float | None:
    """Aggregate training samples/s once warm: per epoch after the first, the runs' samples over
    their training seconds (summed when the runs take turns; per process, then summed, when K
    processes share the device; the pack's shared seconds when fused); the median over epochs."""
    epochs = len(runs[0])
    rates = []
    for e in range(1 if epochs > 1 else 0, epochs):
        if mode == "fused pack":
            rates.append(sum(r[e][0] for r in runs) / runs[0][e][1])
        elif mode.startswith("shared device"):
            groups = [runs[i::k] for i in range(k)]  # not the dealing order, the same totals
            rates.append(sum(sum(r[e][0] for r in g) / sum(r[e][1] for r in g) for g in groups if g))
        else:
            rates.append(sum(r[e][0] for r in runs) / sum(r[e][1] for r in runs))
    rates.sort()
    return rates[len(rates) // 2] if rates else None


def measure(args: argparse.Namespace, mode: str, n: int, views: bool) -> dict:
    specs = make_specs(args, n, views=views)
    cache = args.work / "cache"
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if mode.startswith("shared device"):
        runs = run_shared(args, specs, cache)
    else:
        runs = {"one run per process": lambda: run_processes(args, specs, cache),
                "sequential pack": lambda: run_sequential(specs, cache),
                "fused pack": lambda: run_fused(specs, cache)}[mode]()
    if args.device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    samples = sum(e[0] for run in runs for e in run)
    return {"mode": mode, "n": n, "teacher": "per-view cache" if views else "online", "wall": wall,
            "samples_per_s": samples / wall, "steady_samples_per_s": steady(mode, runs, args.share)}


def build_view_cache(args: argparse.Namespace) -> float:
    """The teacher's logits for every (image, view) of the training split, once (timed)."""
    from cist_bench.data import create_task
    from cist_bench.engine.batches import resolve_device
    from cist_bench.engine.distributed import DistInfo
    from cist_bench.engine.teacher import TeacherRuntime

    spec = make_specs(args, 1, views=True)[0]
    teacher = _teacher(spec, args.work / "cache")
    task = create_task(spec.task.name, **spec.task.options)
    runtime = TeacherRuntime(teacher, task, spec.teacher, spec.task, device=resolve_device(spec.resources.use_gpu,
                             DistInfo()), amp=spec.train.amp, cache_root=args.work / "cache")
    t0 = time.perf_counter()
    runtime.outputs("train")
    return time.perf_counter() - t0


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def render(args: argparse.Namespace, rows: list[dict], cache_seconds: float | None) -> str:
    name = device_name(args.device)
    threads = f", {args.threads} torch threads" if args.device == "cpu" else ""
    lines = [f"### {name}{threads}",
             "",
             f"{args.teacher} → {args.student}, {args.train - args.val} training images × {args.epochs} "
             f"epochs, batch {args.batch_size}, val {args.val}, test {args.test}, amp {args.amp}; torch "
             f"{torch.__version__}; {dt.date.today().isoformat()}. Command: `{args.command}`",
             "",
             "| runs N | mode | teacher | wall s | student samples/s | × one run per process "
             "| steady samples/s (training only, warm) | × one run, steady |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    base = {(r["n"], r["teacher"]): r["samples_per_s"] for r in rows if r["mode"] == "one run per process"}
    base_any = {r["n"]: r["samples_per_s"] for r in rows if r["mode"] == "one run per process"}
    # steady: against one run of the same teacher mode (N = 1, one after another: the device's
    # rate for a single run once warm)
    one = {r["teacher"]: r.get("steady_samples_per_s") for r in rows
           if r["n"] == 1 and r["mode"] in ("sequential pack", "one run per process")}
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['mode']} | {r['teacher']} | failed: {r['error']} | | | | |")
            continue
        ref = base.get((r["n"], r["teacher"])) or base_any.get(r["n"])
        ratio = f"{r['samples_per_s'] / ref:.2f}" if ref else "–"
        st, st_ref = r.get("steady_samples_per_s"), one.get(r["teacher"]) or one.get("online")
        st_cell = f"{st:.0f}" if st else "–"
        st_ratio = f"{st / st_ref:.2f}" if st and st_ref else "–"
        lines.append(f"| {r['n']} | {r['mode']} | {r['teacher']} | {r['wall']:.1f} | {r['samples_per_s']:.0f} "
                     f"| {ratio} | {st_cell} | {st_ratio} |")
    if cache_seconds is not None:
        lines += ["", f"Building the per-view teacher cache once (162 views × {args.train - args.val} images, "
                      f"float16): {cache_seconds:.1f} s, not counted in the rows above."]
    return "\n".join(lines) + "\n"


HEADER = """# Packs: many runs of one pair on one device

Generated by `benchmarks/packs.py` (see its docstring for what is measured). Each device's rows
are replaced when the benchmark runs again on it; the quickstart's wall time with and without
packing is measured by the command written under it.

"""


def write(report: Path, device_key: str, body: str) -> None:
    text = report.read_text() if report.is_file() else HEADER
    begin, end = BEGIN.format(device=device_key), END.format(device=device_key)
    block = f"{begin}\n{body}{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + "\n" + rest.split(end, 1)[1].lstrip("\n")
    else:
        marker = "<!-- quickstart -->"
        text = text.replace(marker, block + "\n" + marker) if marker in text \
            else text.rstrip("\n") + "\n\n" + block
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)


def write_json(path: Path, device_key: str, block: dict) -> None:
    """The rows ``cist-bench run --dry-run`` estimates compute from (one block per device)."""
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[device_key] = block
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def save(args: argparse.Namespace, report: Path, rows: list[dict], cache_seconds: float | None) -> None:
    gpu = args.device == "cuda"
    write(report, "cuda" if gpu else "cpu", render(args, rows, cache_seconds))
    write_json(report.with_suffix(".json"), "cuda" if gpu else "cpu", {
        "device": device_name(args.device), "teacher": args.teacher, "student": args.student,
        "task": "cifar100 (synthetic images)", "epochs": args.epochs, "batch_size": args.batch_size,
        "command": args.command, "date": dt.date.today().isoformat(), "torch": torch.__version__,
        "rows": [r for r in rows if "error" not in r]})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="pack sizes N (CPU: 1 8; cuda: 1 8 40)")
    p.add_argument("--teacher", default=None, help="CPU: resnet8; cuda: resnet32x4")
    p.add_argument("--student", default=None, help="CPU: resnet8; cuda: resnet8x4")
    p.add_argument("--train", type=int, default=None, help="synthetic training pool (val carved from it)")
    p.add_argument("--val", type=int, default=None)
    p.add_argument("--test", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--amp", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU; default all cores)")
    p.add_argument("--processes-up-to", type=int, default=8,
                   help="measure one run per process for N up to this (it costs N process starts)")
    p.add_argument("--sequential-up-to", type=int, default=None,
                   help="measure the sequential pack for N up to this (default: every N)")
    p.add_argument("--share", type=int, default=None,
                   help="K processes sharing the device (fractional GPUs; default 4 on cuda, off on cpu)")
    p.add_argument("--modes", nargs="+", default=None,
                   choices=["processes", "sequential", "fused", "shared"], help="which modes (default all)")
    p.add_argument("--no-views", action="store_true", help="teacher online only (no per-view cache rows)")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    gpu = args.device == "cuda"
    defaults = {"sizes": [1, 8, 40] if gpu else [1, 8], "teacher": "resnet32x4" if gpu else "resnet8",
                "student": "resnet8x4" if gpu else "resnet8", "train": 10000 if gpu else 1100,
                "val": 500 if gpu else 100, "test": 1000 if gpu else 200, "epochs": 3 if gpu else 2,
                "share": 4 if gpu else 0, "sequential_up_to": 1 << 30}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.threads = args.threads or (os.cpu_count() or 1)
    torch.set_num_threads(args.threads)
    if args.child is not None:
        synthetic_cifar(args.train, args.test)
        child(args)
        return
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU here")
    args.command = " ".join(["python benchmarks/packs.py", *sys.argv[1:]])
    temp = tempfile.TemporaryDirectory(prefix="cist-packs-") if args.work is None else None
    args.work = Path(temp.name) if temp else args.work
    os.environ["CIST_BENCH_CACHE"] = str(args.work / "cache")
    synthetic_cifar(args.train, args.test)
    prepare(args)
    run_sequential(make_specs(args, 1, views=False), args.work / "cache")  # warm: val/test caches, imports
    cache_seconds = None if args.no_views else build_view_cache(args)
    report = args.output or REPORT
    wanted = set(args.modes or ["processes", "sequential", "fused", "shared"])
    rows = []
    for n in args.sizes:
        modes = ((["one run per process"] if n <= args.processes_up_to and "processes" in wanted else [])
                 + (["sequential pack"] if n <= args.sequential_up_to and "sequential" in wanted else [])
                 + (["fused pack"] if "fused" in wanted else [])
                 + ([f"shared device ({args.share} processes)"] if args.share > 1 and n >= args.share
                    and "shared" in wanted else []))
        for mode in modes:
            for views in (False, True):
                if views and (args.no_views or mode == "one run per process" or mode.startswith("shared")):
                    continue
                try:
                    row = measure(args, mode, n, views)
                except Exception as exc:
                    row = {"mode": mode, "n": n, "teacher": "per-view cache" if views else "online",
                           "wall": float("nan"), "samples_per_s": 0.0, "steady_samples_per_s": None,
                           "error": f"{type(exc).__name__}: {exc}"[:300]}
                print(json.dumps(row), flush=True)
                rows.append(row)
                save(args, report, rows, cache_seconds)  # as it goes: a crash keeps the rows before it
    print(render(args, rows, cache_seconds))
    if temp:
        temp.cleanup()


if __name__ == "__main__":
    main()
