# The comparison table, rebuilt from the per-run result files every time.


rule compile:
    input:
        runs=expand(at_root(layout.EVAL_RESULT), run_id=sorted(RUNS)),
        baselines=[
            at_root(layout.BASELINE_RESULT, model=m, dataset=d) for m, d in BASELINES
        ],
    output:
        comparison_outputs(),
        plot=report(
            at_root("plots/quality_vs_memory.png"),
            caption="../report/quality_vs_memory.rst",
            category="Comparison",
        ),
    log:
        log_path("compile", "comparison"),
    resources:
        **SMALL_JOB,
    params:
        experiment=EXPERIMENT.model_dump_json(),
        root=lambda w, output: os.path.dirname(output[0]),
    shell:
        "tunebench stage compile-report --experiment {params.experiment:q}"
        " --results {params.root} --out {params.root} > {log} 2>&1"
