# One training job per run of the matrix. A failed run writes its result (status + reason)
# and exits 0, so one failure does not cost the rest of the matrix.


rule train:
    input:
        unpack(train_inputs),
    output:
        at_root(layout.TRAIN_RESULT),
    log:
        log_path("train", "{run_id}"),
    benchmark:
        at_root("benchmarks/train/{run_id}.tsv")
    container:
        run_image
    threads: EXPERIMENT.resources.threads
    resources:
        mem_mb=run_resource("train", "mem_mb"),
        runtime=run_resource("train", "runtime"),
        gpu=run_resource("train", "gpu"),
        gpu_model=run_resource("train", "gpu_model"),
        cpus_per_gpu=run_resource("train", "cpus_per_gpu"),
        slurm_partition=run_resource("train", "slurm_partition"),
        slurm_account=run_resource("train", "slurm_account"),
        # The harness's own memory ceiling (0 = none); a resource, so changing it re-runs nothing.
        memory_limit_mb=MEMORY_LIMIT_MB,
    params:
        run=run_json,
        model_dir=lambda w: base_model_dir(run_of(w).model) or "",
        tokenized=lambda w: tokenized_dir(run_of(w).model, run_of(w).dataset),
        run_dir=lambda w: at_root(layout.RUN, run_id=w.run_id),
        tracking=EXPERIMENT.tracking.model_dump_json(),
        tunebench=lambda w: tunebench_command(run_of(w).backend),
        image=lambda w: image_named(run_of(w).backend),
    shell:
        "TUNEBENCH_CONTAINER_IMAGE={params.image:q} {params.tunebench} stage train --run {params.run:q} --model-dir={params.model_dir:q}"
        " --tokenized {params.tokenized} --run-dir {params.run_dir} --result {output}"
        " --tracking {params.tracking:q} --memory-limit-mb {resources.memory_limit_mb}"
        " --threads {threads} > {log} 2>&1"
