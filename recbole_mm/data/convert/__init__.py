"""Converters from the formats the field uses to RecBole atomic files + recbole-mm feature files.

    python -m recbole_mm.data.convert amazon --reviews reviews_X.json.gz --meta meta_X.json.gz --dataset X
    python -m recbole_mm.data.convert mmrec --input data/baby --dataset baby
    python -m recbole_mm.data.convert unisrec --input downstream/Scientific --dataset Scientific
    python -m recbole_mm.data.convert movielens     # rebuilds the bundled dataset/ml-100k-mm

Each writes ``<output>/<ds>.inter`` (+ ``.item`` where there is item metadata), the feature files
``<ds>.<modality>.npy/.ids`` and ``<ds>.yaml`` (a ``properties/dataset``-style config to pass in
``config_file_list``).
"""

from recbole_mm.data.convert.amazon import convert_amazon
from recbole_mm.data.convert.mmrec import convert_mmrec
from recbole_mm.data.convert.unisrec import convert_unisrec

__all__ = ["convert_amazon", "convert_mmrec", "convert_unisrec"]
