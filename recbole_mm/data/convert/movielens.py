"""Build the bundled ``ml-100k-mm`` dataset from RecBole's own MovieLens-100k atomic files.

Output, in one folder: ``<ds>.inter`` (copied), ``<ds>.item`` (item_id, movie_title,
release_year, class, with every cell filled: pandas 3 breaks RecBole on empty ``*_seq`` cells) and
two text modalities embedded with the generic text embedder:

- ``title``: the movie title, article moved to the front ("Usual Suspects, The" -> "The Usual Suspects");
- ``meta``: genres and release year as a sentence ("Genres: Animation, Children's, Comedy. Released in 1995.").

An item with no title (MovieLens item 267) or no genre and no year gets no row: the loader's
``missing_feature`` policy covers it.
"""

import importlib.util
import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

import pandas as pd

from recbole_mm.embed.runner import EncodeOptions
from recbole_mm.embed.table import read_table, require_columns, unique_ids
from recbole_mm.embed.text import TextEncoder, embed_texts

UNKNOWN = "unknown"
SOURCE_NAME = "ml-100k"
ITEM_HEADER = ("item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq")
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ARTICLES = ("The", "A", "An", "La", "Le", "Les", "L'", "Il", "Lo", "Der", "Die", "Das", "Det", "Den", "El", "Los", "Las", "O", "Un", "Une")
TRAILING_ARTICLE = re.compile(r"^(?P<rest>.+), (?P<article>%s)$" % "|".join(re.escape(article) for article in ARTICLES))
ALTERNATE_TITLE = re.compile(r"^(?P<main>.+?) \((?P<alternate>.+)\)$")
YEAR = re.compile(r"^\d{4}$")
YEAR_IN_TITLE = re.compile(r"\s*\((?P<year>\d{4})\)")
UNKNOWN_TITLES = {"unknown", "unkonwn"}  # the source spells item 267's title "unkonwn"


def default_source() -> str:
    """RecBole's bundled ml-100k folder (``recbole/dataset_example/ml-100k``)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("recbole is not installed; pass --source <folder with ml-100k.inter and ml-100k.item>")
    return os.path.join(list(spec.submodule_search_locations)[0], "dataset_example", SOURCE_NAME)


def front_article(text: str) -> str:
    """``"Usual Suspects, The"`` -> ``"The Usual Suspects"``; ``"Uomo delle stelle, L'"`` -> ``"L'Uomo delle stelle"``."""
    match = TRAILING_ARTICLE.match(text)
    if not match:
        return text
    article, rest = match.group("article"), match.group("rest")
    return f"{article}{rest}" if article.endswith("'") else f"{article} {rest}"


def natural_title(title: str) -> str:
    """Reading order for the title and for its alternate title in parentheses."""
    match = ALTERNATE_TITLE.match(title)
    if not match:
        return front_article(title)
    return f"{front_article(match.group('main'))} ({front_article(match.group('alternate'))})"


def clean_item(title: str, year: str, genres: str) -> Tuple[str, str, str]:
    """Fill or repair one item's cells: unknown title / year / genres become ``unknown``.

    A year misparsed by the source (item 1412 has year ``V`` and ``(1995)`` in its title) is taken
    back from the title.
    """
    title, year, genres = title.strip(), year.strip(), genres.strip()
    if not YEAR.match(year):
        found = YEAR_IN_TITLE.search(title)
        year = found.group("year") if found else UNKNOWN
        title = YEAR_IN_TITLE.sub("", title) if found else title
    if not title or title.lower() in UNKNOWN_TITLES:
        title = UNKNOWN
    return title, year, genres or UNKNOWN


def title_text(title: str) -> str:
    """The ``title`` modality's text; empty for an unknown title, which is then skipped."""
    return "" if title == UNKNOWN else natural_title(title)


def meta_text(year: str, genres: str) -> str:
    """The ``meta`` modality's text: genres and release year as a sentence; empty if both are unknown."""
    named = [genre for genre in genres.split() if genre != UNKNOWN]
    parts = [f"Genres: {', '.join(named)}." if named else "", f"Released in {year}." if year != UNKNOWN else ""]
    return " ".join(part for part in parts if part)


def load_items(source: str) -> pd.DataFrame:
    """The cleaned item table, with the two modality texts beside it."""
    path = os.path.join(source, f"{SOURCE_NAME}.item")
    table = read_table(path)
    require_columns(table, ["item_id", "movie_title", "release_year", "class"], path)
    rows = [clean_item(*cells) for cells in zip(table["movie_title"], table["release_year"], table["class"])]
    items = pd.DataFrame(rows, columns=["movie_title", "release_year", "class"])
    items.insert(0, "item_id", unique_ids(table, "item_id", path))
    items["title_text"] = [title_text(title) for title in items["movie_title"]]
    items["meta_text"] = [meta_text(year, genres) for year, genres in zip(items["release_year"], items["class"])]
    return items


def write_item_file(items: pd.DataFrame, path: str) -> None:
    """RecBole atomic ``.item`` file: typed header, tab-separated, no quoting."""
    lines = ["\t".join(ITEM_HEADER)]
    lines += ["\t".join(row) for row in items[["item_id", "movie_title", "release_year", "class"]].itertuples(index=False)]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def copy_inter_file(source: str, target: str) -> None:
    """Copy the interactions after checking the header and that no cell is empty."""
    with open(source, encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n")
        if header != INTER_HEADER:
            raise ValueError(f"{source}: header {header!r}, expected {INTER_HEADER!r}")
        for line_number, line in enumerate(handle, start=2):
            cells = line.rstrip("\n").split("\t")
            if len(cells) != 4 or not all(cells):
                raise ValueError(f"{source}: line {line_number}: expected 4 non-empty cells, found {cells}")
    shutil.copyfile(source, target)


def build(
    output: str,
    source: Optional[str] = None,
    dataset: str = "ml-100k-mm",
    model: str = "all-MiniLM-L6-v2",
    device: Optional[str] = None,
    options: Optional[EncodeOptions] = None,
) -> Dict[str, str]:
    """Write the atomic files and the ``title`` / ``meta`` feature files; returns the written paths."""
    source = source or default_source()
    options = options or EncodeOptions(normalize=True)
    os.makedirs(output, exist_ok=True)
    items = load_items(source)
    written = {"inter": os.path.join(output, f"{dataset}.inter"), "item": os.path.join(output, f"{dataset}.item")}
    copy_inter_file(os.path.join(source, f"{SOURCE_NAME}.inter"), written["inter"])
    write_item_file(items, written["item"])
    encoder = TextEncoder(model, device)
    tokens: List[str] = items["item_id"].tolist()
    for modality in ("title", "meta"):
        written[modality] = embed_texts(tokens, items[f"{modality}_text"], encoder, output, dataset, modality, options)[0]
    return written
