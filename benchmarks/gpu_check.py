"""The GPU machine's check: everything the project measures on a GPU, in one prepared run.

    bash benchmarks/gpu_check "$OUT"                      # on the GPU machine (≈ 6 minutes)
    bash benchmarks/gpu_check /tmp/gpu-dry --device cpu   # a dry pass of every step on a CPU

Steps, each written under the output folder as soon as it ends (a crash or a time limit keeps
what came before; ``summary.md`` says what ran, how long it took and whether it passed):

1. ``preflight.json``: Python, torch, CUDA/cuDNN, the device, bf16 support, which of the
   project's dependencies import (Ray comes from the bundle of ``../shared/device/``).
2. ``pytest-cuda.txt``: ``pytest -m cuda`` (fused ≈ separate runs on CUDA in fp32 and bf16, a
   fused epoch that never waits for the GPU, device draws = CPU draws, the per-view cache on the
   device = the online teacher).
3. ``census.json``: what one fused epoch asks of the device for resnet8x4 members on
   CIFAR-shaped data — aggregate ops (N = 1 vs 8, :class:`cist_bench.engine.census.Census`) and,
   on a GPU, the synchronisations ``torch.cuda.set_sync_debug_mode("warn")`` reports in the steps.
4. ``perf-packs.md`` / ``perf-packs.json``: ``benchmarks/packs.py`` — resnet32x4 → resnet8x4 on
   CIFAR-100-shaped data: one run, sequential N, fused N ∈ {8, 40}, K processes sharing the GPU
   (fractional GPUs), teacher online and per-view; whole-run and steady (warm, median over
   epochs) aggregate samples/s. Copy the rows into ``reports/`` to commit them.
5. ``dry-run.txt``: ``cist-bench run suites/cifar100.yaml --dry-run`` estimating GPU-hours from
   those rows.
6. ``ray-suite.txt``: with Ray importable, ``cist-bench run`` of a small CIFAR-shaped suite
   (32×32 JPEGs in the ImageNet folder layout, written here) through Ray Tune (fused packs)
   and through Ray Train (executor ``train``) on the GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


class Check:
    def __init__(self, out: Path, device: str, budget: float) -> None:
        self.out, self.device, self.budget = out, device, budget
        self.t0 = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        self.summary = out / "summary.md"
        if not self.summary.is_file():
            self.summary.write_text(f"# gpu_check on {platform.node()} ({device})\n\n| step | result | seconds |\n"
                                    "|---|---|---:|\n")

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def step(self, name: str, fn: Callable[[], str], *, needs: float) -> None:
        if self.left() < needs:
            self._row(name, f"skipped: {self.left():.0f} s of the budget left, needs ≈{needs:.0f}", 0.0)
            return
        t = time.perf_counter()
        try:
            result = fn()
        except Exception as exc:
            (self.out / f"{name}.error.txt").write_text(traceback.format_exc())
            result = f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"
        self._row(name, result, time.perf_counter() - t)

    def _row(self, name: str, result: str, seconds: float) -> None:
        with self.summary.open("a") as f:
            f.write(f"| {name} | {result.replace('|', '/')} | {seconds:.1f} |\n")
        print(f"[gpu_check] {name}: {result} ({seconds:.1f} s)", flush=True)


def _run(cmd: list[str], out: Path, timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """A command with its output written to ``out`` (also when it times out)."""
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})
        text, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        text = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        text += f"\n[timed out after {timeout:.0f} s]"
        rc = 124
    out.write_text(f"$ {' '.join(cmd)}\n{text}")
    return rc, text


# --------------------------------------------------------------------------------- the steps


def preflight(check: Check) -> str:
    import importlib

    import torch

    info: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
                  "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                  "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
    for name in ("ray", "pydantic", "pyarrow", "timm", "pandas", "yaml", "sklearn", "PIL"):
        try:
            module = importlib.import_module(name)
            info[f"import {name}"] = getattr(module, "__version__", "ok")
        except Exception as exc:
            info[f"import {name}"] = f"missing ({type(exc).__name__})"
    (check.out / "preflight.json").write_text(json.dumps(info, indent=1))
    if check.device == "cuda" and not info["cuda_available"]:
        raise RuntimeError("no GPU visible to torch")
    return f"torch {info['torch']}, {info.get('device', 'CPU')}, bf16 {info.get('bf16')}, ray {info['import ray']}"


def cuda_tests(check: Check) -> str:
    rc, text = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/"],
                    check.out / "pytest-cuda.txt", timeout=min(150, check.left()))
    last = [line for line in text.splitlines() if line.strip()][-1:] or ["no output"]
    if rc not in (0, 5) or (check.device == "cuda" and "skipped" in last[0] and "passed" not in last[0]):
        return f"FAILED (rc {rc}): {last[0]}"
    return last[0]


def census(check: Check) -> str:
    """Ops and synchronisations of one fused epoch's steps, N = 1 and 8, resnet8x4 members."""
    import tempfile
    import warnings

    import packs
    import torch

    from cist_bench.engine import fused
    from cist_bench.engine.census import Census

    args = argparse.Namespace(work=Path(tempfile.mkdtemp(prefix="gpu-check-census-")), teacher="resnet8",
                              student="resnet8x4" if check.device == "cuda" else "resnet8",
                              val=64, epochs=1, batch_size=64, amp="off", device=check.device)
    packs.synthetic_cifar(64 * 6 + args.val, 64)
    packs.prepare(args)
    os.environ["CIST_BENCH_CACHE"] = str(args.work / "cache")
    result: dict = {}
    original = fused._Pack.train_epoch
    for label, n in (("kd", 1), ("kd", 8), ("mixed", 8)):
        seen: dict = {}

        def counted(self, *a, _seen=seen, **k):
            if check.device == "cuda":
                torch.cuda.synchronize()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if check.device == "cuda":
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    with Census() as c:
                        out = original(self, *a, **k)
                finally:
                    if check.device == "cuda":
                        torch.cuda.set_sync_debug_mode("default")
            _seen["census"] = c
            _seen["cuda_syncs"] = [str(w.message)[:160] for w in caught if "synchroniz" in str(w.message)]
            return out

        fused._Pack.train_epoch = counted
        try:
            specs = packs.make_specs(args, n, views=False)
            if label == "kd":  # members of one loss: the step's cost should not grow with N
                specs = [dataclasses.replace(s, loss=specs[0].loss) for s in specs]
            packs.run_fused(specs, args.work / "cache")
        finally:
            fused._Pack.train_epoch = original
        c = seen["census"]
        result[f"{label} N={n}"] = {"ops": c.op_count, "host_reads": c.sync_count,
                                    "cuda_syncs": len(seen["cuda_syncs"]),
                                    "cuda_sync_examples": seen["cuda_syncs"][:5], "top_ops": c.ops.most_common(8)}
    one, eight, mixed = result["kd N=1"], result["kd N=8"], result["mixed N=8"]
    result["ops_ratio_8_over_1"] = eight["ops"] / one["ops"]
    (check.out / "census.json").write_text(json.dumps(result, indent=1))
    return (f"ops kd N=8/N=1 {result['ops_ratio_8_over_1']:.2f} (8 different losses: "
            f"{mixed['ops'] / one['ops']:.2f}); syncs in the steps (cuda) {one['cuda_syncs']} / "
            f"{eight['cuda_syncs']} / {mixed['cuda_syncs']}; host reads {one['host_reads']} / "
            f"{eight['host_reads']} / {mixed['host_reads']}")


