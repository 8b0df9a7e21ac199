"""The LoRA fine-tuning recipe the repair defenses share (same adapter, data and steps: a fair comparison)."""

# The last checkpoint within 2 dev points of the best is kept: the best-dev rule stops unlearning at its
# first evaluation (benchmarks/RESULTS.md, "Variants").
LORA_RECIPE = {"method": "lora", "epochs": 5.0, "lr": 2e-4, "batch_size": 32, "max_length": 128,
               "select": "latest-within", "select_delta": 0.02}
