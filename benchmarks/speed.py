"""Time our `defend` epoch and evaluation against a straightforward loop like the original code's.

    python benchmarks/speed.py                 # smollm2-135m + minilm-l6, 512 SST-2 rows
    python benchmarks/speed.py --student tiny-llama --teacher tiny-bert --rows 64 --eval-rows 64   # smoke

Ours: the teacher's outputs cached once, each split tokenised once, length-grouped batches padded
to their longest, evaluation sorted by length in large batches. Both evaluate the initial
weights first (so their predictions must agree), then train. Straightforward: teacher forward
every step, tokenising every batch, batches in file order padded to their longest, evaluation in
file order at the training batch size. Each arm runs in its own process (so its peak memory is its
own) on the same rows from the same initial weights; a third process checks that both compute the
same loss terms on the same first batch. Results go to a JSON file and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Setup:
    """What both arms share."""

    student: str
    teacher: str
    rows: int
    eval_rows: int
    batch_size: int
    eval_batch_size: int
    max_length: int
    seed: int
    data_dir: str | None


def _load(setup: Setup):
    """Student wrapped with the default LoRA, an (untrained) teacher of matching width, the data."""
    from w2sdefense.config import DataConfig, DefenseConfig, RuntimeConfig, TeacherConfig, TrainConfig
    from w2sdefense.data.datasets import load_splits
    from w2sdefense.defenses import resolve
    from w2sdefense.models.teacher import build_teacher
    from w2sdefense.runtime import make_runtime
    from w2sdefense.train.job import prepare_student

    rt = make_runtime(RuntimeConfig())
    splits = load_splits(DataConfig(dataset="sst2", data_dir=setup.data_dir, max_train=setup.rows,
                                    max_test=setup.eval_rows))
    # The default W2SDefense settings (cfg.settings) with this benchmark's recipe (cfg.train).
    cfg = resolve(DefenseConfig(train=TrainConfig(method="lora", epochs=1.0, lr=2e-4, batch_size=setup.batch_size,
                                                  max_length=setup.max_length, eval_batch_size=setup.eval_batch_size)))
    student = prepare_student(setup.student, 2, cfg.train, rt, Path(os.environ["W2S_BENCH_TMP"]), setup.seed)
    hidden = student.config.get_text_config().hidden_size
    teacher = build_teacher(TeacherConfig(model=setup.teacher), 2, hidden, rt, setup.seed)
    teacher.model.eval().requires_grad_(False)
    return rt, splits, cfg, student, teacher


def _naive_terms(student, teacher, rows, cfg, device, decoder):
    """The straightforward step's loss terms: tokenise now, teacher forward now."""
    from w2sdefense.defenses.losses import feature_alignment_per_sample, kd_loss, w2s_total
    from w2sdefense.models.features import pool

    texts, labels = [r.text for r in rows], torch.tensor([r.label for r in rows], device=device)
    s_in = student.tokenizer(texts, padding=True, truncation=True, max_length=cfg.train.max_length,
                             return_tensors="pt").to(device)
    t_in = teacher.tokenizer(texts, padding=True, truncation=True, max_length=cfg.train.max_length,
                             return_tensors="pt").to(device)
    with torch.no_grad():
        t_out = teacher.model(input_ids=t_in["input_ids"], attention_mask=t_in["attention_mask"])
    out = student.model(input_ids=s_in["input_ids"], attention_mask=s_in["attention_mask"], output_hidden_states=True)
    logits = out.logits.float()
    ce = F.cross_entropy(logits, labels)
    kd = kd_loss(logits, t_out.logits, cfg.settings.temperature)
    fa = feature_alignment_per_sample(t_out.feature, pool(out.hidden_states[-1], s_in["attention_mask"], decoder))
    return w2s_total(ce, kd, fa, cfg.settings.alpha, cfg.settings.beta, cfg.settings.gamma), {"ce": ce.item(), "kd": kd.item(), "fa": fa.item()}


