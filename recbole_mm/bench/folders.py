"""Dataset folders: a fingerprint of their files (part of every run's cache key), and building a
generated set apart from its live copy, installed only when its files differ.

Several benchmark invocations may share one results folder, and each builds the generated sets
(`sparse`, `cold`, `cold-valid`, the own-data variant copies) when it starts. Rewriting a set in
place, even with the same bytes, let a run of another invocation load a half-written file once (425
of 1,500 users' sequences); building in a staging folder and swapping only on a change cannot.
"""

import hashlib
import os
import shutil
import tempfile
from typing import Callable


def data_fingerprint(folder: str) -> str:
    """sha1 (12 hex) of every file of a dataset folder, names and contents."""
    digest = hashlib.sha1()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            digest.update(name.encode("utf-8") + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:12]


def install_folder(built: str, kept: str, compare: str = "") -> bool:
    """Move the freshly built folder ``built`` to ``kept`` unless ``kept`` already holds the same files
    (compared in their ``compare`` subfolder); return whether it moved."""
    new, old = os.path.join(built, compare), os.path.join(kept, compare)
    if os.path.isdir(old) and data_fingerprint(new) == data_fingerprint(old):
        shutil.rmtree(built, ignore_errors=True)
        return False
    shutil.rmtree(kept, ignore_errors=True)
    os.replace(built, kept)
    return True


def build_and_install(root: str, build: Callable[[str], str], compare: str = "") -> str:
    """Run ``build(staging)``, which writes one folder inside the scratch folder ``staging`` (under
    ``root``) and returns its path; install it as ``<root>/<its name>`` (:func:`install_folder`) and
    return that path. The scratch folder goes whatever happens."""
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".staging_", dir=root)
    try:
        built = build(staging)
        kept = os.path.join(root, os.path.basename(built))
        install_folder(built, kept, compare)
        return kept
    finally:
        shutil.rmtree(staging, ignore_errors=True)
