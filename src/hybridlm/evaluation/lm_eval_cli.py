"""`python -m hybridlm.evaluation.lm_eval_cli ...`: lm-eval's own command line with `--model hybridlm` known.

lm-eval 0.4.x finds models only in its registry and discovers no plugins, so this imports the
bridge (which registers "hybridlm") and hands the arguments to lm-eval's CLI unchanged:

    python -m hybridlm.evaluation.lm_eval_cli --model hybridlm \\
        --model_args run=runs/tiny,checkpoint=best,device=cpu,batch_size=8 --tasks arc_challenge
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from lm_eval.__main__ import cli_evaluate

    import hybridlm.evaluation.lm_eval_bridge  # noqa: F401 -- registers --model hybridlm

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