def throughput(check: Check) -> str:
    gpu = check.device == "cuda"
    cmd = [sys.executable, "benchmarks/packs.py", "--device", check.device, "--output",
           str(check.out / "perf-packs.md"), "--processes-up-to", "1", "--sequential-up-to", "8"]
    cmd += (["--sizes", "1", "8", "40", "--amp", "off", "--share", "4"] if gpu else
            ["--sizes", "1", "2", "--train", "300", "--val", "50", "--test", "50", "--share", "2",
             "--threads", "1"])
    rc, text = _run(cmd, check.out / "perf-packs.log", timeout=max(30.0, check.left() - 100))
    rows = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    if not rows:
        raise RuntimeError(f"no rows (rc {rc}); see perf-packs.log")
    one = next((r for r in rows if r["n"] == 1 and r["mode"] == "sequential pack" and r["teacher"] == "online"),
               None)
    best = max((r for r in rows if r["mode"] == "fused pack" and "error" not in r), default=None,
               key=lambda r: r.get("steady_samples_per_s") or 0)
    share = next((r for r in rows if r["mode"].startswith("shared") and "error" not in r), None)
    parts = [f"{len(rows)} rows (rc {rc})"]
    if one and best and one.get("steady_samples_per_s"):
        parts.append(f"fused N={best['n']} ({best['teacher']}) steady ÷ one run: "
                     f"{best['steady_samples_per_s'] / one['steady_samples_per_s']:.2f}")
    if one and share and one.get("steady_samples_per_s") and share.get("steady_samples_per_s"):
        ratio = share["steady_samples_per_s"] / one["steady_samples_per_s"]
        parts.append(f"{share['mode']} ÷ one run: {ratio:.2f}")
    return "; ".join(parts)


