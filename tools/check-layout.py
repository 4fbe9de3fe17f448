#!/usr/bin/env python3
"""check-layout.py - the source tree is drawn as floors, and every arrow points down.

    tools/check-layout.py                      check the #include lines of the source tree
    tools/check-layout.py --objects BUILD/CMakeFiles
                                               also check the calls between the compiled object files

The floors (docs/ARCHITECTURE.md shows the same table; CMakeLists.txt's lt_folder() lines must agree,
and this script checks that they do):

    floor  folder    uses (directly; a use is transitive unless the used folder is a backend)
    0      backend   -                       the dispatch table; data every backend shares
    1      cpu       backend                 the CPU backend
    1      cuda      backend                 the CUDA backend
    2      core      backend, cpu*, cuda*    errors, files, context; the registry (* only core names backends)
    3      formats   core                    safetensors, config.json, bitsandbytes quantization
    3      text      core                    tokenizer, chat templates, dataset rows
    3      dist      core                    communicators of data-parallel ranks (callbacks, MPI, NCCL)
    4      model     formats                 model loading, the weight seam
    5      adapter   model, text             LoRA / DoRA / full, PEFT I/O, merge, export (GGUF: the tokenizer)
    6      decoder   adapter                 workspace, layer forward/backward, eval, generation
    7      train     decoder, dist           optimizers, trainer, objectives, data-parallel steps
    -      cli       -                       the loratune tool: the public API (include/) only

Rules, for every C/C++/CUDA file of src/, cpu/, cuda/, tests/ and bench/:
  1. a project include names its folder: "model/model.h", "cpu/ref_ops.h" (public headers
     "loratune.h" / "loratune_experimental.h", and a test's or benchmark's own helpers, excepted); no "..";
  2. a file of folder F includes only F's headers and those of the folders F uses (the table);
     tests and benchmarks are white-box and may include any folder;
  3. a private header (PRIVATE below) is included only from its own folder;
  4. no cycle of includes between files.
With --objects, from the symbols each object file defines and uses (nm):
  5. a call from folder F lands in F or in a folder F uses (the registry may call the backends); the
     CLI calls only the public API (functions declared LT_API in include/);
  6. no cycle of calls between files (file A uses B's symbols, B uses A's, possibly through others).
Exit status 0 when every rule holds, 1 otherwise (each violation printed), 2 on a usage error.
"""
import argparse
import os
import re
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

# folder: (floor, direct uses, directory relative to the repository root)
FOLDERS = {
    'backend': (0, [], 'src/backend'),
    'cpu': (1, ['backend'], 'cpu'),
    'cuda': (1, ['backend'], 'cuda'),
    'core': (2, ['backend', 'cpu', 'cuda'], 'src/core'),
    'formats': (3, ['core'], 'src/formats'),
    'text': (3, ['core'], 'src/text'),
    'dist': (3, ['core'], 'src/dist'),
    'model': (4, ['formats'], 'src/model'),
    'adapter': (5, ['model', 'text'], 'src/adapter'),
    'decoder': (6, ['adapter'], 'src/decoder'),
    'train': (7, ['decoder', 'dist'], 'src/train'),
    'cli': (8, [], 'src/cli'),
}
BACKENDS = {'cpu', 'cuda'}  # reachable from core only: a use of them does not pass upwards
# Headers used only inside their own folder.
PRIVATE = {
    'cpu/simd.h', 'cpu/opt8_simd.h', 'cpu/gemm_bf16_simd.h', 'cpu/isa_each.h', 'cpu/isa_one.h',
    'cuda/cuda_impl.h', 'cuda/cuda_common.cuh',
    'text/tokenizer.h', 'text/chat_template.h',
    'adapter/adapter_impl.h',
    'train/trainer.h',
}
PUBLIC = {'loratune.h', 'loratune_experimental.h'}
SOURCE_EXT = ('.c', '.h', '.cu', '.cuh', '.cpp')
WHITE_BOX = ('tests', 'bench')  # may include any folder's (non-private) headers


