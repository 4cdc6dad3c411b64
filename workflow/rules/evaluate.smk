# Held-out evaluation of every run, and of every untuned base model on the same test set.


rule evaluate:
    input:
        train=at_root(layout.TRAIN_RESULT),
    output:
        result=at_root(layout.EVAL_RESULT),
        samples=at_root(layout.EVAL_SAMPLES),
    log:
        log_path("evaluate", "{run_id}"),
    benchmark:
        at_root(layout.BENCHMARK.format(rule="evaluate", name="{run_id}"))
    threads: EXPERIMENT.resources.threads
    resources:
        **run_resources("evaluate"),
    params:
        job=evaluate_job,
        evaluation=lambda w: EXPERIMENT.evaluation.model_dump_json(),
    shell:
        "tunebench stage evaluate --run {params.job[run]:q} --dataset {params.job[dataset]:q}"
        " --train-result {input.train} --run-dir {params.job[run_dir]}"
        " --model-dir={params.job[model_dir]:q} --data {params.job[data]}"
        " --tokenized {params.job[tokenized]} --evaluation {params.evaluation:q}"
        " --result {output.result} --samples {output.samples}"
        " --attempt={params.job[attempt]:q}"
        " --memory-limit-mb {resources.memory_limit_mb} --threads {threads} > {log} 2>&1"


rule evaluate_base:
    input:
        unpack(baseline_inputs),
    output:
        result=at_root(layout.BASELINE_RESULT),
        samples=at_root(layout.BASELINE_SAMPLES),
    log:
        log_path("evaluate_base", "{model}.{dataset}"),
    benchmark:
        at_root(layout.BENCHMARK.format(rule="evaluate_base", name="{model}.{dataset}"))
    threads: EXPERIMENT.resources.threads
    resources:
        **base_resources(),
    params:
        model=lambda w: MODELS[w.model].model_dump_json(),
        dataset=lambda w: DATASETS[w.dataset].model_dump_json(),
        model_dir=lambda w: base_model_dir(MODELS[w.model]),
        tokenized=lambda w: tokenized_dir(MODELS[w.model], DATASETS[w.dataset]),
        data=lambda w: data_dir(DATASETS[w.dataset]),
        evaluation=lambda w: EXPERIMENT.evaluation.model_dump_json(),
        attention=EXPERIMENT.training.attention,
        attempt=attempt(layout.BASELINE_RESULT),
    shell:
        "tunebench stage evaluate-base --model {params.model:q} --dataset {params.dataset:q}"
        " --model-dir={params.model_dir:q} --data {params.data} --tokenized {params.tokenized}"
        " --evaluation {params.evaluation:q} --attention {params.attention}"
        " --result {output.result} --samples {output.samples} --attempt={params.attempt:q}"
        " --memory-limit-mb {resources.memory_limit_mb} --threads {threads} > {log} 2>&1"
