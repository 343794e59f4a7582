#!/usr/bin/env python3
"""Serial share of a training step from 1-thread callgrind profiles (issue #12).

Reads the per-thread files of one `valgrind --tool=callgrind --separate-threads=yes` run of
`seqlab bench model ... --steps 1 --warmup 0` at RAYON_NUM_THREADS=1 with collection toggled
on inside `Trainer::train_step` (main thread) and inside rayon's job `execute` (worker
thread), as `bench/serial_share.sh` makes it, and prints where the step's instructions go:

- `gemm` on the main thread: matrix products (gemm splits them over threads at > 1 thread);
- the worker thread: work seqlab's kernels hand to rayon (split at > 1 thread);
- everything else on the main thread: runs on one thread whatever RAYON_NUM_THREADS is,
  grouped by the function that spends it (self cost of the function and its callees outside
  the groups that come earlier in GROUPS).

Amdahl: with serial share s, two threads give at most 1 / (s + (1 - s) / 2).
Usage: bench/serial_share.py PREFIX  (the callgrind files PREFIX.<pid>-01, PREFIX.<pid>-02)
"""
import collections
import glob
import re
import sys

# (group, regex on the function name); the first match wins, so the order matters.
GROUPS = [
    ("gemm (matrix products)", r"^gemm|gemm_common|gemm_f32|seqlab_nn::kernels::sgemm"),
    ("dropout masks (SeqRng, ChaCha)", r"dropout_mask|rand_chacha|ppv_lite86|rand_core"),
    ("optimizer update", r"seqlab_nn::optim::"),
    ("gradient clipping", r"seqlab_nn::clip::"),
    ("allocation, memset, memcpy, free", r"mi_|mimalloc|_mi_|memset|memcpy|memmove|__rust_alloc|__rust_dealloc|alloc::alloc|alloc::raw_vec|from_elem|drop_in_place|munmap|mmap|madvise"),
    ("candle CPU ops (elementwise, copy, reduce, index, cmp, where)", r"candle_core::cpu_backend|candle_core::cpu::|candle_core::shape|candle_core::layout|candle_core::strided_index|StridedIndex|StridedBlocks|nditer|NdIter"),
    ("candle graph, autograd, tensor bookkeeping", r"candle_core::"),
    ("seqlab kernels (serial parts on the calling thread)", r"seqlab_nn::kernels::"),
    ("rayon dispatch", r"rayon"),
    ("seqlab layers, losses, tasks, data", r"seqlab_"),
]


def parse(path):
    """Self cost per function name (Ir) of one callgrind file."""
    names = {}
    files = {}
    self_cost = collections.Counter()
    self_by_file = collections.Counter()  # (file of the code, function): self cost
    called = collections.Counter()  # cost of the calls a function makes (inclusive of callees)
    calls = collections.Counter()
    by_caller = collections.defaultdict(collections.Counter)  # callee: {caller: inclusive cost}
    cur = None
    after_calls = False
    sub_cfn = None

    def name(ref, table=names):
        m = re.match(r"\((\d+)\)(?: (.*))?", ref)
        if not m:
            return ref
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table.get(m.group(1), ref)

    file = ""

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                cur = name(line[3:])
                after_calls = False
            elif line.startswith("cfn="):
                sub_cfn = name(line[4:])
            elif line.startswith(("fl=", "fi=", "fe=")):
                file = name(line[3:], files)
            elif line.startswith(("cfi=", "cfl=")):
                name(line[4:], files)
            elif line.startswith("calls="):
                after_calls = True
                calls[sub_cfn] += int(line[6:].split()[0])
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                parts = line.split()
                if len(parts) >= 2 and cur is not None:
                    if after_calls:
                        after_calls = False
                        if sub_cfn != cur:  # recursion is already counted
                            called[cur] += int(parts[1])
                            by_caller[sub_cfn][cur] += int(parts[1])
                    else:
                        self_cost[cur] += int(parts[1])
                        self_by_file[(file, cur)] += int(parts[1])
    inclusive = collections.Counter({f: self_cost[f] + called[f] for f in set(self_cost) | set(called)})
    return self_by_file, calls, inclusive, by_caller


