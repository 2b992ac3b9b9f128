import asyncio
import time

from daskflow import flow, task


@task
async def aslow(x):
    await asyncio.sleep(0.2)
    return x * 2


def test_async_task_submit_and_map_from_sync_flow(runner):
    @flow(task_runner=runner)
    def f():
        return aslow.submit(1).result(), aslow.map([1, 2, 3]).result()

    assert f() == (2, [2, 4, 6])


def test_async_task_submit_from_async_flow(runner):
    @flow(task_runner=runner)
    async def f():
        direct = await aslow(5)
        fut = aslow.submit(6)
        return direct, fut.result()

    assert asyncio.run(f()) == (10, 12)


def test_gather_over_direct_async_calls_is_concurrent():
    @flow
    async def f():
        t0 = time.perf_counter()
        values = await asyncio.gather(*(aslow(i) for i in range(10)))
        return list(values), time.perf_counter() - t0

    values, elapsed = asyncio.run(f())
    assert values == [2 * i for i in range(10)]
    assert elapsed < 1.0  # 10 x 0.2 s run concurrently, not one after the other
