# benchmarks/peak.py: the machine's fp32 compute ceiling for bench_train_step.py.
#
# Three numbers, all for a given thread count:
#   - the theoretical peak, cores x clock x fp32 FLOP/cycle/core, with the cores
#     and the clock read from /proc/cpuinfo (the clock is the 'cpu MHz' the kernel
#     or the hypervisor reports, not a measured boost clock) and FLOP/cycle from
#     the vector ISA and the microarchitecture (table in flop_per_cycle());
#   - a cross-check of both factors by clock_probe.c (compiled here with cc): the
#     clock the cores really run at and the FMA FLOP/cycle they really sustain,
#     and the same peak at that measured clock;
#   - the achievable rate of one large fp32 matrix product (sgemm), timed with
#     torch.mm and with numpy.dot on the same threads.
# Also names the BLAS libraries a process has mapped (/proc/self/maps), which is
# the only reliable way to tell what torch and numpy really call.
#
# Usable alone: /usr/bin/python3 benchmarks/peak.py [--threads N] [--n 2048]
# (set OMP_NUM_THREADS before the interpreter starts for numpy's BLAS to follow).
import os
import re
import subprocess
import time


def _cpuinfo_blocks():
    """/proc/cpuinfo as a list of {key: value}, one per logical CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return []
    blocks = []
    for chunk in text.strip().split("\n\n"):
        d = {}
        for line in chunk.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                d[k.strip()] = v.strip()
        if d:
            blocks.append(d)
    return blocks


def _lscpu():
    """lscpu's 'Field: value' lines as a dict (empty when lscpu is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True,
                             env=dict(os.environ, LC_ALL="C")).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    d = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            d[k.strip()] = v.strip()
    return d


def cpu_facts():
    """What the peak is computed from: vendor, family, model, flags, logical CPUs,
    physical cores, clock (MHz) and where each came from."""
    blocks = _cpuinfo_blocks()
    ls = _lscpu()
    b0 = blocks[0] if blocks else {}
    facts = {
        "model_name": b0.get("model name", ls.get("Model name", "unknown")),
        "vendor": b0.get("vendor_id", ls.get("Vendor ID", "unknown")),
        "family": int(b0.get("cpu family", ls.get("CPU family", "-1"))),
        "model": int(b0.get("model", ls.get("Model", "-1"))),
        "flags": set(b0.get("flags", ls.get("Flags", "")).split()),
        "logical_cpus": len(blocks) or os.cpu_count() or 1,
        "hypervisor": ls.get("Hypervisor vendor", "none"),
    }
    # physical cores: distinct (physical id, core id) pairs; else lscpu; else logical CPUs
    pairs = {(b.get("physical id"), b.get("core id")) for b in blocks
             if "core id" in b and "physical id" in b}
    if pairs:
        facts["cores"] = len(pairs)
        facts["cores_from"] = "/proc/cpuinfo (physical id, core id) pairs"
    elif "Core(s) per socket" in ls and "Socket(s)" in ls:
        facts["cores"] = int(ls["Core(s) per socket"]) * int(ls["Socket(s)"])
        facts["cores_from"] = "lscpu Core(s) per socket x Socket(s)"
    else:
        facts["cores"], facts["cores_from"] = facts["logical_cpus"], "logical CPU count"
    mhz = [float(b["cpu MHz"]) for b in blocks if "cpu MHz" in b]
    if mhz:
        facts["mhz"] = sum(mhz) / len(mhz)
        facts["mhz_from"] = "/proc/cpuinfo 'cpu MHz' (mean over CPUs)"
    elif ls.get("CPU max MHz"):
        facts["mhz"], facts["mhz_from"] = float(ls["CPU max MHz"]), "lscpu 'CPU max MHz'"
    else:
        facts["mhz"], facts["mhz_from"] = None, "unknown (give --clock-mhz)"
    return facts


