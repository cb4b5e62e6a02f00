"""`hskcache build --augment N`: N seeded word-replacement variants of every row (TinyBERT's data
augmentation), labelled by the teacher in the build's single pass.

Why this rule. TinyBERT replaces each single-piece word, with probability `p` = 0.4, by one of
its K = 15 nearest candidates (BERT's masked-LM guesses; GloVe neighbours for multi-piece
words), 20 variants a row. A masked-LM head or GloVe is not something every teacher has; the
teacher's own input-embedding matrix is: its nearest neighbours by cosine similarity are tokens
the teacher already reads alike. So a word-start token that is a whole word (the next token is
no continuation piece) and is alphabetic becomes, with probability `p`, one of its K nearest
word-start, alphabetic, non-special tokens in that matrix, drawn uniformly. Sub-word pieces,
multi-piece words, punctuation, numbers and special tokens are never touched, so a variant has
the source row's length, segment ids and special tokens, and differs in at most its replaceable
positions.

Determinism: a variant is a pure function of (seed, row index, the row's ids, the embedding
matrix): row i draws from `default_rng([seed, AUGMENT_STREAM, i])`, so every build and every
resume computes the same variants, and variants are appended after the source rows (source row
i keeps index i; its variant j sits at n + i * N + j).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hskcache.tokenize import Encoded

RULE = "embedding-neighbours"
AUGMENT_STREAM = 0xA06  # keeps these draws apart from any other use of the build's seed
NEIGHBOURS = 15  # TinyBERT's K
PROBABILITY = 0.4  # TinyBERT's p_t


@dataclass(frozen=True)
class Augment:
    """The augmentation a build runs: recorded whole in the manifest (`data.augment`)."""

    n: int
    seed: int
    neighbours: int = NEIGHBOURS
    probability: float = PROBABILITY

    def record(self) -> dict:
        return {
            "n": self.n,
            "seed": self.seed,
            "rule": RULE,
            "neighbours": self.neighbours,
            "probability": self.probability,
        }


def word_tokens(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(starts, words): per vocabulary id, whether it starts a word, and whether it is a whole
    alphabetic word-start token (a candidate to replace or to replace with).

    WordPiece (BERT, MPNet, ELECTRA) marks continuation pieces with `##`; byte-level BPE
    (RoBERTa) marks word starts with `Ġ` instead.
    """
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    bpe = any(t.startswith("Ġ") for t in vocab)
    starts = np.zeros(size, dtype=bool)
    words = np.zeros(size, dtype=bool)
    special = set(tokenizer.all_special_ids)
    for token, i in vocab.items():
        start = token.startswith("Ġ") if bpe else not token.startswith("##")
        starts[i] = start
        bare = token[1:] if bpe and start else token
        words[i] = start and i not in special and bare.isalpha()
    return starts, words


def neighbour_table(
    embeddings: torch.Tensor, words: np.ndarray, wanted: np.ndarray, k: int
) -> dict[int, np.ndarray]:
    """The k nearest word tokens (cosine, itself excluded) of every id in `wanted`, best first.

    Only the ids the rows hold are looked up, in blocks, so the (V x V) similarity is never
    built (30,522 x 30,522 floats would be 3.7 GB).
    """
    emb = torch.nn.functional.normalize(embeddings.detach().float().cpu(), dim=-1)  # (V, h)
    cand = torch.from_numpy(np.flatnonzero(words[: len(emb)]))  # (C,)
    out: dict[int, np.ndarray] = {}
    for lo in range(0, len(wanted), 1024):
        ids = torch.from_numpy(wanted[lo : lo + 1024].astype(np.int64))
        sim = emb[ids] @ emb[cand].T  # (b, C)
        sim[cand[None, :] == ids[:, None]] = -2.0  # never the token itself
        best = torch.topk(sim, min(k, len(cand) - 1), dim=-1).indices  # (b, k)
        for i, row in zip(ids.tolist(), cand[best].numpy(), strict=True):
            out[i] = row
    return out


def augment_rows(enc: Encoded, embeddings: torch.Tensor, tokenizer, aug: Augment) -> Encoded:
    """The `aug.n` variants of every row of `enc`, as rows of their own (n * N of them).

    Returns:
        Variant j of row i at index i * N + j: same lengths and segment ids, each replaceable
        token swapped for a random one of its nearest neighbours with probability p.
    """
    starts, words = word_tokens(tokenizer)
    ids = enc.input_ids  # (n, T)
    real = np.arange(ids.shape[1])[None, :] < enc.lengths[:, None]
    nxt = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
    nxt_real = np.concatenate([real[:, 1:], np.zeros_like(real[:, :1])], axis=1)
    in_vocab = lambda a: np.minimum(a, len(words) - 1)  # noqa: E731 (ids past the vocab: added tokens)
    # a whole single-piece word: a word token whose next real token starts a word (or none)
    single = words[in_vocab(ids)] & (~nxt_real | starts[in_vocab(nxt)]) & real & (ids < len(words))
    table = neighbour_table(embeddings, words, np.unique(ids[single]), aug.neighbours)
    n, N = len(ids), aug.n
    out = np.repeat(ids, N, axis=0)  # (n * N, T)
    for i in range(n):
        pos = np.flatnonzero(single[i])
        rng = np.random.default_rng([aug.seed, AUGMENT_STREAM, i])
        swap = rng.random((N, len(pos))) < aug.probability  # (N, P)
        pick = rng.integers(0, aug.neighbours, (N, len(pos)))  # (N, P)
        for j in range(N):
            for p, choose in zip(pos[swap[j]], pick[j][swap[j]], strict=True):
                cands = table[int(ids[i, p])]
                out[i * N + j, p] = cands[choose % len(cands)]
    return Encoded(out, np.repeat(enc.token_type_ids, N, axis=0), np.repeat(enc.lengths, N, axis=0))
