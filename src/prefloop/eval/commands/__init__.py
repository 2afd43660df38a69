"""`prefloop eval <subcommand>`: one module per subcommand (`reward`, `policy`, `best_of_n`, `judge`, `sweep`,
`checkpoints`, `human_project`), each loading models and data and wiring them to the pure metric modules of
`prefloop.eval`; `common` holds what several of them share (loading, prompts, writing metrics.json and the
report)."""
