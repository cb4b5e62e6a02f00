"""The benchmarks: recipes over the training library that time its steps, builds and whole runs
(`hsktrain bench step|build|e2e`), each beside the ceiling it is measured against.

One module per bench (`step`, with `remote` for `step --remote`; `build`; `e2e`) and one per way
its result reads (`step_writer`, `build_writer`, `e2e_writer`); shared by all of them: the clocks
(`timer`), the verdict on a target (`verdict`) and the results writer (`writer`). `run` picks a
bench's config, measurement and report; `cli` declares each sub-command's options.
"""
