"""One module per framework, each with ``run(bench) -> dict``: train ``bench``'s case for its steps,
reading ``bench.clock`` after every optimizer step, and return the measurements and the options set."""

FRAMEWORKS = {
    "plain": "benchmarks.frameworks.plain",
    "bigmodel": "benchmarks.frameworks.bigmodel_run",
    "lightning": "benchmarks.frameworks.lightning_run",
    "hf": "benchmarks.frameworks.hf_trainer_run",
}
