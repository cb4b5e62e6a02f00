"""A real build: the MiniLM-L6 teacher on 200 real SST-2 rows."""

import numpy as np

from conftest import require_glue
from hskcache.build import build_cache
from hskcache.codec import decode_dims, decode_values
from hskcache.config import BuildConfig
from hskcache.reader import open_cache
from hskcache.verify import verify_cache


def test_minilm_sst2_200_rows(tmp_path):
    cfg = BuildConfig(
        data=str(require_glue("SST-2")),
        out=str(tmp_path / "c"),
        split="train",
        limit=200,
        hsk="1l_10t_0.1h",
        chunk_rows=64,
    )
    cache = open_cache(build_cache(cfg, show_progress=False))
    m = cache.manifest
    assert m["teacher"]["model_type"] == "bert" and m["teacher"]["hidden_size"] == 384
    assert [(la["student"], la["teacher"], la["score_attention"]) for la in m["layers"]] == [
        (4, 4, 3)
    ]  # 6-layer teacher: top student layer <-> hidden 4 (2/3 up)
    assert m["selection"]["width_kept"] == 38 and cache.num_examples == 200
    assert verify_cache(cache.url) == []
    d = cache.read(0, 200)
    pos, ids = d["layers/h4/positions"].astype(np.int64), d["input_ids"]
    picked = np.take_along_axis(ids, np.maximum(pos, 0), axis=1)
    assert not ((picked == 102) & (pos >= 0)).any()  # [SEP] = 102 in the uncased vocab
    assert (pos[:, 0] == 0).mean() > 0.9  # [CLS] scores itself highest almost always
    vals = decode_values(m, d["layers/h4/values"], None)
    assert np.isfinite(vals).all()
    dims = decode_dims(d["layers/h4/dims"], d.get("layers/h4/dims_hi")).astype(np.int64)
    real = pos >= 0  # each real token keeps 38 distinct dims of 384, stored in ascending order
    assert (np.diff(dims, axis=-1)[real] > 0).all() and (dims[real] < 384).all()
    stats = m["stats"]
    assert stats["full_fp16_bytes_per_example"] / stats["bytes_per_example"] > 30
