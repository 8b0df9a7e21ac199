"""Where a known trigger's tokens rank among the tokens whose input embedding fine-tuning moved most (the signal
`embedding-shift`, `shift-pairs` and `shift-phrases` read; benchmarks/studies/scan), no forward pass:

    python benchmarks/shift_ranks.py --model insent --base smollm2-135m --trigger "I watched this 3D movie"

Prints, as one JSON object, each token of the trigger (as the suspect's tokenizer writes it inserted mid-sentence)
with its rank by relative shift ||E_suspect - E_base|| / ||E_base|| among the scan's trigger vocabulary (tokens of
letters or digits; null: not in it) and among every non-special token (what shift-phrases ranks), and the 40
most-moved tokens of the vocabulary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from w2sdefense.models import load_classifier
from w2sdefense.scan.base import trigger_vocabulary
from w2sdefense.scan.embedding_shift import relative_shift

from layer_probe import model_path  # the realistic suspects and the clean model, by name


def ranks(shift: torch.Tensor, ids: torch.Tensor) -> dict[int, int]:
    """token id -> its rank (0: moved most) by `shift` among `ids`."""
    return {int(ids[i]): r for r, i in enumerate(shift.argsort(descending=True).tolist())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="insent", help="insent, badnet or clean (the realistic protocol's)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="the run folder the protocol wrote")
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--trigger", default="I watched this 3D movie")
    args = parser.parse_args()
    suspect, base = load_classifier(str(model_path(args.runs, args.model)), 2), load_classifier(args.base, 2)
    tok = suspect.tokenizer
    table, base_table = suspect.model.get_input_embeddings().weight, base.model.get_input_embeddings().weight.detach()
    vocab, _ = trigger_vocabulary(tok)
    special = set(tok.all_special_ids)
    every = torch.tensor([i for i in sorted(set(tok.get_vocab().values())) if i not in special])
    in_vocab = ranks(relative_shift(table, base_table.float(), vocab), vocab)
    every_shift = relative_shift(table, base_table.float(), every)
    in_every = ranks(every_shift, every)
    pieces = tok(" " + args.trigger, add_special_tokens=False)["input_ids"]
    print(json.dumps({
        "model": args.model, "base": args.base, "trigger": args.trigger,
        "vocabulary": len(vocab), "tokens": len(every),
        "pieces": [{"token": tok.convert_ids_to_tokens(i), "rank_in_vocabulary": in_vocab.get(i),
                    "rank_in_all": in_every.get(i)} for i in pieces],
        "most_moved": [tok.convert_ids_to_tokens(int(every[i])) for i in every_shift.argsort(descending=True)[:40]],
    }, ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