def arm_ours(setup: Setup) -> dict:
    """One epoch of our defend loop (teacher cache included in the time) and our evaluation."""
    from w2sdefense.defenses.w2sdefense import cache_teacher_outputs, w2s_loss
    from w2sdefense.models.predict import predict_logits
    from w2sdefense.models import is_decoder
    from w2sdefense.models.batching import Encoded, encode
    from w2sdefense.train.loop import fit

    rt, splits, cfg, student, teacher = _load(setup)
    start = time.perf_counter()
    encoded = encode(student.tokenizer, splits.test, setup.max_length)
    logits = predict_logits(student.model, encoded, student.tokenizer.pad_token_id, setup.eval_batch_size, rt)
    eval_s = time.perf_counter() - start
    start = time.perf_counter()
    cache = cache_teacher_outputs(teacher, splits.train, cfg.train.max_length, cfg.train.eval_batch_size, rt)
    train = encode(student.tokenizer, splits.train, cfg.train.max_length)
    fit(student.model, train, Encoded([], []), cfg.train, rt, save=lambda model, path, state: path.mkdir(),
        out_dir=Path(os.environ["W2S_BENCH_TMP"]), seed=setup.seed, pad_id=student.tokenizer.pad_token_id,
        loss_fn=w2s_loss(cfg.settings, cache, is_decoder(student.config), rt.device), desc="ours: defend")
    defend_s = time.perf_counter() - start
    return {"defend_s": defend_s, "eval_s": eval_s, "predictions": logits.argmax(-1).tolist()}


def arm_naive(setup: Setup) -> dict:
    """The straightforward loop and evaluation, on the same rows from the same initial weights."""
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    from w2sdefense.models import is_decoder
    from w2sdefense.train.loop import _param_groups

    rt, splits, cfg, student, teacher = _load(setup)
    model, device, decoder = student.model.to(rt.device), rt.device, is_decoder(student.config)
    teacher.model.to(device)
    bs = setup.batch_size
    batches = [splits.train[i:i + bs] for i in range(0, len(splits.train), bs)]
    model.eval()
    start = time.perf_counter()
    preds = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(splits.test), bs), desc="straightforward: evaluate"):
            texts = [r.text for r in splits.test[i:i + bs]]
            enc = student.tokenizer(texts, padding=True, truncation=True, max_length=setup.max_length,
                                    return_tensors="pt").to(device)
            preds += model(**enc).logits.argmax(-1).tolist()
    eval_s = time.perf_counter() - start
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.train), lr=cfg.train.lr)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.train.warmup_ratio * len(batches)), len(batches))
    model.train()
    start = time.perf_counter()
    for rows in tqdm(batches, desc="straightforward: defend"):
        loss, _ = _naive_terms(student, teacher, rows, cfg, device, decoder)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    defend_s = time.perf_counter() - start
    return {"defend_s": defend_s, "eval_s": eval_s, "predictions": preds}


def check_first_batch(setup: Setup) -> dict:
    """Loss terms of the first file-order batch: cached teacher + our collation vs the straightforward step."""
    from w2sdefense.defenses.w2sdefense import cache_teacher_outputs, w2s_loss
    from w2sdefense.models import is_decoder
    from w2sdefense.models.batching import encode, file_order_batches, make_collate

    rt, splits, cfg, student, teacher = _load(setup)
    student.model.eval()  # dropout off: both sides must see the same network
    rows = splits.train[: setup.batch_size]
    cache = cache_teacher_outputs(teacher, splits.train, cfg.train.max_length, cfg.train.eval_batch_size, rt)
    encoded = encode(student.tokenizer, splits.train, cfg.train.max_length)
    first = file_order_batches(len(encoded), setup.batch_size)[0]
    batch = make_collate(student.tokenizer.pad_token_id)(
        [{"input_ids": encoded.input_ids[i], "label": encoded.labels[i], "position": i} for i in first])
    with torch.no_grad():
        ours = w2s_loss(cfg.settings, cache, is_decoder(student.config), rt.device)(student.model, batch).terms
        _, naive = _naive_terms(student, teacher, rows, cfg, rt.device, is_decoder(student.config))
    return {"ours": ours, "straightforward": naive,
            "max_abs_diff": max(abs(ours[k] - naive[k]) for k in naive),
            "max_rel_diff": max(abs(ours[k] - naive[k]) / max(abs(naive[k]), 1e-12) for k in naive)}


