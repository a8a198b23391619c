"""The lm-eval tasks of continual pretraining: one YAML per domain benchmark (``cpt_<key>.yaml``), two shared
templates (choice and generation) and the hooks they call (:mod:`.metrics`).

Used by ``CPTTask.evaluate`` (tasks/cpt/task.py), which writes each benchmark's rows, in AdaptLLM's schema
plus the token count of every option, to ``runs/<name>/benchmarks/<config>.jsonl`` and calls
``mora.evaluate.run_lm_eval(include_path=<this folder>, metadata={"data_dir": <that folder>})``.  By hand::

    lm_eval --model hf --model_args pretrained=runs/<name>/final --include_path tasks/cpt/lm_eval_tasks \\
        --tasks cpt_pubmedqa,cpt_usmle --metadata '{"data_dir": "runs/<name>/benchmarks"}'
"""
