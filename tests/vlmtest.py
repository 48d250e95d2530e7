# tests/vlmtest.py: what the end-to-end Python tests share: the pass/fail
# counter that ends with the "N passed, M failed" line, running the vlmtrain
# program (one process or under mpirun), and reading safetensors and metrics
# files independently of the C code.
import json
import os
import struct
import subprocess

import numpy as np

VLM = os.environ.get("VLMTRAIN", "vlmtrain")
SRC = os.environ.get("VLM_SOURCE_DIR", os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"ok   {name}", flush=True)
        else:
            self.failed += 1
            print(f"FAIL {name}\n     {detail}", flush=True)
        return ok

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


def run(args, np_=1, env_extra=None, threads=1, timeout=600):
    """Runs vlmtrain ARGS; under mpirun -np np_ when np_ > 1. Returns (rc, stdout, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(env_extra or {})
    if np_ == 1:
        cmd = [VLM, *args]
    else:
        cmd = ["mpirun", "--oversubscribe", "-np", str(np_)]
        for k in env_extra or {}:
            cmd += ["-x", k]
        cmd += [VLM, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def read_st(path):
    """An F32 safetensors file as {name: array}, read with json + struct + numpy."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", f"{path}: {k} is {v['dtype']}"
        b, e = v["data_offsets"]
        out[k] = np.frombuffer(data[b:e], dtype="<f4").reshape(v["shape"])
    return out


def metrics(rundir):
    return [json.loads(l) for l in open(os.path.join(rundir, "metrics.jsonl"))]
