"""data=csv: image paths and labels in a CSV or TSV file, with an optional train/val/test split column.

People keep labels in spreadsheets, so a bad row is named as a spreadsheet numbers it (the header is row 1):
a file that is missing or not an image, an empty label or an unknown split stops the load with one line, or,
with data.strict=false, is skipped and counted. A label cell may hold several labels (data.label_separator),
which makes every image's label a set: a multi-label dataset.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from cnn_train.runtime.errors import UserError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
DELIMITERS = ",;\t"  # what spreadsheets export; "|" and " " are left to data.label_separator


@dataclass(frozen=True)
class LabelFile:
    """Where the file is and how to read it: data.file, data.root and the column settings."""

    file: Path
    root: Path | None  # the image paths are relative to this; None: to the file's own folder
    path_column: str = "path"
    label_column: str = "label"
    split_column: str | None = "split"
    label_separator: str | None = None

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> LabelFile | None:
        """The table a data config names (data.name=csv), else None."""
        if data.get("name") != "csv":
            return None
        if not data.get("file"):
            raise UserError(
                "data.file: give the CSV or TSV file of image paths and labels (data.file=labels.csv)"
            )
        root = data.get("root")
        return cls(
            Path(str(data["file"])).expanduser(), Path(str(root)).expanduser() if root else None,
            str(data.get("path_column", "path")), str(data.get("label_column", "label")),
            data.get("split_column", "split"), data.get("label_separator"),
        )  # fmt: skip

    @property
    def multi_label(self) -> bool:
        return self.label_separator is not None

    @property
    def base(self) -> Path:
        return self.root if self.root is not None else self.file.parent


@dataclass
class Rows:
    """The usable rows by split, as (path, labels), the class names, and how many bad rows were skipped."""

    splits: dict[str, list[tuple[str, tuple[str, ...]]]]
    classes: list[str]
    skipped: int


def _dialect(table: LabelFile, head: str) -> type[csv.Dialect] | csv.Dialect:
    if table.file.suffix.lower() == ".tsv":
        return csv.excel_tab
    try:
        return csv.Sniffer().sniff(head, delimiters=DELIMITERS)
    except csv.Error:  # one column, or too little text to tell: a comma
        return csv.excel


def _records(table: LabelFile) -> tuple[list[str], list[list[str]]]:
    """The header and the rows; utf-8-sig drops the byte-order mark spreadsheets write."""
    if not table.file.is_file():
        raise UserError(f"data.file: {table.file} does not exist")
    if table.root is not None and not table.root.is_dir():
        raise UserError(
            f"data.root: {table.root} is not a folder (the file's image paths are relative to it)"
        )
    try:
        text = table.file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"data.file: {table.file}: not a readable UTF-8 text file ({e})") from e
    try:
        records = list(csv.reader(io.StringIO(text), _dialect(table, text[:65536])))
    except csv.Error as e:  # a NUL byte, an unclosed quote at the end
        raise UserError(f"data.file: {table.file}: not a readable CSV file ({e})") from e
    if not records:
        raise UserError(f"data.file: {table.file} is empty")
    return [c.strip() for c in records[0]], records[1:]


def _column(header: list[str], key: str, name: str | None, file: Path, required: bool) -> int | None:
    if name is None:
        return None
    if name in header:
        return header.index(name)
    if required:
        raise UserError(f"data.{key}: {name!r} is not a column of {file} (it has {', '.join(header)})")
    return None


def _labels(cell: str, separator: str | None) -> tuple[str, ...]:
    """One label, or the set a multi-label cell holds (order and repeats do not matter)."""
    if separator is None:
        return (cell.strip(),) if cell.strip() else ()
    return tuple(sorted({part.strip() for part in cell.split(separator) if part.strip()}))


def _problem(path: str, labels: tuple[str, ...], split: str, file: Path, check_files: bool) -> str | None:
    """Why a row cannot be used, or None."""
    if not path:
        return "no image path"
    if not labels:
        return "empty label"
    if split not in SPLITS:
        return f"split {split!r} is not train, val or test"
    if not check_files:
        return None
    if not file.is_file():
        return "no such file"
    try:
        with Image.open(file) as im:
            im.verify()  # the header (and a PNG's checksums): cheap, and catches text or cut-off files
    except Exception as e:  # any failure to parse a file from the wild means the file is unusable
        return f"not an image ({type(e).__name__})"
    return None


def read_table(table: LabelFile, strict: bool, check_files: bool = True) -> Rows:
    """The file's usable rows. Without `check_files` the image files are not opened (enough to count classes).

    Raises:
        UserError: one line naming the first bad row (strict), a missing column or file, or no training row.
    """
    header, records = _records(table)
    at = {
        "path": _column(header, "path_column", table.path_column, table.file, True),
        "label": _column(header, "label_column", table.label_column, table.file, True),
        # The default name may be absent (then data.val_split holds out validation); a name given must exist.
        "split": _column(
            header, "split_column", table.split_column, table.file, table.split_column != "split"
        ),
    }
    cell = lambda r, k: r[at[k]].strip() if at[k] is not None and at[k] < len(r) else ""  # noqa: E731
    splits: dict[str, list[tuple[str, tuple[str, ...]]]] = {s: [] for s in SPLITS}
    bad: list[str] = []
    for number, record in enumerate(records, start=2):  # the header is row 1
        if not any(c.strip() for c in record):
            continue  # a blank line
        path, labels = cell(record, "path"), _labels(cell(record, "label"), table.label_separator)
        split = cell(record, "split").lower() if at["split"] is not None else "train"
        file = table.base / path
        why = _problem(path, labels, split, file, check_files)
        if why is not None:
            bad.append(f"row {number}: {path or '(no path)'}: {why}")
            continue
        splits[split].append((str(file), labels))
    _report(table, bad, strict)
    if not splits["train"]:
        raise UserError(f"data.file: {table.file} has no usable training rows")
    classes = sorted({label for rows in splits.values() for _, labels in rows for label in labels})
    return Rows({s: rows for s, rows in splits.items() if rows}, classes, len(bad))


def _report(table: LabelFile, bad: list[str], strict: bool) -> None:
    if not bad:
        return
    if strict:
        more = f" ({len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
        raise UserError(f"data.file: {table.file} {bad[0]}{more}; data.strict=false skips bad rows")
    shown = "; ".join(bad[:10]) + (f"; and {len(bad) - 10} more" if len(bad) > 10 else "")
    log.warning("data.file: skipping %d bad row(s) of %s: %s", len(bad), table.file, shown)
