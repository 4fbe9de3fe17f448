"""The ctypes declarations and struct mirrors agree with include/loratune.h."""
import ctypes
import os
import re
import shutil
import subprocess

import pytest

from loratune import _lib as L

from conftest import include_dir

INC = include_dir()
needs_header = pytest.mark.skipif(INC is None, reason="include/loratune.h not found (set LORATUNE_INCLUDE_DIR)")


def header_functions(name):
    text = open(os.path.join(INC, name)).read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return sorted(set(re.findall(r"\bLT_API\b[^;(]*?\b(lt_[a-z0-9_]+)\s*\(", text)))


def header_structs():
    """{struct name: [field names in order]} of every `typedef struct X { ... } X;` of loratune.h."""
    text = open(os.path.join(INC, "loratune.h")).read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    out = {}
    for name, body in re.findall(r"typedef struct (lt_[a-z_]+) \{(.*?)\} \1;", text, flags=re.S):
        fields = []
        for decl in body.split(";"):
            decl = decl.strip()
            if not decl:
                continue
            decl = re.sub(r"\[[^\]]*\]", "", decl)
            names = [n.strip().lstrip("*") for n in decl.split(",")]
            first = re.findall(r"\**\s*([A-Za-z_][A-Za-z0-9_]*)$", names[0])[0]
            fields += [first] + [n.strip("* ") for n in names[1:]]
        out[name] = fields
    return out


@needs_header
def test_every_function_is_declared_once():
    assert len(L.DECLARED) == len(set(L.DECLARED))
    assert sorted(L.DECLARED) == header_functions("loratune.h")
    assert sorted(L.DECLARED_EXPERIMENTAL) == header_functions("loratune_experimental.h")


@needs_header
def test_every_declared_function_is_exported():
    assert L.lib().missing == []


@needs_header
def test_struct_fields_match_header():
    hs = header_structs()
    assert sorted(hs) == sorted(L.STRUCTS)
    for name, cls in L.STRUCTS.items():
        assert [f[0] for f in cls._fields_] == hs[name], name
        assert cls._fields_[0] == ("size", ctypes.c_size_t), name


@needs_header
def test_struct_layout_matches_c_compiler(tmp_path):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler to measure the structs")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include "loratune.h"', "int main(void) {"]
    for name, cls in L.STRUCTS.items():
        lines.append(f'  printf("{name} %zu\\n", sizeof({name}));')
        for f in cls._fields_:
            lines.append(f'  printf("{name}.{f[0]} %zu\\n", offsetof({name}, {f[0]}));')
    lines += ["  return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", INC, str(src), "-o", str(exe)], check=True)
    c_layout = dict(line.split() for line in subprocess.run([str(exe)], capture_output=True, text=True,
                                                           check=True).stdout.splitlines())
    for name, cls in L.STRUCTS.items():
        assert int(c_layout[name]) == ctypes.sizeof(cls), name
        for f in cls._fields_:
            assert int(c_layout[f"{name}.{f[0]}"]) == getattr(cls, f[0]).offset, f"{name}.{f[0]}"


@needs_header
def test_enums_match_header():
    import loratune as lt
    text = open(os.path.join(INC, "loratune.h")).read()
    for m in lt.Status:
        c = "LT_OK" if m == 0 else f"LT_{m.name}"
        assert re.search(rf"\b{c} = {int(m)}\b", text), c
    for m in lt.Target:
        assert re.search(rf"\bLT_TARGET_{m.name} = ", text), m
        whole = {"ALL": 0x7F, "EXPERTS_GATE_UP": 1 << 7, "EXPERTS_DOWN": 1 << 8, "EXPERTS": 0x180}
        bit = ["Q", "K", "V", "O", "GATE", "UP", "DOWN"]
        assert int(m) == (whole[m.name] if m.name in whole else 1 << bit.index(m.name)), m
    for prefix, enum in (("LT_OPT_", lt.OptimizerKind), ("LT_SCHED_", lt.Schedule), ("LT_LOG_", lt.LogLevel),
                         ("LT_INIT_", lt.LoraInit), ("LT_OBJ_", lt.Objective)):
        for m in enum:
            assert re.search(rf"\b{prefix}{m.name} = {int(m)}\b", text), f"{prefix}{m.name}"
    assert f"#define LT_EOS_FROM_CONFIG ({lt.EOS_FROM_CONFIG})" in text
    n = int(re.search(r"#define LT_VERSION_MAJOR (\d+)", text).group(1))
    assert n == L.BINDING_VERSION_MAJOR
