# One training job per run of the matrix. A failed run writes its result (status + reason)
# and exits 0, so one failure does not cost the rest of the matrix.

# The command of a train job (before its log redirection); a search's rung (search.smk) is
# the same with its stop step. The train rule's command and params stay as they were, so
# results trained before searches existed are not retrained.
TRAIN_COMMAND = (
    "{params.job[tunebench]} stage train --run {params.job[run]:q}"
    " --model-dir={params.job[model_dir]:q} --tokenized {params.job[tokenized]}"
    " --run-dir {params.job[run_dir]} --result {output}"
    " --tracking {params.tracking:q} --attempt={params.job[attempt]:q}"
    " --memory-limit-mb {resources.memory_limit_mb} --threads {threads}"
    " --predicted-oom-mb {resources.predicted_oom_mb}"
    " --processes {params.job[processes]} --strategy {params.strategy}"
    " --cpu-offload {params.cpu_offload} --nodes {params.job[nodes]}"
    " --start-from={params.job[start_from]:q}"
)


rule train:
    input:
        unpack(train_inputs),
    output:
        at_root(layout.TRAIN_RESULT),
    log:
        log_path("train", "{run_id}"),
    benchmark:
        at_root(layout.BENCHMARK.format(rule="train", name="{run_id}"))
    container:
        TRAIN_CONTAINER
    threads: EXPERIMENT.resources.threads
    resources:
        **run_resources("train"),
    params:
        job=train_job,
        tracking=lambda w: EXPERIMENT.tracking.model_dump_json(),
        strategy=EXPERIMENT.resources.distributed.strategy,
        cpu_offload=EXPERIMENT.resources.distributed.cpu_offload,
    shell:
        TRAIN_COMMAND + " > {log} 2>&1"


# A run whose training spans nodes (resources.train.nodes) is the same step, submitted as one
# Slurm task per node; the step starts the tasks itself with srun (training/launch.py).
use rule train as train_across_nodes with:
    wildcard_constraints:
        run_id=SPANNING_NODES_PATTERN,
    resources:
        **spanning_resources(),


ruleorder: train_across_nodes > train
