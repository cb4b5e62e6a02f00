"""Options shared by `hskcache` and `hsktrain`, declared once: one flag, one meaning, one help.

Each alias is an `Annotated` type a command signature reuses (`hsk: Hsk = None`). Options that
a TOML file may also set default to None in the signature (merge_file overlays only the flags
the user gave); `--help` shows their real defaults through `cliutil.shows_defaults`, so no
default is written here. Only typer is imported: `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# data: which rows, read how
Data = Annotated[
    str,
    typer.Option(
        help="GLUE folder (with train.tsv/dev.tsv), a tsv/csv/jsonl/parquet file (without its "
        "label column: unlabelled rows), a .txt file (one text a line), a datasets save_to_disk "
        "folder, or a hub dataset name ('glue')."
    ),
]
Task = Annotated[
    str,
    typer.Option(
        help="GLUE task (sst2, mrpc, cola, ...); inferred from a GLUE folder's name (predict: "
        "from the model's run)."
    ),
]
Split = Annotated[
    str, typer.Option(help="Split of a GLUE folder or hub dataset: train, dev or test.")
]
Limit = Annotated[int, typer.Option(help="Use only the first N rows.")]
TextColumn = Annotated[str, typer.Option(help="Text column of a table file.")]
TextPairColumn = Annotated[str, typer.Option(help="Second-text column (sentence pairs).")]
LabelColumn = Annotated[str, typer.Option(help="Label column of a table file.")]
MaxLength = Annotated[int, typer.Option(help="Token limit.")]

# selection: which hidden-state values are kept (a cache's, or an online run's)
Hsk = Annotated[
    str,
    typer.Option(
        help="'full' or '<layers>l_<tokens>t_<width>h', e.g. 1l_10t_0.1h (1 layer, 10 tokens, "
        "10% of the width)."
    ),
]
Length = Annotated[str, typer.Option(help="Token selection: left | attention | attention-no-sep.")]
WidthStrategy = Annotated[
    str,
    typer.Option(help="Width selection: magnitude (top-k |value| per token) | random | uniform."),
]
ScoreLayer = Annotated[
    str,
    typer.Option(
        help="Attention layer scoring tokens: producing (the layer that made the state) | uniform."
    ),
]
StudentLayers = Annotated[int, typer.Option(help="Layers of the student (4 = TinyBERT4).")]
LTop = Annotated[int, typer.Option(help="Teacher state paired with the student's top layer.")]
TeacherLayers = Annotated[list[int], typer.Option(help="Explicit teacher hidden states (repeat).")]
Seed = Annotated[
    int,
    typer.Option(help="Seed of every random choice (random width dims, initialisation, order)."),
]

# where and how the model runs
Device = Annotated[str, typer.Option(help="cpu or cuda (under torchrun: each rank's own GPU).")]
Dtype = Annotated[str, typer.Option(help="Teacher compute dtype: float32 | bfloat16 | float16.")]
Amp = Annotated[
    str,
    typer.Option(
        help="Autocast of the forward: none | bf16 | fp16 (fp16 on CUDA only). On a CPU with "
        "AMX (bf16 matrix units), bf16 runs a BERT-base teacher about 3.8x faster."
    ),
]

# cache storage (build and derive)
ValueDtype = Annotated[
    str, typer.Option(help="Stored HSK values: float16 | bfloat16 | int8 (per-token scale).")
]
Compressor = Annotated[
    str,
    typer.Option(
        help="Of the values and logits: none (memory-mapped reads) | zstd. Token ids, "
        "positions, counts, dims and int8 scales are zstd always."
    ),
]
ChunkRows = Annotated[int, typer.Option(help="Examples per chunk.")]
ChunksPerShard = Annotated[int, typer.Option(help="Chunks per shard file.")]
Overwrite = Annotated[bool, typer.Option(help="Replace a cache built with other settings.")]
BreakLock = Annotated[
    bool, typer.Option(help="Take the lock from another writer; only if that writer is dead.")
]

# every command
Quiet = Annotated[bool, typer.Option(help="No progress bar.")]
Config = Annotated[
    Path, typer.Option(help="TOML file with any of these options; a flag given overrides it.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
CacheArg = Annotated[str, typer.Argument(help="Cache path or fsspec URL.")]

# Shown as the default of a selection option that `derive` takes from its source cache.
SOURCES = "the source's"
