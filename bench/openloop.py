"""Open-loop load at a fixed rate, for latency at a given load (wrk is closed-loop).

Requests are scheduled at ``rate`` per second whatever the server does; latency is
measured from the *scheduled* send time, so a stalled server cannot hide its queueing
(no coordinated omission). Prints one JSON line.

usage: python bench/openloop.py URL BODY_FILE TOKEN RATE SECONDS
"""

import asyncio
import json
import sys
import time

import aiohttp
import uvloop


async def main(url: str, body: bytes, token: str, rate: float, seconds: float) -> None:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(scheduled: float) -> None:
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    key = str(resp.status)
            except aiohttp.ClientError as exc:
                key = type(exc).__name__
            latencies.append(time.perf_counter() - scheduled)
            statuses[key] = statuses.get(key, 0) + 1

        total = int(rate * seconds)
        start = time.perf_counter() + 0.1
        tasks = []
        for i in range(total):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    print(
        json.dumps(
            {
                "target_rps": rate,
                "achieved_rps": total / elapsed,
                "requests": total,
                "statuses": statuses,
                "p50_ms": pct(0.50),
                "p99_ms": pct(0.99),
            }
        )
    )


if __name__ == "__main__":
    url, body, token, rate, seconds = sys.argv[1:6]
    with open(body, "rb") as f:
        payload = f.read()
    uvloop.run(main(url, payload, token, float(rate), float(seconds)))