def flop_per_cycle(facts):
    """(fp32 FLOP per cycle per core, why). An FMA counts as 2 FLOP; lanes = vector
    bits / 32; FLOP/cycle = FMA pipes x lanes x 2."""
    fl, fam, vendor = facts["flags"], facts["family"], facts["vendor"]
    if vendor == "AuthenticAMD":
        if fam >= 26:  # Zen 5: AVX-512 on a full 512-bit datapath, 2 FMA pipes
            return 64, "AMD Zen 5 (family %d): 2 x 512-bit FMA pipes = 2 x 16 lanes x 2" % fam
        if fam == 25 and "avx512f" in fl:  # Zen 4: AVX-512 split over 2 x 256-bit pipes
            return 32, ("AMD Zen 4 (family 25, avx512f): AVX-512 executes on 2 x 256-bit FMA "
                        "pipes = 2 x 8 lanes x 2")
        if fam == 25:
            return 32, "AMD Zen 3 (family 25): 2 x 256-bit FMA pipes = 2 x 8 lanes x 2"
        if fam == 23 and facts["model"] >= 0x30:
            return 32, "AMD Zen 2 (family 23, model >= 0x30): 2 x 256-bit FMA pipes = 2 x 8 x 2"
        if fam == 23:
            return 16, "AMD Zen/Zen+ (family 23): 2 x 128-bit FMA pipes = 2 x 4 lanes x 2"
    if "avx512f" in fl:
        return 64, ("AVX-512 with 2 x 512-bit FMA units = 2 x 16 lanes x 2 (Intel server cores "
                    "with one AVX-512 FMA unit: 32, give --flop-per-cycle 32)")
    if "fma" in fl and "avx2" in fl:
        return 32, "AVX2 + FMA, 2 x 256-bit FMA units = 2 x 8 lanes x 2"
    if "avx" in fl:
        return 16, "AVX without FMA: 1 x 256-bit add + 1 x 256-bit mul per cycle = 8 + 8"
    if "sse2" in fl:
        return 8, "SSE2: 1 x 128-bit add + 1 x 128-bit mul per cycle = 4 + 4"
    return 2, "no SIMD recognised: 1 scalar FMA per cycle"


def theoretical_peak(facts, threads, fpc_override=None, mhz_override=None):
    """{'gflops', 'cores_used', 'fpc', 'mhz', 'text'}: the fp32 peak of `threads`
    threads (at most one per physical core counts) with the derivation spelled out."""
    fpc, why = flop_per_cycle(facts)
    if fpc_override:
        fpc, why = float(fpc_override), "given by --flop-per-cycle"
    mhz, mhz_from = facts["mhz"], facts["mhz_from"]
    if mhz_override:
        mhz, mhz_from = float(mhz_override), "given by --clock-mhz"
    if not mhz:
        raise RuntimeError("no clock in /proc/cpuinfo or lscpu: give --clock-mhz")
    cores = min(int(threads), facts["cores"])
    gflops = cores * mhz * 1e-3 * fpc
    lines = [
        "CPU: %s (%s, family %d, model %d), hypervisor %s" % (
            facts["model_name"], facts["vendor"], facts["family"], facts["model"],
            facts["hypervisor"]),
        "cores: %d physical (%s), %d logical; %d thread(s) used -> %d core(s) count" % (
            facts["cores"], facts["cores_from"], facts["logical_cpus"], threads, cores),
        "clock: %.1f MHz (%s)" % (mhz, mhz_from),
        "fp32 FLOP/cycle/core: %g (%s)" % (fpc, why),
        "fp32 peak = %d cores x %.3f GHz x %g FLOP/cycle = %.1f GFLOP/s" % (
            cores, mhz * 1e-3, fpc, gflops),
    ]
    return {"gflops": gflops, "cores_used": cores, "fpc": fpc, "mhz": mhz,
            "text": "\n".join(lines)}


