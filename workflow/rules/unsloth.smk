# The Unsloth environment, created the first time a run asks for backend: unsloth (outside
# containers). It lives outside results/, in its own folder named by the lock's hash
# ($TUNEBENCH_ENVS, default ~/.cache/tunebench/envs), so every experiment and checkout shares it
# and a changed lock gets a new one. ancient(): a fresh clone's newer lock file is no reason to
# rebuild an environment of the same content.
rule unsloth_env:
    input:
        lock=ancient(str(UNSLOTH_LOCK)),
    output:
        str(UNSLOTH_ENV / locks.RECORD) if UNSLOTH_ENV else "unsloth-env-unavailable",
    log:
        log_path("unsloth_env", VARIANT),
    threads: 1
    resources:
        **SMALL_JOB,
    shell:
        "tunebench env create unsloth --lock {input.lock} > {log} 2>&1"
