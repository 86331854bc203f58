"""The hot-path recorder: counters read without advancing, samples folded into buckets."""

from __future__ import annotations

import threading

from poolwatch.instrument.recorder import SAMPLE_LIMIT, Recorder, Samples, Tally


def test_tally_value_counts_hits_and_reads_do_not_count() -> None:
    tally = Tally()
    for _ in range(5):
        tally.hit()
    assert tally.value() == 5
    assert tally.value() == 5
    tally.hit()
    assert tally.value() == 6


def test_tally_hits_from_many_threads_add_up_exactly() -> None:
    tally = Tally()

    def work() -> None:
        for _ in range(10_000):
            tally.hit()

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tally.value() == 80_000


def test_samples_fold_into_cumulative_buckets_with_le_inclusive() -> None:
    samples = Samples(buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        samples.append(value)
    samples.fold()
    buckets, total = samples.cumulative()
    assert buckets == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert total == 0.05 + 0.1 + 0.5 + 1.0 + 7.0
    samples.append(0.2)
    samples.fold()
    assert samples.cumulative()[0] == [("0.1", 2), ("1.0", 5), ("+Inf", 6)]


def test_samples_memory_is_bounded_without_folds() -> None:
    samples = Samples()
    for _ in range(SAMPLE_LIMIT + 10):
        samples.append(0.001)
    assert len(samples.samples) == SAMPLE_LIMIT
    samples.fold()
    assert samples.cumulative()[0][-1] == ("+Inf", SAMPLE_LIMIT)


def test_pending_is_requests_not_yet_answered() -> None:
    recorder = Recorder("p")
    for _ in range(3):
        recorder.requested.hit()
    recorder.handed.hit()
    recorder.checkout_failed(RuntimeError("connection refused"), 0.0, timed_out=False)
    assert recorder.pending() == 1
    snapshot = recorder.snapshot()
    assert snapshot.pending == 1
    assert snapshot.checkouts == 1
    assert snapshot.connect_errors == {"refused": 1}


def test_internal_error_is_counted_and_logged_once(caplog) -> None:
    recorder = Recorder("p")
    recorder.internal_error(ValueError("boom"))
    recorder.internal_error(ValueError("boom"))
    assert recorder.snapshot().internal_errors == 2
    assert sum("instrumentation hook failed" in r.getMessage() for r in caplog.records) == 1
