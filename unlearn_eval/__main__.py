"""`python -m unlearn_eval ...`, the same as `unlearn-gateway eval ...`."""

from unlearn_eval.cli import main

main()
