#!/usr/bin/env python3
"""cuda_emu.py - turn a CUDA source of cuda/ into C++ that runs on the CPU under the emulation of
tests/cuda_emu (cuda_emu.h, emu_runtime.cpp).

    cuda_emu.py IN.cu OUT.cpp

Only the three constructs no C++ macro can express are rewritten; everything else (__global__,
threadIdx, __syncthreads, __shfl_xor_sync, ...) is left to the macros and functions of cuda_emu.h,
which the build includes first. Line numbers are kept (a #line names the real source), so compiler
messages and AddressSanitizer reports point at cuda/<file>.cu itself.

  kernel<<<grid, block, smem, stream>>>(args);
      -> lt_emu_launch("kernel", &kernel, dim3(grid), dim3(block), (size_t)(smem), (cudaStream_t)(stream), args);
  extern __shared__ T name[];
      -> T *name = lt_emu_dynamic_shared<T>();            (the launch's dynamic shared memory)
  __shared__ T a[n], b;
      -> static char k1_; T (&a)[n] = lt_emu_shared<T[n]>(&k1_); static char k2_; T &b = lt_emu_shared<T>(&k2_);
         (one allocation per block and declaration, NaN-poisoned: what every thread of a block shares)
The output must contain no `<<<` and no `__shared__` left: otherwise this script fails.
"""
import os
import re
import sys


def fail(path, text, pos, what):
    line = text.count('\n', 0, pos) + 1
    sys.exit(f'{path}:{line}: cuda_emu.py: {what}')


def match_close(text, i, open_ch, close_ch):
    """Index just past the bracket that closes text[i] (== open_ch), skipping nested brackets."""
    depth = 0
    pairs = {'(': ')', '[': ']', '{': '}'}
    stack = []
    j = i
    while j < len(text):
        c = text[j]
        if c in pairs:
            stack.append(pairs[c])
        elif c in ')]}':
            if not stack or stack.pop() != c:
                return -1
            if not stack:
                return j + 1
        j += 1
    return -1


def split_top(s):
    """Split s at the commas outside any (), [], {}."""
    parts, depth, cur = [], 0, ''
    for c in s:
        if c in '([{':
            depth += 1
        elif c in ')]}':
            depth -= 1
        if c == ',' and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += c
    parts.append(cur)
    return parts


def kernel_before(text, end, path):
    """The kernel expression ending at text[end] (exclusive): an identifier with optional template
    arguments, e.g. att_bwd_kv_kernel<64, 4>. Returns its start index."""
    j = end
    while j > 0 and text[j - 1] in ' \t':
        j -= 1
    if text[j - 1] == '>':  # template arguments
        depth, j = 0, j - 1
        while j >= 0:
            if text[j] == '>':
                depth += 1
            elif text[j] == '<':
                depth -= 1
                if depth == 0:
                    break
            j -= 1
    k = j
    while k > 0 and (text[k - 1].isalnum() or text[k - 1] in '_:'):
        k -= 1
    if k == j:
        fail(path, text, end, 'cannot find the kernel name before <<<')
    return k


def rewrite_launches(text, path):
    out, pos = [], 0
    while True:
        i = text.find('<<<', pos)
        if i < 0:
            break
        k = kernel_before(text, i, path)
        kernel = text[k:i].strip()
        j = text.find('>>>', i)
        if j < 0:
            fail(path, text, i, 'no >>> after <<<')
        cfg = split_top(text[i + 3:j])
        if not 2 <= len(cfg) <= 4:
            fail(path, text, i, f'a launch needs 2 to 4 configuration values, not {len(cfg)}')
        while len(cfg) < 4:
            cfg.append('0')
        a = j + 3
        while text[a] in ' \t\n':
            a += 1
        if text[a] != '(':
            fail(path, text, j, 'no argument list after >>>')
        b = match_close(text, a, '(', ')')
        if b < 0:
            fail(path, text, a, 'unbalanced argument list')
        args = text[a + 1:b - 1]
        name = re.sub(r'\s+', ' ', kernel)
        out.append(text[pos:k])
        # (the configuration keeps its line breaks, so that line numbers do not move)
        out.append(f'lt_emu_launch("{name}", &{kernel}, dim3({cfg[0]}), dim3({cfg[1]}), (size_t)({cfg[2]}), '
                   f'(cudaStream_t)({cfg[3]}),{text[j + 3:a]}{args})')
        pos = b
    out.append(text[pos:])
    return ''.join(out)


DYN_RE = re.compile(r'extern\s+__shared__\s+([A-Za-z_][\w\s]*?)\s+(\w+)\s*\[\s*\]\s*;')
SHARED_RE = re.compile(r'__shared__\s+([A-Za-z_][\w:<>\s]*?)\s+([^;]+);')
DECL_RE = re.compile(r'^\s*(\w+)\s*((?:\[[^\]]+\]\s*)*)$')


def rewrite_shared(text, path):
    text = DYN_RE.sub(lambda m: f'{m.group(1)} *{m.group(2)} = lt_emu_dynamic_shared<{m.group(1)}>();', text)
    counter = [0]

    def one(m):
        ty, decls = m.group(1).strip(), m.group(2)
        parts = []
        for d in split_top(decls):
            dm = DECL_RE.match(d)
            if not dm:
                fail(path, text, m.start(), f'cannot read the __shared__ declarator "{d.strip()}"')
            name, dims = dm.group(1), re.sub(r'\s+', '', dm.group(2))
            counter[0] += 1
            key = f'lt_emu_key_{counter[0]}_'
            ref = f'(&{name}){dims}' if dims else f'&{name}'
            parts.append(f'static char {key}; {ty} {ref} = lt_emu_shared<{ty}{dims}>(&{key});')
        return ' '.join(parts)

    return SHARED_RE.sub(one, text)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, dst = sys.argv[1], sys.argv[2]
    text = open(src).read()
    body = rewrite_shared(rewrite_launches(text, src), src)
    for bad in ('<<<', '>>>', '__shared__'):
        if bad in re.sub(r'//.*|/\*.*?\*/', '', body, flags=re.S):
            fail(src, body, body.find(bad), f'"{bad}" left after the rewrite')
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    tmp = dst + '.tmp'
    with open(tmp, 'w') as f:
        f.write(f'#line 1 "{os.path.abspath(src)}"\n' + body)
    os.replace(tmp, dst)


if __name__ == '__main__':
    main()