def measured_clock(threads):
    """Compiles and runs clock_probe.c on `threads` OpenMP threads. Returns
    {'clock_mhz_mean', 'clock_mhz_min', 'fma_lanes', 'fma_gflops_total',
    'fma_flop_per_cycle', 'threads'} or {'error': why} (no compiler, not x86...)."""
    import shutil
    import tempfile
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clock_probe.c")
    cc = os.environ.get("CC", "cc")
    if not shutil.which(cc):
        return {"error": "no C compiler (%s) to build clock_probe.c" % cc}
    with tempfile.TemporaryDirectory(prefix="vlm-clock-") as d:
        exe = os.path.join(d, "clock_probe")
        r = subprocess.run([cc, "-O2", "-march=native", "-fopenmp", "-o", exe, src],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": "building clock_probe.c failed: " + r.stderr.strip()[-300:]}
        env = dict(os.environ, OMP_NUM_THREADS=str(int(threads)), OMP_PROC_BIND="spread")
        r = subprocess.run([exe], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            return {"error": "clock_probe failed: " + r.stderr.strip()[-300:]}
    out = {}
    for line in r.stdout.splitlines():
        k, v = line.split()
        out[k] = float(v)
    return out


def mapped_blas():
    """Shared libraries of this process that do linear algebra or threading
    (real paths, from /proc/self/maps)."""
    pat = re.compile(r"(blas|lapack|mkl|dnnl|blis|gomp|iomp|atlas)", re.I)
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[5].startswith("/") and ".so" in parts[5]:
                    if pat.search(os.path.basename(parts[5])):
                        libs.add(os.path.realpath(parts[5]))
    except OSError:
        pass
    return sorted(libs)


def _rates(fn, flops, reps):
    fn()  # warm-up: thread pool start, page faults, packing buffers
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"median_gflops": flops / times[len(times) // 2] * 1e-9,
            "best_gflops": flops / times[0] * 1e-9, "reps": reps}


def sgemm_rates(n=2048, threads=1, reps=7):
    """{'torch': {...}, 'numpy': {...}}: fp32 n x n x n products, 2 n^3 FLOP each.
    numpy's thread count is whatever its BLAS read from the environment at load
    (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS): the caller sets it before import."""
    import numpy as np
    import torch
    torch.set_num_threads(int(threads))
    flops = 2.0 * n * n * n
    g = torch.Generator().manual_seed(0)
    a = torch.rand(n, n, generator=g, dtype=torch.float32)
    b = torch.rand(n, n, generator=g, dtype=torch.float32)
    c = torch.empty(n, n, dtype=torch.float32)
    out = {"n": n, "torch": _rates(lambda: torch.mm(a, b, out=c), flops, reps)}
    an, bn = a.numpy(), b.numpy()
    cn = np.empty((n, n), dtype=np.float32)
    out["numpy"] = _rates(lambda: np.dot(an, bn, out=cn), flops, reps)
    return out


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--flop-per-cycle", type=float, default=None)
    ap.add_argument("--clock-mhz", type=float, default=None)
    a = ap.parse_args()
    facts = cpu_facts()
    pk = theoretical_peak(facts, a.threads, a.flop_per_cycle, a.clock_mhz)
    print(pk["text"])
    mc = measured_clock(a.threads)
    if "error" in mc:
        print("clock probe: " + mc["error"])
    else:
        print("clock probe: %.0f MHz measured (min over threads %.0f), %.2f fp32 FLOP/cycle/core "
              "sustained by %d-lane FMAs -> peak at the measured clock %.1f GFLOP/s" % (
                  mc["clock_mhz_mean"], mc["clock_mhz_min"], mc["fma_flop_per_cycle"],
                  mc["fma_lanes"], pk["cores_used"] * mc["clock_mhz_mean"] * 1e-3 * pk["fpc"]))
    s = sgemm_rates(a.n, a.threads)
    for k in ("torch", "numpy"):
        print("sgemm %d^3 via %s: median %.1f GFLOP/s, best %.1f (%.0f%% of peak)" % (
            a.n, k, s[k]["median_gflops"], s[k]["best_gflops"],
            100.0 * s[k]["median_gflops"] / pk["gflops"]))
    print("BLAS mapped: " + ", ".join(mapped_blas()))


if __name__ == "__main__":
    main()