def _child(fn_name: str, setup: Setup, queue) -> None:
    import resource

    from w2sdefense.progress import quiet_libraries

    quiet_libraries()
    result = globals()[fn_name](setup)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(result)


def run_in_process(fn_name: str, setup: Setup) -> dict:
    """Run one arm in a fresh process (its own peak memory), return its result."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn_name, setup, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    """Parse arguments, run the arms one after the other, write and print the results."""
    import platform
    import tempfile

    from w2sdefense.eval.report import environment
    from w2sdefense.fileio import write_json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="smollm2-135m")
    parser.add_argument("--teacher", default="minilm-l6")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--eval-rows", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="benchmarks/results/speed.json")
    parser.add_argument("--update-results", action="store_true", help="rewrite the speed section of RESULTS.md")
    args = parser.parse_args()
    setup = Setup(args.student, args.teacher, args.rows, args.eval_rows, args.batch_size, args.eval_batch_size,
                  args.max_length, args.seed, args.data_dir)
    os.environ["W2S_BENCH_TMP"] = tempfile.mkdtemp(prefix="w2s-speed-")
    check = run_in_process("check_first_batch", setup)
    ours = run_in_process("arm_ours", setup)
    naive = run_in_process("arm_naive", setup)
    same = sum(a == b for a, b in zip(ours.pop("predictions"), naive.pop("predictions")))
    result = {
        "setup": setup.__dict__, "first_batch_loss_terms": check, "ours": ours, "straightforward": naive,
        "defend_examples_per_s": {"ours": args.rows / ours["defend_s"], "straightforward": args.rows / naive["defend_s"]},
        "eval_examples_per_s": {"ours": args.eval_rows / ours["eval_s"], "straightforward": args.eval_rows / naive["eval_s"]},
        "defend_speedup": naive["defend_s"] / ours["defend_s"], "eval_speedup": naive["eval_s"] / ours["eval_s"],
        "eval_predictions_equal": f"{same}/{args.eval_rows}", "machine": platform.node(), "environment": environment(),
    }
    write_json(args.out, result)
    print(speed_section(result, args.out))
    if args.update_results:
        import results_md  # beside this file

        results_md.write()


def speed_section(result: dict, out: str) -> str:
    """RESULTS.md's speed table and its provenance, from a speed.json."""
    ours, naive, setup = result["ours"], result["straightforward"], result["setup"]
    check, same, env = result["first_batch_loss_terms"], result["eval_predictions_equal"], result["environment"]
    table = (f"| | ours | straightforward | ratio |\n|---|---|---|---|\n"
             f"| defend, 1 epoch of {setup['rows']} rows (examples/s) | {result['defend_examples_per_s']['ours']:.2f} | "
             f"{result['defend_examples_per_s']['straightforward']:.2f} | {result['defend_speedup']:.2f}x |\n"
             f"| evaluation of {setup['eval_rows']} rows (examples/s) | {result['eval_examples_per_s']['ours']:.2f} | "
             f"{result['eval_examples_per_s']['straightforward']:.2f} | {result['eval_speedup']:.2f}x |\n"
             f"| peak memory (MB, process RSS) | {ours['peak_rss_mb']:.0f} | {naive['peak_rss_mb']:.0f} | |\n\n"
             f"first-batch loss terms max abs diff {check['max_abs_diff']:.2e} (rel {check['max_rel_diff']:.2e}); "
             f"eval predictions equal {same}")
    return (f"{table}\n\n{setup['student']} + {setup['teacher']}, batch {setup['batch_size']}, max length "
            f"{setup['max_length']}, eval batch {setup['eval_batch_size']}. Measured {env['date'][:10]} on "
            f"{env['platform']}, {env['cpu_threads']} torch threads, by `python benchmarks/speed.py "
            f"--update-results` (raw numbers in `{out}`).")


if __name__ == "__main__":
    main()
