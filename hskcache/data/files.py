"""Local files as `Examples`: GLUE TSVs (read without quoting: their sentences hold bare quotes),
csv / jsonl / parquet tables (through pyarrow, imported only for them) and plain text files (one
unlabelled text per line)."""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

from hskcache.data.examples import Columns, Examples, encode_labels, from_rows, named_columns
from hskcache.errors import DataFormatError
from hskcache.tasks import TaskSpec

TABLE_SUFFIXES = {".tsv", ".csv", ".jsonl", ".json", ".parquet"}
TEXT_SUFFIX = ".txt"  # one text per line, no labels


def utf8_text(file: Path) -> str:
    """The file's text, without a BOM (MRPC has one); a non-UTF-8 byte names its line."""
    raw = file.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataFormatError(
            str(file), f"not UTF-8 (byte 0x{raw[e.start]:02x}); re-save the file as UTF-8", line
        ) from e


def read_tsv(file: Path, has_header: bool) -> tuple[list[list[str]], list[str] | None]:
    # GLUE TSVs contain bare quotes (MRPC, SST-2): no quoting.
    text = io.StringIO(utf8_text(file), newline="")
    reader = csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        rows = list(reader)
    except csv.Error as e:  # a field over csv.field_size_limit(): no sentence is that long
        raise DataFormatError(
            str(file),
            f"a field is longer than {csv.field_size_limit():,} characters (the csv module's "
            f"limit; {e}); is this really a TSV of sentences?",
            reader.line_num,
        ) from e
    if not has_header:
        return rows, None
    if not rows:
        raise DataFormatError(str(file), "empty file")
    return rows[1:], rows[0]


def _from_text(path: Path, spec: TaskSpec, columns: Columns) -> Examples:
    """A plain text file: every non-blank line is one unlabelled text (blank lines are skipped:
    they separate paragraphs, they are not rows)."""
    if spec.text_pair is not None or columns.text_pair is not None:
        raise DataFormatError(
            str(path),
            f"a text file holds one text per line, and task '{spec.name}' takes sentence pairs; "
            "give the pairs as a table (tsv/csv/jsonl/parquet) with two text columns",
        )
    if columns.text is not None or columns.label is not None:
        raise DataFormatError(
            str(path), "a text file has no columns; drop --text-column / --label-column"
        )
    texts = [line for line in utf8_text(path).splitlines() if line.strip()]
    labels, names = encode_labels([None] * len(texts), spec, [])
    return Examples(texts, None, labels, str(path), spec, names)


def from_table(path: Path, spec: TaskSpec, columns: Columns) -> Examples:
    if path.suffix == TEXT_SUFFIX:
        return _from_text(path, spec, columns)
    if path.suffix == ".tsv" and spec.name != "custom":
        rows, header = read_tsv(path, spec.has_header)
        return from_rows(rows, header, spec, columns, str(path))
    # lazy: pyarrow only for csv/jsonl/parquet inputs (GLUE TSVs are read without it)
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    if path.suffix in (".csv", ".tsv", ".jsonl", ".json"):
        utf8_text(path)  # pyarrow's own error names no line, and its JSON reader lets bad bytes in
    try:
        if path.suffix in (".csv", ".tsv"):
            opts = pacsv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ",")
            # In a CSV everything is text: keep `5` a sentence, not an int.
            text_cols = (columns.text or spec.text, columns.text_pair or spec.text_pair)
            strings = pacsv.ConvertOptions(
                column_types={c: pa.string() for c in text_cols if isinstance(c, str)}
            )
            table = pacsv.read_csv(path, parse_options=opts, convert_options=strings)
        elif path.suffix in (".jsonl", ".json"):
            table = pajson.read_json(path)
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            raise DataFormatError(str(path), f"unknown table type; use one of {TABLE_SUFFIXES}")
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise DataFormatError(str(path), f"cannot parse: {str(e).splitlines()[0]}") from e
    header = table.column_names
    rows = [list(r) for r in zip(*(table.column(c).to_pylist() for c in header), strict=True)]
    spec = named_columns(spec)
    return from_rows(rows, header, spec, columns, str(path), numbered=False)
