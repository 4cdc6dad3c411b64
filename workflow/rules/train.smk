# One training job per run of the matrix. A failed run writes its result (status + reason)
# and exits 0, so one failure does not cost the rest of the matrix.


rule train:
    input:
        unpack(run_inputs),
        unpack(unsloth_environment),
    output:
        at_root(layout.TRAIN_RESULT),
    log:
        log_path("train", "{run_id}"),
    benchmark:
        at_root(layout.BENCHMARK.format(rule="train", name="{run_id}"))
    container:
        run_image
    threads: EXPERIMENT.resources.threads
    resources:
        **run_resources("train"),
    params:
        run=lambda w: run_json(w.run_id),
        model_dir=lambda w: base_model_dir(run_of(w).model),
        tokenized=lambda w: tokenized_dir(run_of(w).model, run_of(w).dataset),
        run_dir=lambda w: at_root(layout.RUN, run_id=w.run_id),
        tracking=EXPERIMENT.tracking.model_dump_json(),
        tunebench=lambda w: tunebench_command(run_of(w).backend),
        attempt=attempt(layout.TRAIN_RESULT),
    shell:
        "{params.tunebench} stage train --run {params.run:q} --model-dir={params.model_dir:q}"
        " --tokenized {params.tokenized} --run-dir {params.run_dir} --result {output}"
        " --tracking {params.tracking:q} --attempt={params.attempt:q}"
        " --memory-limit-mb {resources.memory_limit_mb} --threads {threads} > {log} 2>&1"
