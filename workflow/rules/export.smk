# GGUF exports of chosen runs (export.runs) and of each dataset's best run (export.best_by),
# after evaluation. A run that did not finish, or an export whose check failed, is a recorded
# failure of its export step (result.json), not a crash of the matrix.


rule export_run:
    input:
        evaluated=at_root(layout.EVAL_RESULT),
    output:
        directory(at_root(layout.EXPORT)),
    log:
        log_path("export_run", "{run_id}"),
    threads: EXPERIMENT.resources.threads
    resources:
        **SMALL_JOB,
    params:
        run_dir=lambda w: at_root(layout.RUN, run_id=w.run_id),
        work=lambda w: at_root(layout.EXPORT_WORK, name=w.run_id),
        types=",".join(EXPORT.types) if EXPORT else "",
        check=EXPORT.check if EXPORT else True,
        attempt=attempt(layout.EXPORT_RESULT),
    shell:
        "tunebench stage export --run-dir {params.run_dir} --out {output}"
        " --work {params.work} --gguf-types {params.types} --check {params.check}"
        " --attempt={params.attempt:q} > {log} 2>&1"


rule export_best:
    input:
        evaluated=lambda w: [
            at_root(layout.EVAL_RESULT, run_id=run_id)
            for run_id, run in RUNS.items()
            if run.dataset.name == w.dataset
        ],
    output:
        directory(at_root(layout.EXPORT_BEST)),
    log:
        log_path("export_best", "{dataset}"),
    threads: EXPERIMENT.resources.threads
    resources:
        **SMALL_JOB,
    params:
        experiment=lambda w: EXPERIMENT.model_dump_json(),
        # The results folder: exports/best/<dataset> is three levels below it.
        results=lambda w, output: str(Path(output[0]).parents[2]),
        work=lambda w: at_root(layout.EXPORT_WORK, name=f"best-{w.dataset}"),
        attempt=attempt(layout.EXPORT_BEST_RESULT),
    shell:
        "tunebench stage export-best --experiment {params.experiment:q}"
        " --dataset {wildcards.dataset} --results {params.results} --out {output}"
        " --work {params.work} --attempt={params.attempt:q} > {log} 2>&1"
