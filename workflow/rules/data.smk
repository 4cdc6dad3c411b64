# Built-in tokenizer and base models, imported GGUF models, then datasets: prepared once per
# dataset key and tokenised once per dataset x tokenizer, shared by every run that uses them.


rule build_tokenizer:
    output:
        directory(at_root(layout.TOKENIZER)),
    log:
        log_path("build_tokenizer", "{tokenizer}"),
    resources:
        **SMALL_JOB,
    params:
        model=lambda w: TOKENIZER_OWNER[w.tokenizer].model_dump_json(),
    shell:
        "tunebench stage build-tokenizer --model {params.model:q} --out {output}"
        " > {log} 2>&1"


rule pretrain_base:
    input:
        tokenizer=lambda w: at_root(
            layout.TOKENIZER, tokenizer=TOKENIZER_KEY[MODELS[w.model].name]
        ),
    output:
        directory(at_root(layout.BASE_MODEL)),
    log:
        log_path("pretrain_base", "{model}"),
    benchmark:
        at_root(layout.BENCHMARK.format(rule="pretrain_base", name="{model}"))
    threads: EXPERIMENT.resources.threads
    resources:
        **PRETRAIN_JOB,
    params:
        model=lambda w: MODELS[w.model].model_dump_json(),
        work=lambda w: at_root(layout.PRETRAIN_WORK, model=w.model),
        attempt=attempt(layout.BASE_MODEL_RESULT),
    shell:
        "tunebench stage pretrain --model {params.model:q} --tokenizer {input.tokenizer}"
        " --out {output} --work {params.work} --attempt={params.attempt:q}"
        " --memory-limit-mb {resources.memory_limit_mb} --threads {threads} > {log} 2>&1"


rule import_gguf:
    output:
        directory(at_root(layout.IMPORTED_MODEL)),
    log:
        log_path("import_gguf", "{model}"),
    benchmark:
        at_root(layout.BENCHMARK.format(rule="import_gguf", name="{model}"))
    resources:
        **SMALL_JOB,
    params:
        model=lambda w: MODELS[w.model].model_dump_json(),
        work=lambda w: at_root(layout.IMPORT_WORK, model=w.model),
        attempt=attempt(layout.IMPORTED_MODEL_RESULT),
    shell:
        "tunebench stage import-gguf --model {params.model:q} --out {output}"
        " --work {params.work} --attempt={params.attempt:q} > {log} 2>&1"


rule prepare_data:
    output:
        splits=[at_root(split) for split in layout.DATA_SPLITS],
        manifest=at_root(layout.DATA_MANIFEST),
    log:
        log_path("prepare_data", "{dataset}"),
    resources:
        **SMALL_JOB,
    params:
        dataset=lambda w: DATASETS[w.dataset].model_dump_json(),
        out=lambda w: at_root(layout.DATA, dataset=w.dataset),
    shell:
        "tunebench stage prepare-data --dataset {params.dataset:q} --out {params.out}"
        " > {log} 2>&1"


rule tokenize:
    input:
        unpack(tokenizer_source),
        manifest=at_root(layout.DATA_MANIFEST),
    output:
        splits=[at_root(split) for split in layout.TOKENIZED_SPLITS],
        manifest=at_root(layout.TOKENIZED_MANIFEST),
    log:
        log_path("tokenize", "{dataset}.{tokenizer}"),
    resources:
        **SMALL_JOB,
    params:
        model=lambda w: TOKENIZER_OWNER[w.tokenizer].model_dump_json(),
        dataset=lambda w: DATASETS[w.dataset].model_dump_json(),
        tokenizer_dir=lambda w, input: input.get("tokenizer", ""),
        data=lambda w: at_root(layout.DATA, dataset=w.dataset),
        out=lambda w: at_root(
            layout.TOKENIZED, dataset=w.dataset, tokenizer=w.tokenizer
        ),
        attempt=attempt(layout.TOKENIZED_MANIFEST),
    shell:
        "tunebench stage tokenize --model {params.model:q} --dataset {params.dataset:q}"
        " --tokenizer-dir={params.tokenizer_dir:q} --data {params.data} --out {params.out}"
        " --attempt={params.attempt:q} > {log} 2>&1"
