"""Runnable evaluation of the unlearning gateway: a probe set (`eval.probes`) and a runner (`eval.run`).

    python -m eval.run --calibrate              # raw model once over every probe -> eval/raw_filter.json
    python -m eval.run --configs none,guard     # leak / neighbour / false-refusal table, raw vs gateway
"""
