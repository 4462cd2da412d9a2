"""Evaluation of the unlearning gateway: does a deployment forget its targets, and only them?

`unlearn-gateway eval` (or `python -m unlearn_eval`) runs probes -- curated for the dev set
(`devset`), generated from any target's registration (`generate`), or read from a file -- through
the configurations under test and a raw reference, scores every answer (`matching`, `metrics`),
and writes a resumable output directory (`runner`, `summary`, `report`, `plots`).
"""
