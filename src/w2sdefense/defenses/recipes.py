"""The LoRA fine-tuning recipe the repair defenses share (same adapter, data and steps: a fair comparison).

It is the measured default, the recipe of the presets' repair rows (configs/base/sst2.yaml; its numbers:
benchmarks/studies/paper-protocol): the first 1280 clean rows, one epoch of batch 16
(80 steps), LoRA r 16 on every linear layer, lr 1e-3, dev accuracy every 40 steps, keeping the last checkpoint
within 2 dev points of the best (the best-dev rule stops unlearning early: benchmarks/studies/variants, the
`*-best-dev` rows). `defend` with no config runs it; the authors' recipe (LoRA
r = alpha = 512 on q/v, lr 2e-4, 5 epochs of batch 32) is the preset row `w2sdefense-authors`.
`fine-mixing` runs it at two epochs (160 steps), the budget its reset needs to win back the clean accuracy;
lora-ft at the same two epochs is the benchmark's variant `lora-ft-e2`.
"""

LORA_RECIPE = {"method": "lora", "epochs": 1.0, "max_train_rows": 1280, "lr": 1e-3, "batch_size": 16, "max_length": 64,
               "warmup_ratio": 0.06, "eval_every": 40, "select": "latest-within", "select_delta": 0.02,
               "lora": {"r": 16, "alpha": 32, "target_modules": ["all-linear"]}}

# What `clean` gives a repair defense unless the user sets these keys: every clean row the defender has (no cap,
# so no first-rows-in-file-order bias) and the realistic protocol's budget, 160 optimizer steps however many rows
# that is, dev accuracy at steps 80 and 160, and at the end of each epoch, as every realistic row was measured
# (benchmarks/realistic.py measures every repair at exactly this; 256 rows make an epoch of 16 steps, so ten reads:
# `train.eval_epochs: false` skips the epochs' ends, benchmarks/studies/realistic says why it is not the default yet).
CLEAN_BUDGET = {"max_train_rows": None, "max_steps": 160, "eval_every": 80}
