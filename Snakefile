# tunebench: one experiment file -> a matrix of fine-tuning runs -> one comparison table.
#
#   tunebench run experiments/smoke.yaml          (the usual way; validates first)
#   snakemake --cores 2 --configfile experiments/smoke.yaml
#
# The experiment file is the Snakemake config. It is validated twice: by the pydantic model in
# src/tunebench/spec.py (clear messages) and by Snakemake against the JSON schema exported from
# that model to workflow/schemas/experiment.schema.json.

from snakemake.utils import min_version, validate

min_version("9.0")


# Without --configfile, run the offline default. (A `configfile:` directive would be *merged*
# with the one given on the command line, mixing two experiments.)
if not config:

    configfile: "experiments/smoke.yaml"


include: "workflow/rules/common.smk"


# Every job's software: the pinned image of the HF stack (containers/Dockerfile.hf), used with
# --sdm apptainer; train jobs of unsloth runs override it with the Unsloth image.
container: image("hf")


include: "workflow/rules/envs.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        comparison_outputs(),
