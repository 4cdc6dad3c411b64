# Built-in tokenizer and base models, then datasets: prepared once per dataset key and
# tokenised once per dataset x tokenizer, shared by every run that uses them.


rule build_tokenizer:
    output:
        directory(at_root(layout.TOKENIZER)),
    params:
        model=lambda w: TOKENIZER_OWNER[w.tokenizer].model_dump_json(),
    log:
        log_path("build_tokenizer", "{tokenizer}"),
    shell:
        "tunebench stage build-tokenizer --model {params.model:q} --out {output} > {log} 2>&1"


rule pretrain_base:
    input:
        tokenizer=lambda w: at_root(
            layout.TOKENIZER.format(tokenizer=tokenizer_key(MODELS[w.model]))
        ),
    output:
        directory(at_root(layout.BASE_MODEL)),
    params:
        model=lambda w: MODELS[w.model].model_dump_json(),
        work=lambda w: at_root(f"work/pretrain/{w.model}"),
    threads: EXPERIMENT.resources.threads
    log:
        log_path("pretrain_base", "{model}"),
    shell:
        "tunebench stage pretrain --model {params.model:q} --tokenizer {input.tokenizer}"
        " --out {output} --work {params.work} --threads {threads} > {log} 2>&1"


rule prepare_data:
    output:
        multiext(at_root(layout.DATA) + "/", "train.jsonl", "validation.jsonl", "test.jsonl"),
        manifest=at_root(layout.DATA) + "/manifest.json",
    params:
        dataset=lambda w: DATASETS[w.dataset].model_dump_json(),
        out=lambda w: at_root(layout.DATA.format(dataset=w.dataset)),
    log:
        log_path("prepare_data", "{dataset}"),
    shell:
        "tunebench stage prepare-data --dataset {params.dataset:q} --out {params.out}"
        " > {log} 2>&1"


def tokenizer_source(wildcards):
    """A built-in tokenizer is a DAG output; a hub/local model brings its own."""
    model = TOKENIZER_OWNER[wildcards.tokenizer]
    if model.builtin is not None:
        return {"tokenizer": at_root(layout.TOKENIZER.format(tokenizer=wildcards.tokenizer))}
    return {}


rule tokenize:
    input:
        unpack(tokenizer_source),
        manifest=at_root(layout.DATA) + "/manifest.json",
    output:
        multiext(
            at_root(layout.TOKENIZED) + "/",
            "train.parquet",
            "validation.parquet",
            "test.parquet",
            "manifest.json",
        ),
    params:
        model=lambda w: TOKENIZER_OWNER[w.tokenizer].model_dump_json(),
        tokenizer_dir=lambda w, input: f"--tokenizer-dir {input.tokenizer}"
        if "tokenizer" in input.keys()
        else "",
        data=lambda w: at_root(layout.DATA.format(dataset=w.dataset)),
        out=lambda w: at_root(layout.TOKENIZED.format(dataset=w.dataset, tokenizer=w.tokenizer)),
    log:
        log_path("tokenize", "{dataset}.{tokenizer}"),
    shell:
        "tunebench stage tokenize --model {params.model:q} {params.tokenizer_dir}"
        " --data {params.data} --out {params.out} > {log} 2>&1"
