# The comparison table, recommendation, charts and HTML report, rebuilt from the per-run
# result files every time.


rule compile:
    input:
        runs=evaluated_runs,
        baselines=[
            at_root(layout.BASELINE_RESULT, model=m, dataset=d) for m, d in BASELINES
        ],
    output:
        comparison_outputs(),
        recommendation=report(
            at_root(layout.RECOMMENDATION),
            caption="../report/recommendation.rst",
            category="Recommendation",
        ),
        html=report(
            at_root(layout.HTML_REPORT),
            caption="../report/report_html.rst",
            category="Report",
        ),
        plots=report(
            directory(at_root(layout.PLOTS)),
            patterns=["{name}.png"],
            caption="../report/charts.rst",
            category="Charts",
        ),
    log:
        log_path("compile", "comparison"),
    resources:
        **SMALL_JOB,
    params:
        # Functions, not strings: Snakemake expands braces in a string param as wildcards, and
        # an experiment may hold braces (a Jinja template). The same in every rule.
        experiment=lambda w: EXPERIMENT.model_dump_json(),
        root=lambda w, output: os.path.dirname(output[0]),
    shell:
        "tunebench stage compile-report --experiment {params.experiment:q}"
        " --results {params.root} --out {params.root} > {log} 2>&1"
