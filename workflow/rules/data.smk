# Built-in tokenizer and base models, then datasets: prepared once per dataset key and
# tokenised once per dataset x tokenizer, shared by every run that uses them.


rule build_tokenizer:
    output:
        directory(at_root(layout.TOKENIZER)),
    log:
        log_path("build_tokenizer", "{tokenizer}"),
    resources:
        mem_mb=SMALL_JOB["mem_mb"],
        runtime=SMALL_JOB["runtime"],
        slurm_partition=SMALL_JOB["slurm_partition"],
        slurm_account=SMALL_JOB["slurm_account"],
    params:
        model=lambda w: TOKENIZER_OWNER[w.tokenizer].model_dump_json(),
    shell:
        "tunebench stage build-tokenizer --model {params.model:q} --out {output} > {log} 2>&1"


rule pretrain_base:
    input:
        tokenizer=lambda w: at_root(
            layout.TOKENIZER, tokenizer=tokenizer_key(MODELS[w.model])
        ),
    output:
        directory(at_root(layout.BASE_MODEL)),
    log:
        log_path("pretrain_base", "{model}"),
    benchmark:
        at_root("benchmarks/pretrain_base/{model}.tsv")
    threads: EXPERIMENT.resources.threads
    resources:
        mem_mb=SMALL_JOB["mem_mb"],
        runtime=SMALL_JOB["runtime"],
        slurm_partition=SMALL_JOB["slurm_partition"],
        slurm_account=SMALL_JOB["slurm_account"],
    params:
        model=lambda w: MODELS[w.model].model_dump_json(),
        work=lambda w: at_root("work/pretrain/{model}", model=w.model),
    shell:
        "tunebench stage pretrain --model {params.model:q} --tokenizer {input.tokenizer}"
        " --out {output} --work {params.work} --threads {threads} > {log} 2>&1"


rule prepare_data:
    output:
        splits=[at_root(split) for split in layout.DATA_SPLITS],
        manifest=at_root(layout.DATA_MANIFEST),
    log:
        log_path("prepare_data", "{dataset}"),
    resources:
        mem_mb=SMALL_JOB["mem_mb"],
        runtime=SMALL_JOB["runtime"],
        slurm_partition=SMALL_JOB["slurm_partition"],
        slurm_account=SMALL_JOB["slurm_account"],
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
        mem_mb=SMALL_JOB["mem_mb"],
        runtime=SMALL_JOB["runtime"],
        slurm_partition=SMALL_JOB["slurm_partition"],
        slurm_account=SMALL_JOB["slurm_account"],
    params:
        model=lambda w: TOKENIZER_OWNER[w.tokenizer].model_dump_json(),
        dataset=lambda w: DATASETS[w.dataset].model_dump_json(),
        tokenizer_dir=lambda w, input: (
            f"--tokenizer-dir {input.tokenizer}" if "tokenizer" in input.keys() else ""
        ),
        data=lambda w: at_root(layout.DATA, dataset=w.dataset),
        out=lambda w: at_root(
            layout.TOKENIZED, dataset=w.dataset, tokenizer=w.tokenizer
        ),
    shell:
        "tunebench stage tokenize --model {params.model:q} --dataset {params.dataset:q}"
        " {params.tokenizer_dir}"
        " --data {params.data} --out {params.out} > {log} 2>&1"
