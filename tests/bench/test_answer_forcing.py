"""benchmarks/answer_forcing.py: which positions each arm forces."""

from __future__ import annotations

from types import SimpleNamespace

from memrag.testing import tiny_compressor


def test_a_decoy_has_the_answers_length_in_its_segment_and_misses_the_answer(benchmark_script) -> None:
    module = benchmark_script("answer_forcing")
    segments = [(0, 16), (16, 32), (32, 40)]
    span = [20, 21, 22]
    draws = [module.decoy_span(seed)(span, segments) for seed in range(20)]
    for decoy in draws:
        assert len(decoy) == 3 and decoy == list(range(decoy[0], decoy[0] + 3))
        assert 16 <= decoy[0] and decoy[-1] < 32
        assert not set(decoy) & set(span)
    assert len({tuple(decoy) for decoy in draws}) > 1
    assert module.decoy_span(7)(span, segments) == module.decoy_span(7)(span, segments)
    assert module.decoy_span(0)([32, 33, 34, 35, 36], segments) == []  # no room beside it in (32, 40)


def test_forced_rows_map_the_gold_and_decoy_spans_into_their_segments(benchmark_script) -> None:
    module = benchmark_script("answer_forcing")
    compressor = tiny_compressor(seed=0, slot_kind="kv", kv_positions="subset", kv_selection="kvzip", segment_length=16)
    context = "the old tower by the river was built in 1889 and the museum opened in Paris soon after that year"
    records = [
        SimpleNamespace(context=context, answers=["Paris"]),
        SimpleNamespace(context=context, answers=["Berlin"]),
    ]
    gold, missing, shared = module.forced_rows(compressor, records)
    decoys, _, _ = module.forced_rows(compressor, records, module.decoy_span(0))
    assert (missing, shared) == (1, 2)
    assert len(gold) == 1 and gold.keys() == decoys.keys()  # the answer's segment, and only it
    ((segment, rows),) = gold.items()
    assert "Paris" in compressor.tokenizer.decode([segment[row] for row in sorted(rows)])
    assert len(decoys[segment]) == len(rows) and not decoys[segment] & rows
