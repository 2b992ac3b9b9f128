"""The task served by bench_delay.py's task workers (imported by module name)."""

from daskflow import task


@task(persist_result=True)
def inc(x):
    return x + 1
