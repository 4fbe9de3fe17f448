"""A minimal in-tree PEP 517 / PEP 660 build backend for the loratune Python package.

It exists so that `pip install ./bindings/python` works offline: the backend needs only the
standard library, so pip has nothing to download for build isolation. It builds:
  - a pure wheel (py3-none-any) of the loratune/ package;
  - with LORATUNE_BUNDLE_LIBRARY=/path/to/libloratune.so.0 set at build time, a platform wheel that also
    carries that library inside the package directory (where loratune/_lib.py looks second);
  - an sdist, and an editable wheel (a .pth file pointing at this directory).
"""
import base64
import hashlib
import io
import os
import re
import sysconfig
import tarfile
import time
import zipfile

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = "loratune"


def _version():
    with open(os.path.join(HERE, NAME, "__init__.py"), encoding="utf-8") as f:
        m = re.search(r'^__version__\s*=\s*"([^"]+)"', f.read(), re.M)
    if not m:
        raise RuntimeError("loratune/__init__.py has no __version__")
    return m.group(1)


def _metadata():
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {NAME}\n"
        f"Version: {_version()}\n"
        "Summary: Python bindings (ctypes) for libloratune, LoRA fine-tuning of LLMs in C\n"
        "Requires-Python: >=3.8\n"
        "License: MIT\n"
        "Provides-Extra: numpy\n"
        'Requires-Dist: numpy; extra == "numpy"\n'
        "Classifier: Programming Language :: Python :: 3\n"
        "Classifier: Typing :: Typed\n"
        "Description-Content-Type: text/markdown\n"
        "\n" + readme
    )


def _package_files():
    pkg = os.path.join(HERE, NAME)
    for name in sorted(os.listdir(pkg)):
        if name.endswith(".py") or name == "py.typed":
            yield os.path.join(pkg, name), f"{NAME}/{name}"


def _record_line(arcname, data):
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def _write_wheel(wheel_directory, files, pure):
    version = _version()
    if pure:
        tag = "py3-none-any"
    else:
        tag = "py3-none-" + sysconfig.get_platform().replace("-", "_").replace(".", "_")
    distinfo = f"{NAME}-{version}.dist-info"
    wheel_name = f"{NAME}-{version}-{tag}.whl"
    meta = {
        f"{distinfo}/METADATA": _metadata().encode(),
        f"{distinfo}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: loratune_build\n"
            f"Root-Is-Purelib: {'true' if pure else 'false'}\nTag: {tag}\n"
        ).encode(),
        f"{distinfo}/top_level.txt": f"{NAME}\n".encode(),
    }
    record = []
    path = os.path.join(wheel_directory, wheel_name)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in list(files) + list(meta.items()):
            info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if arcname.endswith(".so.0") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
            record.append(_record_line(arcname, data))
        record.append(f"{distinfo}/RECORD,,")
        zf.writestr(f"{distinfo}/RECORD", "\n".join(record) + "\n")
    return wheel_name


# ---- PEP 517 hooks ----------------------------------------------------------------------------------

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    files = []
    for src, arc in _package_files():
        with open(src, "rb") as f:
            files.append((arc, f.read()))
    bundle = os.environ.get("LORATUNE_BUNDLE_LIBRARY")
    if bundle:
        with open(bundle, "rb") as f:
            files.append((f"{NAME}/libloratune.so.0", f.read()))
    return _write_wheel(wheel_directory, files, pure=not bundle)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    return _write_wheel(wheel_directory, [(f"_{NAME}_editable.pth", (HERE + "\n").encode())], pure=True)


def build_sdist(sdist_directory, config_settings=None):
    base = f"{NAME}-{_version()}"
    path = os.path.join(sdist_directory, base + ".tar.gz")
    members = ["pyproject.toml", "README.md", "_build/loratune_build.py"]
    members += [arc for _, arc in _package_files()]
    for sub in ("tests", "examples"):
        d = os.path.join(HERE, sub)
        if os.path.isdir(d):
            members += [f"{sub}/{n}" for n in sorted(os.listdir(d)) if n.endswith(".py")]
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tf:
        for rel in members:
            tf.add(os.path.join(HERE, rel), arcname=f"{base}/{rel}")
        pkg_info = _metadata().encode()
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size, ti.mtime, ti.mode = len(pkg_info), int(time.time()), 0o644
        tf.addfile(ti, io.BytesIO(pkg_info))
    return base + ".tar.gz"
