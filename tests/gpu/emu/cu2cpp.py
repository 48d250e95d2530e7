#!/usr/bin/env python3
"""tests/gpu/emu/cu2cpp.py SRC.cu OUT.cpp: turns a CUDA source of kernels/cuda into plain
C++ for the CPU emulation build (include/emu_cuda.h), changing only what C++ cannot
parse:
  KERNEL<<<grid, block[, smem[, stream]]>>>(args);
      -> emu_launch((const void *)&KERNEL, emu_cfg(grid, block, ...),
                    [=]() { KERNEL(args); });
  extern __shared__ float sm[];  ->  float *sm = (float *)emu_dyn_smem();
Everything else (the kernels' code) is compiled as written. A #line directive keeps
compiler messages pointing at the .cu file."""
import re
import sys


def matching(text, i, open_c, close_c):
    """Index just past the bracket that closes the one at text[i]."""
    depth = 0
    while i < len(text):
        if text[i] == open_c:
            depth += 1
        elif text[i] == close_c:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise SystemExit("cu2cpp: unbalanced %s%s" % (open_c, close_c))


def kernel_name_start(text, end):
    """Start of the kernel expression ending at `end` (an identifier, maybe with
    template arguments)."""
    i = end
    while text[i - 1].isspace():
        i -= 1
    if text[i - 1] == ">":  # template arguments: walk back to the matching '<'
        depth = 0
        while True:
            i -= 1
            if text[i] == ">":
                depth += 1
            elif text[i] == "<":
                depth -= 1
                if depth == 0:
                    break
    while i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_"):
        i -= 1
    return i


def convert(text):
    text = re.sub(r"extern\s+__shared__\s+float\s+(\w+)\s*\[\s*\]\s*;",
                  r"float *\1 = (float *)emu_dyn_smem();", text)
    out = []
    pos = 0
    while True:
        j = text.find("<<<", pos)
        if j < 0:
            out.append(text[pos:])
            break
        start = kernel_name_start(text, j)
        name = " ".join(text[start:j].split())
        k = text.find(">>>", j)
        cfg = text[j + 3:k]
        p = text.index("(", k)
        q = matching(text, p, "(", ")")
        args = text[p + 1:q - 1]
        out.append(text[pos:start])
        out.append("emu_launch((const void *)&%s, emu_cfg(%s), [=]() { %s(%s); })"
                   % (name, cfg, name, args))
        pos = q
    return "".join(out)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        text = f.read()
    with open(dst, "w") as f:
        f.write('#line 1 "%s"\n' % src)
        f.write(convert(text))


if __name__ == "__main__":
    main()