def allowed_folders(f):
    """The folders whose headers and symbols folder f may use: itself, its uses and, through each use
    that is not a backend, that folder's uses (a backend is used only by the folder that names it)."""
    seen, todo = {f}, list(FOLDERS[f][1])
    while todo:
        g = todo.pop()
        if g in seen:
            continue
        seen.add(g)
        todo.extend(h for h in FOLDERS[g][1] if h not in BACKENDS)
    return seen


def folder_of(relpath):
    for name, (_, _, d) in FOLDERS.items():
        if relpath.startswith(d + '/'):
            return name
    return None


def source_files():
    out = []
    for top in ['src', 'cpu', 'cuda', 'tests', 'bench']:
        base = os.path.join(ROOT, top)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in ('python', '__pycache__'))
            for fn in sorted(filenames):
                if fn.endswith(SOURCE_EXT):
                    out.append(os.path.relpath(os.path.join(dirpath, fn), ROOT))
    return out


INCLUDE_RE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def check_table(errors):
    for f, (floor, uses, d) in FOLDERS.items():
        if not os.path.isdir(os.path.join(ROOT, d)):
            errors.append(f'table: folder {f} ({d}) does not exist')
        for g in uses:
            if FOLDERS[g][0] >= floor:
                errors.append(f'table: {f} (floor {floor}) uses {g} (floor {FOLDERS[g][0]}), not a lower floor')
            if g in BACKENDS and f != 'core':
                errors.append(f'table: {f} names the backend {g}; only core (the registry) may')
    # CMakeLists.txt: lt_folder(<name> <dir> ... USES a b ... PRIVATE_USES c ...)
    cm = open(os.path.join(ROOT, 'CMakeLists.txt')).read()
    for m in re.finditer(r'^lt_folder\((\w+)\s+(.*?)\)\s*$', cm, re.M | re.S):
        name, args = m.group(1), m.group(2).split()
        if name not in FOLDERS:
            errors.append(f'CMakeLists.txt: lt_folder({name}) is not in the floors table of tools/check-layout.py')
            continue
        uses, mode = set(), None
        for a in args:
            if a in ('USES', 'PRIVATE_USES'):
                mode = 'uses'
            elif a in ('SOURCES', 'LIBS', 'PRIVATE_LIBS'):
                mode = None
            elif mode == 'uses':
                uses |= BACKENDS if a == '${LT_BACKENDS}' else {a}  # LT_BACKENDS: cpu (and cuda when built)
        if uses != set(FOLDERS[name][1]):
            errors.append(f'CMakeLists.txt: lt_folder({name}) uses {sorted(uses)}, the floors table says '
                          f'{sorted(FOLDERS[name][1])}')


def check_includes(errors):
    files = source_files()
    graph = {}
    for rel in files:
        text = open(os.path.join(ROOT, rel), errors='replace').read()
        me = folder_of(rel)
        top = rel.split('/')[0]
        deps = []
        for inc in INCLUDE_RE.findall(text):
            where = f'{rel}: #include "{inc}"'
            if inc in PUBLIC:
                continue
            if '..' in inc.split('/'):
                errors.append(f'{where}: no ".." in include paths; name the folder')
                continue
            head = inc.split('/')[0]
            if head not in FOLDERS:
                own = os.path.join(os.path.dirname(rel), inc)
                if top in WHITE_BOX and os.path.exists(os.path.join(ROOT, own)):
                    deps.append(os.path.normpath(own))  # a test's or benchmark's own helper
                elif top in WHITE_BOX and head == 'examples' and os.path.exists(os.path.join(ROOT, inc)):
                    deps.append(inc)  # a test that compiles an example
                else:
                    errors.append(f'{where}: write the include with its folder ("{head}" is not one of '
                                  f'{", ".join(FOLDERS)})')
                continue
            target = os.path.join(FOLDERS[head][2], inc[len(head) + 1:])
            if not os.path.exists(os.path.join(ROOT, target)):
                errors.append(f'{where}: no such file {target}')
                continue
            deps.append(target)
            if inc in PRIVATE and head != me:
                errors.append(f'{where}: {inc} is private to {head}/')
            elif me is not None and head not in allowed_folders(me):
                errors.append(f'{where}: {me}/ (floor {FOLDERS[me][0]}) may not use {head}/ '
                              f'(it uses {", ".join(sorted(allowed_folders(me) - {me})) or "nothing"})')
        graph[rel] = deps
    for cyc in cycles(graph):
        errors.append('include cycle: ' + ' -> '.join(cyc + [cyc[0]]))
    return len(files)


