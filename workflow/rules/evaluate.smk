# Held-out evaluation of every run, and of every untuned base model on the same test set.


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        result=at_root(layout.EVAL_RESULT),
        samples=at_root(layout.EVAL_SAMPLES),
    log:
        log_path("evaluate", "{run_id}"),
    benchmark:
        at_root("benchmarks/evaluate/{run_id}.tsv")
    threads: EXPERIMENT.resources.threads
    resources:
        mem_mb=run_resource("evaluate", "mem_mb"),
        runtime=run_resource("evaluate", "runtime"),
        gpu=run_resource("evaluate", "gpu"),
        gpu_model=run_resource("evaluate", "gpu_model"),
        cpus_per_gpu=run_resource("evaluate", "cpus_per_gpu"),
        slurm_partition=run_resource("evaluate", "slurm_partition"),
        slurm_account=run_resource("evaluate", "slurm_account"),
    params:
        run=run_json,
        dataset=lambda w: DATASETS[dataset_key(run_of(w).dataset)].model_dump_json(),
        model_dir=lambda w: base_model_dir(run_of(w).model) or "",
        tokenized=lambda w: tokenized_dir(run_of(w).model, run_of(w).dataset),
        data=lambda w: at_root(layout.DATA, dataset=dataset_key(run_of(w).dataset)),
        run_dir=lambda w: at_root(layout.RUN, run_id=w.run_id),
        evaluation=EXPERIMENT.evaluation.model_dump_json(),
        image=image_named("hf"),
    shell:
        "TUNEBENCH_CONTAINER_IMAGE={params.image:q} tunebench stage evaluate --run {params.run:q} --dataset {params.dataset:q}"
        " --train-result {input.train}"
        " --run-dir {params.run_dir} --model-dir={params.model_dir:q} --data {params.data}"
        " --tokenized {params.tokenized} --evaluation {params.evaluation:q}"
        " --result {output.result} --samples {output.samples} --threads {threads} > {log} 2>&1"


rule evaluate_base:
    input:
        unpack(evaluate_base_inputs),
    output:
        result=at_root(layout.BASELINE_RESULT),
        samples=at_root(layout.BASELINE_SAMPLES),
    log:
        log_path("evaluate_base", "{model}.{dataset}"),
    threads: EXPERIMENT.resources.threads
    resources:
        mem_mb=base_resource("mem_mb"),
        runtime=base_resource("runtime"),
        gpu=base_resource("gpu"),
        gpu_model=base_resource("gpu_model"),
        cpus_per_gpu=base_resource("cpus_per_gpu"),
        slurm_partition=base_resource("slurm_partition"),
        slurm_account=base_resource("slurm_account"),
    params:
        model=lambda w: MODELS[w.model].model_dump_json(),
        dataset=lambda w: DATASETS[w.dataset].model_dump_json(),
        model_dir=lambda w: base_model_dir(MODELS[w.model]) or "",
        tokenized=lambda w: tokenized_dir(MODELS[w.model], DATASETS[w.dataset]),
        data=lambda w: at_root(layout.DATA, dataset=w.dataset),
        evaluation=EXPERIMENT.evaluation.model_dump_json(),
        image=image_named("hf"),
    shell:
        "TUNEBENCH_CONTAINER_IMAGE={params.image:q} tunebench stage evaluate --model {params.model:q} --dataset {params.dataset:q}"
        " --model-dir={params.model_dir:q} --data {params.data} --tokenized {params.tokenized}"
        " --evaluation {params.evaluation:q} --result {output.result}"
        " --samples {output.samples} --threads {threads} > {log} 2>&1"
