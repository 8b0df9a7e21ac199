"""The fine-tuning loop (full and PEFT), used for the victim, the teacher and clean baselines."""
