"""Codec word errors by how often the corpus voiced each word: does the codec fail on unheard words?

Reads the per-sentence transcripts of `ttt eval codec --transcripts FILE` and the voiced texts of a
corpus. Every reference word that whisper got right in the original is binned by its count in the
corpus; a bin's miss rate is the share of those words the resynthesis lost.

Usage: .venv/bin/python benchmarks/codec_word_coverage.py TRANSCRIPTS.jsonl [...] [--corpus data/corpus]
"""

from __future__ import annotations

import argparse
import collections
import difflib
import json
from pathlib import Path

BINS = ((0, 0, "0"), (1, 9, "1-9"), (10, 99, "10-99"), (100, float("inf"), "100+"))


def matched(reference: list[str], hypothesis: list[str]) -> set[int]:
    """Indices of reference words the hypothesis reproduces (in an alignment)."""
    blocks = difflib.SequenceMatcher(a=reference, b=hypothesis, autojunk=False).get_matching_blocks()
    return {i for b in blocks for i in range(b.a, b.a + b.size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("transcripts", nargs="+", help="JSONL files written by ttt eval codec --transcripts")
    parser.add_argument("--corpus", default="data/corpus", help="corpus folder from ttt data synth")
    args = parser.parse_args()
    from training.wer import normalise_text

    shards = sorted(Path(args.corpus).glob("shard_*.jsonl"))
    if not shards:
        raise SystemExit(f"no voiced shards in {args.corpus}: build the corpus with `ttt data synth`")
    counts: collections.Counter[str] = collections.Counter()
    for shard in shards:
        for line in shard.read_text().splitlines():
            counts.update(normalise_text(json.loads(line)["text"]).split())

    by_checkpoint: dict[str, dict[str, list[int]]] = {}
    for path in args.transcripts:
        for line in Path(path).read_text().splitlines():
            row = json.loads(line)
            bins = by_checkpoint.setdefault(row["checkpoint"], {name: [0, 0] for *_, name in BINS})
            reference = normalise_text(row["text"]).split()
            heard_original = matched(reference, normalise_text(row["original"]).split())
            heard_resynth = matched(reference, normalise_text(row["resynth"]).split())
            for i in heard_original:
                name = next(name for low, high, name in BINS if low <= counts[reference[i]] <= high)
                bins[name][0] += 1
                bins[name][1] += i not in heard_resynth
    for checkpoint, bins in by_checkpoint.items():
        summary = {
            name: {"words": n, "missed_pct": round(100 * missed / max(n, 1), 2)} for name, (n, missed) in bins.items()
        }
        print(json.dumps({"checkpoint": checkpoint, "corpus_word_types": len(counts), "by_corpus_count": summary}))


if __name__ == "__main__":
    main()