def dry_run(check: Check) -> str:
    measured = check.out / "perf-packs.json"
    cmd = [sys.executable, "-m", "cist_bench.cli", "run", "suites/cifar100.yaml", "--dry-run"]
    if measured.is_file():
        cmd += ["--throughput-from", str(measured)]
    rc, text = _run(cmd, check.out / "dry-run.txt", timeout=min(90, check.left()))
    line = next((x.strip() for x in text.splitlines() if "estimated compute" in x), f"rc {rc}, no estimate line")
    return line if rc == 0 else f"FAILED (rc {rc}): {line}"


SUITE = """\
# gpu_check: a small CIFAR-shaped suite (32x32 JPEGs in the ImageNet folder layout) on the GPU
name: gpu_check
seeds: [0, 1]
train:
  epochs: 2
  batch_size: 64
  eval_batch_size: 256
  optimizer: {{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}}
  schedule: {{name: cosine}}
  amp: "{amp}"
resources: {{use_gpu: {gpu}, gpus_per_worker: {gpus}}}
methods:
  kd: {{loss: kd, hparams: {{temperature: 4.0}}}}
  cist: {{loss: cist}}
  dkd: {{loss: dkd}}
tasks:
  imagenet:
    options: {{data_root: data, image_size: 32, val_size: 40}}
    pairs:
      - teacher: {{model: {{name: resnet8}}, train: {{epochs: 1}}, seed: 0}}
        student: {{name: resnet8x4}}
"""


def _write_images(root: Path, classes: int = 10, train: int = 24, val: int = 6) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img_{i}.JPEG", quality=90)


def ray_suite(check: Check) -> str:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "skipped: Ray does not import here (carry the bundle of ../shared/device/)"
    work = check.out / "ray-suite"
    _write_images(work / "data")
    (work / "suite.yaml").write_text(SUITE.format(amp="off", gpu=str(check.device == "cuda").lower(),
                                                  gpus=0.25 if check.device == "cuda" else 1))
    results = []
    for label, extra in (("tune", []), ("train", ["--executor", "train", "--pack", "off"])):
        rc, _ = _run([sys.executable, "-m", "cist_bench.cli", "run", str(work / "suite.yaml"), "--output",
                        str(work / f"out-{label}"), "--report", str(work / f"report-{label}.md"), *extra],
                       check.out / f"ray-suite-{label}.txt", timeout=max(30.0, min(150, check.left() - 5)),
                       env={"RAY_AUTH_MODE": "disabled"})
        records = work / f"out-{label}" / "records"
        ok = sum(1 for f in records.glob("*.json") if json.loads(f.read_text()).get("status") == "ok") \
            if records.is_dir() else 0
        results.append(f"{label}: rc {rc}, {ok} ok records")
    return "; ".join(results)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="where everything is written (the GPU machine's $OUT)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--budget", type=float, default=360.0, help="seconds for every step together")
    p.add_argument("--steps", nargs="+", default=None,
                   choices=["preflight", "cuda-tests", "census", "throughput", "dry-run", "ray-suite"])
    args = p.parse_args()
    check = Check(args.out, args.device, args.budget)
    steps = [("preflight", preflight, 1), ("cuda-tests", cuda_tests, 30), ("census", census, 20),
             ("throughput", throughput, 60), ("dry-run", dry_run, 10), ("ray-suite", ray_suite, 40)]
    for name, fn, needs in steps:
        if args.steps is None or name in args.steps:
            check.step(name, lambda fn=fn: fn(check), needs=needs)


if __name__ == "__main__":
    main()
