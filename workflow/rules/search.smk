# Successive halving (the experiment's `search:`, docs/search.md). Every searched run trains
# to the first rung; a checkpoint per rung decides, within each method, which configurations go
# on (search/halving.py), and Snakemake re-evaluates the DAG after it. A promoted run's next
# rung resumes from its rung checkpoint; its last rung is the ordinary train job (train.smk).


wildcard_constraints:
    step=r"\d+",
    rung=r"\d+",
    round=r"\d+",


rule train_rung:
    input:
        unpack(rung_inputs),
    output:
        at_root(layout.RUNG_RESULT),
    log:
        log_path("train_rung", "{run_id}.step-{step}"),
    benchmark:
        at_root(layout.BENCHMARK.format(rule="train_rung", name="{run_id}.step-{step}"))
    container:
        TRAIN_CONTAINER
    threads: EXPERIMENT.resources.threads
    resources:
        **run_resources("train"),
    params:
        job=rung_job,
        tracking=lambda w: EXPERIMENT.tracking.model_dump_json(),
        strategy=EXPERIMENT.resources.distributed.strategy,
        cpu_offload=EXPERIMENT.resources.distributed.cpu_offload,
    shell:
        TRAIN_COMMAND + " --stop-at-step {wildcards.step} > {log} 2>&1"


checkpoint promote:
    input:
        rung_results,
    output:
        at_root(layout.SEARCH_DECISION),
    log:
        log_path("promote", "rung-{rung}"),
    resources:
        **SMALL_JOB,
    params:
        # The search (its budget decides how many go on) and what its costs come from.
        experiment=lambda w: EXPERIMENT.model_dump_json(),
        root=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
    shell:
        "tunebench stage promote --experiment {params.experiment:q} --rung {wildcards.rung}"
        " --results {params.root} --out {output} > {log} 2>&1"


# Adaptive seeds (training.seeds.adaptive, in docs: search.md): after each round a checkpoint
# decides which configurations, still in contention with the best, get one more seed (seeds.py
# of tunebench.search); an added seed is an ordinary run (train.smk, evaluate.smk) with the id
# a list of seeds gives it.
checkpoint seeds_round:
    input:
        seeds_round_inputs,
    output:
        at_root(layout.SEEDS_ROUND),
    log:
        log_path("seeds_round", "round-{round}"),
    resources:
        **SMALL_JOB,
    params:
        experiment=lambda w: EXPERIMENT.model_dump_json(),
        root=lambda w, output: os.path.dirname(os.path.dirname(output[0])),
    shell:
        "tunebench stage seeds-round --experiment {params.experiment:q}"
        " --seed-round {wildcards.round} --results {params.root} --out {output} > {log} 2>&1"
