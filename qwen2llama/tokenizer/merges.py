"""Recover a BPE merge list from tiktoken ranks.

tiktoken has no merges, only ranks: it repeatedly joins the adjacent pair whose
concatenation has the lowest rank. A Hugging Face BPE needs merges instead. For each token,
BPE limited to lower ranks leaves exactly two parts; that pair is the token's one merge, and
listing merges in rank order makes merge priority equal rank order.
"""
from __future__ import annotations


def _bpe_parts(token: bytes, ranks: dict[bytes, int], limit: int) -> list[bytes]:
    """tiktoken's merge loop on `token` alone, using only ranks below `limit`, stopped at two
    parts (the only merge left then is the token itself)."""
    parts = [token[i:i + 1] for i in range(len(token))]
    get = ranks.get
    pair_ranks = [get(parts[i] + parts[i + 1], limit) for i in range(len(parts) - 1)]
    while len(parts) > 2:
        best_rank = min(pair_ranks)
        if best_rank >= limit:
            break
        i = pair_ranks.index(best_rank)  # leftmost, as tiktoken
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = get(parts[i - 1] + parts[i], limit)
        if i < len(pair_ranks):
            pair_ranks[i] = get(parts[i] + parts[i + 1], limit)
    return parts


def unbuildable_extras(tokens: list[bytes], extra: dict[int, bytes]) -> list[bytes]:
    """An extension's multi-byte tokens that no merge of lower-ranked tokens forms. Qwen's tiktoken
    emits such a token only when a whole pre-token equals it; a tokenizer rebuilt from vocab.json
    and merges.txt (transformers 5 does so) never emits it."""
    ranks = {tok: rank for rank, tok in [*enumerate(tokens), *extra.items()]}
    return [tok for rank, tok in sorted(extra.items())
            if len(tok) > 1 and len(_bpe_parts(tok, ranks, rank)) != 2]


def recover_merges(tokens: list[bytes], extra: dict[int, bytes] | None = None
                   ) -> tuple[list[tuple[bytes, bytes]], list[int]]:
    """(merges in rank order, ranks of multi-byte tokens that no merge sequence builds). `extra`:
    an extension's tokens by rank (all above the regular ones), merged after them in rank order."""
    ranked = [*enumerate(tokens), *sorted((extra or {}).items())]
    ranks = {tok: rank for rank, tok in ranked}
    merges: list[tuple[bytes, bytes]] = []
    unbuildable: list[int] = []
    for rank, token in ranked:
        if len(token) < 2:
            continue
        parts = _bpe_parts(token, ranks, rank)
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
        else:
            unbuildable.append(rank)
    return merges, unbuildable
