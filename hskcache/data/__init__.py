"""Load a task split from a GLUE folder, a local table (tsv/csv/jsonl/parquet), a plain text
file (one text per line), a `datasets` folder (`save_to_disk`), an in-memory
`datasets.Dataset` / `DatasetDict`, or the HF hub.

Everything becomes `Examples`: parallel lists of texts (and pair texts) plus a label array, with
a sha256 fingerprint of the raw rows so a cache can prove which data it was built from, and the
class names a saved model reports (`config.id2label`) where the data or the task knows them. A
row may be unlabelled (a text file, a table without its label column, rows past `--labelled
N`): it carries the sentinel `NO_LABEL` (classification) or NaN (regression), which the
distillation losses read as "teacher targets only" (docs/cache-format.md).
"""

from hskcache.data.examples import NO_LABEL, Columns, Examples, labelled_mask
from hskcache.data.files import TABLE_SUFFIXES, utf8_text
from hskcache.data.hf import HFDataset
from hskcache.data.load import DataInput, data_label, load_split

__all__ = [
    "NO_LABEL",
    "TABLE_SUFFIXES",
    "Columns",
    "DataInput",
    "Examples",
    "HFDataset",
    "data_label",
    "labelled_mask",
    "load_split",
    "utf8_text",
]
