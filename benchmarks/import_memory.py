"""Peak memory of importing (and of verifying) a full-size released checkpoint.

    python benchmarks/import_memory.py --work /tmp/import-mem [--keep]

1. Writes a synthetic ``audioldm_m_rewas_vggsound.ckpt`` in the released layout at full size
   (every key and shape of ``tests/fixtures/reference/manifests/…json``: 2688 tensors, one
   storage each, ≈ 5.4 GB, wrapped as ``{"state_dict": …}`` like the Lightning file, plus an
   assumed Adam state of the adapter, ≈ 1.5 GB: the released file is ≈ 7.6 GB). The
   tensors are file-backed (``torch.from_file`` on a sparse file), so writing it does not
   need 7.6 GB of RAM either.
2. Runs, each in a fresh process, ``export.release.verify_layout`` (the post-download key
   and shape check) and ``python -m training.import_checkpoints`` on it, sampling
   ``/proc/<pid>/status`` every 50 ms: peak ``VmHWM`` (resident, including pages of the
   memory-mapped checkpoint, which the kernel can drop at any time) and peak ``RssAnon``
   (memory that is really the process's own).

Prints a Markdown table and writes ``import_memory.json`` into ``--work``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rewas_rt.errors import cli_main  # noqa: E402 - small, standard library only

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "fixtures" / "reference" / "manifests" / "audioldm_m_rewas_vggsound.ckpt.json"
NAME = "audioldm_m_rewas_vggsound.ckpt"


def write_synthetic(path: Path, manifest: Path = MANIFEST) -> int:
    import torch

    keys = json.loads(manifest.read_text())["keys"]
    itemsize = {"float32": 4, "float64": 8, "int64": 8, "int32": 4, "float16": 2}
    biggest = max(max(1, _numel(s)) * itemsize[d] for s, d in keys.values())
    backing = path.with_suffix(".zeros")
    with open(backing, "wb") as f:  # sparse: no disk, no RAM
        f.truncate(biggest)
    def zeros(shape, dtype):
        n = _numel(shape)
        return torch.from_file(str(backing), shared=False, size=max(n, 1), dtype=getattr(torch, dtype))[:n].view(shape)

    sd = {k: zeros(shape, dtype) for k, (shape, dtype) in keys.items()}
    from rewas_rt.ddim import linear_schedule

    betas, alphas_cumprod = linear_schedule()  # the import checks these two buffers
    sd["betas"], sd["alphas_cumprod"] = torch.tensor(betas, dtype=torch.float32), torch.tensor(alphas_cumprod,
                                                                                              dtype=torch.float32)
    sd["scale_factor"] = torch.tensor(1.0)
    # The released file (≈ 7.6 GB) holds more than the state dict's ≈ 5.4 GB. Assumed here: Lightning's
    # Adam state of the trained part (the adapter, control_model.*): two moments per parameter.
    adam = {i: {"step": torch.tensor(1.0), "exp_avg": zeros(shape, dtype), "exp_avg_sq": zeros(shape, dtype)}
            for i, (k, (shape, dtype)) in enumerate(keys.items()) if k.startswith("control_model.")}
    torch.save({"state_dict": sd, "global_step": 0, "optimizer_states": [{"state": adam, "param_groups": []}]}, path)
    backing.unlink()
    return path.stat().st_size


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmHWM", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def measure(cmd: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
    while proc.poll() is None:
        for k, v in _status(proc.pid).items():
            peak[k] = max(peak[k], v)
        time.sleep(0.05)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}")
    return {"seconds": round(time.perf_counter() - t0, 1), **{f"peak_{k}": v for k, v in peak.items()},
            "output_tail": out.strip().splitlines()[-3:]}


@cli_main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="scratch folder (≈ 11 GB free needed)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint and the imported files")
    args = p.parse_args(argv)
    src, out = args.work / "src", args.work / "canonical"
    src.mkdir(parents=True, exist_ok=True)
    ckpt = src / NAME
    t0 = time.perf_counter()
    if not ckpt.is_file():
        print(f"writing {ckpt} …", flush=True)
        write_synthetic(ckpt)
    size = ckpt.stat().st_size
    print(f"{ckpt}: {size / 1e9:.2f} GB ({time.perf_counter() - t0:.0f}s)", flush=True)
    verify = [sys.executable, "-c",
              "import sys; from pathlib import Path; from export import release as R; "
              f"s = next(x for x in R.SOURCES if x.name == {NAME!r}); "
              f"print(R.verify_layout(s, Path({str(ckpt)!r}), None, False), 'keys verified')"]
    results = {"file_bytes": size,
               "verify_layout": measure(verify),
               "import_checkpoints": measure([sys.executable, "-m", "training.import_checkpoints", "--src", str(src),
                                              "--out", str(out)])}
    results["canonical_bytes"] = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    results["machine_ram_bytes"] = mem
    (args.work / "import_memory.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nfull-size {NAME} ({size / 2**30:.2f} GiB), machine RAM {mem / 2**30:.1f} GiB\n")
    print("| step | seconds | peak RSS (VmHWM) | peak RssAnon | peak RssFile |\n|---|---|---|---|---|")
    for step in ("verify_layout", "import_checkpoints"):
        r = results[step]
        print(f"| {step} | {r['seconds']} | {r['peak_VmHWM'] / 2**30:.2f} GiB | {r['peak_RssAnon'] / 2**30:.2f} GiB "
              f"| {r['peak_RssFile'] / 2**30:.2f} GiB |")
    if not args.keep:
        ckpt.unlink()
        for f in out.glob("*"):
            f.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
