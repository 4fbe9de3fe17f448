#!/usr/bin/env python3
"""Run llama.cpp's llama-finetune once and print one JSON line (called by bench/llamacpp_peer.sh).

  python bench/llamacpp_run.py BIN GGUF TEXT --threads T --ctx C --ubatch U --warmup W --steps S [--gguf-py DIR]

Timing: ggml-opt prints a progress line (ending in '\\r', stderr unbuffered, flushed) after every
micro-batch of U tokens, i.e. after its forward, backward and, at the end of an optimizer period, the
AdamW update. This script timestamps each line as it arrives and samples the child's CPU time from
/proc/PID/stat at the same moment; tokens_per_s is the training tokens between the end of warm-up step W
and the last step divided by the wall time between those two lines (model load, tokenization, graph
setup of the first steps and the final save are excluded). peak_rss_mb is the child's ru_maxrss from
wait4(), the figure `/usr/bin/time -v` prints as "Maximum resident set size".

After the run the trained model (written by llama-finetune) is compared tensor by tensor with the input
GGUF (gguf-py from the same llama.cpp tree): "trained" lists the tensor groups whose values changed,
"untrained" those left bit-identical, so what the peer trains is measured, not assumed.
"""
import argparse, json, os, re, subprocess, sys, tempfile, time

PROGRESS = re.compile(rb"(train|val): *\[[^\]]*\] data=(\d+)/(\d+) loss=([0-9.naninf+-]+)")


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except OSError:
        return None


def tensor_diff(gguf_py, before, after):
    """Which tensors llama-finetune changed: groups (blk.N.attn_k.weight stands for all layers)."""
    sys.path.insert(0, gguf_py)
    import numpy as np
    from gguf import GGUFReader
    b = {t.name: t for t in GGUFReader(after).tensors}
    groups, n_trained = {}, 0
    for ta in GGUFReader(before).tensors:
        tb = b.get(ta.name)
        changed = tb is not None and not np.array_equal(np.asarray(ta.data), np.asarray(tb.data))
        n_trained += int(ta.n_elements) if changed else 0
        groups.setdefault(re.sub(r"^blk\.\d+\.", "blk.N.", ta.name), set()).add(changed)
    return {"trained": sorted(g for g, s in groups.items() if s == {True}),
            "untrained": sorted(g for g, s in groups.items() if s == {False}),
            "partly_trained": sorted(g for g, s in groups.items() if len(s) == 2),
            "trained_params": n_trained}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin"); ap.add_argument("gguf"); ap.add_argument("text")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--ubatch", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", default="1e-4")
    ap.add_argument("--opt", choices=["adamw", "sgd"], default="adamw",
                    help="adamw (the peer); sgd only to see what the optimizer update costs")
    ap.add_argument("--gguf-py", default=None, help="gguf-py directory: compare the trained model with the input")
    ap.add_argument("--build", default="cpu", help="label of the llama.cpp build: cpu or blas")
    ap.add_argument("--log", default=None, help="keep llama-finetune's stderr here")
    a = ap.parse_args()
    per_step = a.ctx // a.ubatch                    # micro-batches per optimizer step (n_batch = n_ctx)
    with tempfile.TemporaryDirectory(prefix="lt-llamacpp-") as tmp:
        out = os.path.join(tmp, "trained.gguf")
        cmd = [a.bin, "-m", a.gguf, "-f", a.text, "-c", str(a.ctx), "-b", str(a.ctx), "-ub", str(a.ubatch),
               "-t", str(a.threads), "-tb", str(a.threads), "-epochs", "1", "-val-split", "0",
               "-lr", a.lr, "-wd", "0", "-opt", a.opt, "-o", out]
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        log, buf, marks = bytearray(), b"", []     # marks: (micro-batch index, wall time, cpu seconds, loss)
        fd = p.stderr.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            t = time.perf_counter()
            log += chunk
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            for line in parts:
                m = PROGRESS.search(line)
                if m and m.group(1) == b"train":
                    marks.append((len(marks) + 1, t, cpu_seconds(p.pid), float(m.group(4))))
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if a.log:
            with open(a.log, "wb") as f:
                f.write(log)
        if p.returncode != 0:
            sys.stderr.write(log[-4000:].decode(errors="replace"))
            sys.exit(f"llama-finetune failed with status {p.returncode}: {' '.join(cmd)}")
        nstep = len(marks) // per_step
        if nstep < a.warmup + 1:
            sys.exit(f"only {nstep} optimizer steps ran (need warm-up {a.warmup} + 1): make the text longer")
        i0 = a.warmup * per_step - 1 if a.warmup > 0 else None
        if i0 is None:
            sys.exit("--warmup must be >= 1 (the first step includes graph allocation)")
        m0, m1 = marks[i0], marks[-1]
        tokens = (m1[0] - m0[0]) * a.ubatch
        dt = m1[1] - m0[1]
        dc = (m1[2] - m0[2]) if m0[2] is not None and m1[2] is not None else None
        text = log.decode(errors="replace")
        kv_frozen = "K and V projections will not receive gradients" in text
        res = {"peer": f"llama.cpp llama-finetune (ggml-opt {'AdamW' if a.opt == 'adamw' else 'SGD'}, CPU)", "config": "bench-s", "method": "full",
               "build": a.build, "threads": a.threads, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "ctx": a.ctx, "ubatch": a.ubatch,
               "tokens_per_optimizer_step": a.ctx, "steps": nstep - a.warmup, "warmup": a.warmup,
               "loss": m1[3], "kv_receive_gradients": not kv_frozen,
               "tokens_per_s": tokens / dt,
               "tokens_per_cpu_s": tokens / dc if dc else None,
               "peak_rss_mb": ru.ru_maxrss / 1024.0}
        if a.gguf_py:
            res.update(tensor_diff(a.gguf_py, a.gguf, out))
        print(json.dumps(res))


if __name__ == "__main__":
    main()
