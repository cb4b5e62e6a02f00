"""The benchmarks: recipes over the training library that time its steps, builds and whole runs
(`hsktrain bench step|build|e2e|reader|inference`), each beside the ceiling it is measured
against.

One module per bench (`step`, with `memory` for its RSS probe and `remote` for `step --remote`;
`build`; `e2e`; `reader`; `inference`) and one per way its result reads (`step_writer`,
`build_writer`, `e2e_writer`, ...); shared by all of them: the synthetic teachers, rows and caches
(`inputs`), the clocks (`timer`), the verdict on a target (`verdict`) and the results writer
(`writer`). `run` picks a bench's config, measurement and report; `cli` declares each
sub-command's options.
"""