def cycles(graph):
    """Strongly connected components with more than one node (or a self loop), as node lists."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # iterative Tarjan
        work = [(v, iter(graph.get(v, ())))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(graph.get(w, ()))))
                    advanced = True
                    break
                if w in on:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1 or node in graph.get(node, ()):
                    out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check_objects(objdir, errors):
    """Rules 5 and 6 over the object files of the lt_<folder> targets and the CLI."""
    objs = []
    for dirpath, _, filenames in os.walk(objdir):
        t = os.path.relpath(dirpath, objdir).split(os.sep)[0]
        if t not in {f'lt_{f}.dir' for f in FOLDERS} | {'loratune_cli.dir'}:  # (not an older build's targets)
            continue
        for fn in filenames:
            if fn.endswith('.o'):
                objs.append(os.path.join(dirpath, fn))
    if not objs:
        errors.append(f'{objdir}: no object files of the library (build it first)')
        return 0
    defs, uses = {}, {}
    for o in objs:
        # the source path: <target>.dir/<path relative to the source root>.o
        rel = os.path.relpath(o, objdir).split(os.sep, 1)[1][:-2]
        if not os.path.exists(os.path.join(ROOT, rel)):
            continue  # left by an earlier build of a source that has moved or gone
        out = subprocess.run(['nm', o], capture_output=True, text=True, check=True).stdout
        d, u = set(), set()
        for line in out.splitlines():
            p = line.split()
            if len(p) == 3 and p[1] in 'TDBRCVW':
                d.add(p[2])
            elif len(p) == 2 and p[0] in 'Uw':
                u.add(p[1])
        defs[rel], uses[rel] = d, u
    public = set()
    for h in ('loratune.h', 'loratune_experimental.h'):
        text = open(os.path.join(ROOT, 'include', h)).read()
        public |= set(re.findall(r'LT_API[^;(]*?\b(lt_\w+)\s*\(', text))
    owner = {}
    for rel, d in defs.items():
        for s in d:
            owner[s] = rel
    graph = {}
    for rel, u in uses.items():
        me = folder_of(rel)
        targets = set()
        for s in sorted(u):
            o = owner.get(s)
            if o is None or o == rel:
                continue
            targets.add(o)
            them = folder_of(o)
            if me == 'cli' and them != 'cli':
                if s not in public:
                    errors.append(f'{rel} calls {s} of {o}: the CLI uses the public API (include/) only')
            elif me and them and them not in allowed_folders(me):
                errors.append(f'{rel} calls {s} of {o}: {me}/ may not use {them}/')
        graph[rel] = sorted(targets)
    for cyc in cycles(graph):
        errors.append('call cycle between files: ' + ' -> '.join(cyc) + ' (each uses symbols of the next, '
                      'and the last of the first, possibly through others of the cycle)')
    return len(objs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--objects', help='a CMake build\'s CMakeFiles directory: also check the calls')
    a = ap.parse_args()
    errors = []
    check_table(errors)
    n = check_includes(errors)
    msg = f'{n} source files'
    if a.objects:
        msg += f', {check_objects(a.objects, errors)} object files'
    if errors:
        for e in errors:
            print('check-layout:', e)
        print(f'check-layout: FAILED ({len(errors)} problems in {msg})')
        return 1
    print(f'check-layout: {msg}: every include and call points down the floors, no cycles')
    return 0


if __name__ == '__main__':
    sys.exit(main())
