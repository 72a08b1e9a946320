"""The Flower side of medfed's round benchmark (bench/flower_round.py)."""