def called_from_gemm(fn, by_caller):
    """Closures with a generic name (`FnOnce::call_once'2`) whose code is std's, inlined into
    gemm's packing: their cost counts as gemm when >= 99 % of it is called from gemm."""
    callers = by_caller.get(fn)
    if not callers or not fn.startswith("core::ops::function::"):
        return False
    from_gemm = sum(c for f, c in callers.items() if re.search(GROUPS[0][1], f))
    return from_gemm >= 0.99 * sum(callers.values())


# Functions whose inclusive cost names a serial item (outermost seqlab or candle entry points).
ROOTS = (r"^seqlab_nn::rng::SeqRng::dropout_mask$|^seqlab_nn::optim::(AdamW|Sgd)::apply$|^seqlab_nn::clip::clip_grad_norm$"
         r"|^<candle_core::cpu_backend::CpuStorage as candle_core::backend::BackendStorage>::"
         r"|^candle_core::backprop::<impl candle_core::tensor::Tensor>::sorted_nodes$"
         r"|^candle_core::tensor::Tensor::zeros_like$|^__memset|^__memcpy|^mi_free$|^seqlab_nn::loss::"
         r"|^seqlab_nn::embedding::|^seqlab_data::")


def group(file, fn):
    # Code inlined from gemm's crates (its packing closures show up as `FnOnce::call_once`)
    # counts as gemm.
    if re.search(r"/gemm(-common|-f32)?-[0-9]", file):
        return GROUPS[0][0]
    for g, rx in GROUPS:
        if re.search(rx, fn):
            return g
    return "other (std, libc, ...)"


def main():
    prefix = sys.argv[1]
    files = sorted(glob.glob(prefix + ".*-0[0-9]"))
    if not files:
        sys.exit(f"no callgrind files {prefix}.*-NN")
    main_self, main_calls, main_incl, main_callers = parse([f for f in files if f.endswith("-01")][0])
    worker = collections.Counter()
    for f in files:
        if not f.endswith("-01"):
            worker.update(parse(f)[0])
    total_main = sum(main_self.values())
    total_worker = sum(worker.values())
    total = total_main + total_worker
    by_group = collections.Counter()
    top = collections.defaultdict(collections.Counter)
    for (file, fn), c in main_self.items():
        g = GROUPS[0][0] if called_from_gemm(fn, main_callers) else group(file, fn)
        by_group[g] += c
        top[g][fn] += c
    gemm = by_group.pop("gemm (matrix products)", 0)
    serial = total_main - gemm
    s = serial / total
    print(f"{prefix}: step {total/1e6:,.0f} M instructions (1 thread): main thread {total_main/1e6:,.0f} M, "
          f"rayon worker {total_worker/1e6:,.0f} M")
    print(f"  parallel at 2 threads: gemm {gemm/total:.1%}, seqlab kernels' rayon tasks {total_worker/total:.1%}")
    print(f"  serial: {s:.1%} -> at most {1/(s + (1-s)/2):.2f}x from two threads (Amdahl)")
    for g, c in by_group.most_common():
        names = ", ".join(f"{n[:90]} {v/total:.1%}" for n, v in top[g].most_common(3))
        print(f"    {c/total:6.1%}  {g}: {names}")
    print("  largest serial items (inclusive cost on the main thread; candle's matmul, which is gemm, left out):")
    items = [(c, fn) for fn, c in main_incl.items() if re.search(ROOTS, fn) and not fn.endswith(">::matmul")]
    for c, fn in sorted(items, reverse=True)[:12]:
        print(f"    {c/total:6.1%}  {fn[:150]}")
    inject = sum(v for k, v in main_calls.items() if k == "rayon_core::registry::Registry::inject")
    print(f"  rayon jobs injected from the main thread per step (Registry::inject calls): {inject}")


if __name__ == "__main__":
    main()
