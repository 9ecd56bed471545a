"""Stores of K/V memory: kinds, storage dtypes, round trips, refusals and fidelity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from memrag.compressor import CompressorMismatchError
from memrag.generation import GenerationOptions
from memrag.memory.builders import build_memory
from memrag.memory.kv import KVSlots
from memrag.memory.spec import resolve_memory_spec
from memrag.prompts import qa_parts
from memrag.store import MemoryStore
from memrag.store.errors import StoreCorruptError

TEXTS = [
    "Paris is the capital and most populous city of France.",
    "In 1889 the Eiffel Tower was completed for the World's Fair in Paris.",
    "The quick brown fox jumps over the lazy dog.",
]


def _store(path: Path, compressor, memory: str, **options) -> MemoryStore:
    store = MemoryStore.create(path, compressor=compressor, embedder="hashing:64", memory=memory, **options)
    store.add(TEXTS, ids=["paris", "tower", "fox"])
    return store


@pytest.mark.parametrize(
    "memory",
    [
        "kv-exact",
        "kv-exact:int8",
        "kv-pruned",
        "kv-pruned:0.5:bfloat16",
        "kv-exact:int4",
        "kv-pruned:0.5:k8v4",
        "kv-exact:int4r",
        "kv-exact:int4c",
        "kv-exact:tc3",
        "kv-pruned:0.5:tc3",
    ],
)
def test_kv_memory_round_trips_through_a_store(tmp_path: Path, compressor, memory: str) -> None:
    spec = resolve_memory_spec(memory)
    with _store(tmp_path / "s", compressor, memory, fidelity="none") as store:
        (record,) = store.get(["tower"])
        stored = record.slots
        assert isinstance(stored, KVSlots) and stored.kind == spec.kind and stored.text == TEXTS[1]
        assert store.memory.kind == spec.kind and stored.fingerprint == store.fingerprint
        (made,) = build_memory(compressor, spec, [TEXTS[1]])
        assert torch.equal(stored.offsets, made.offsets) and stored.span == made.span
        # float16/bfloat16 round to 3/2 significant digits; int8 to 1/127 of a channel's range,
        # 4 bits to 1/15 of a channel's (keys) or a token's group's (values) range.
        # int4r: 1/15 of a rotated head's range per token, spread back over the head's channels
        # (int4c: the same, of channels centred and scaled by the store's calibration).
        # tc3: three bits per element on average, the strongest components finer than that.
        tolerance = {
            "float16": 1e-3, "bfloat16": 8e-3, "int8": 8e-3, "int4": 0.08, "k8v4": 0.08, "int4r": 0.2, "int4c": 0.2,
            "tc3": 0.35,
        }[
            spec.kv_dtype
        ]
        for name in ("keys", "values"):
            a, b = getattr(stored, name).float(), getattr(made, name).float()
            assert float((a - b).abs().max() / b.abs().max()) < tolerance, name
        options = GenerationOptions(max_new_tokens=6)
        prompt = qa_parts([record.context()], "When was the tower completed?")
        assert record.context() is stored
        assert compressor.generate([prompt], options)[0].text


def test_int8_halves_the_bytes_and_info_reports_them(tmp_path: Path, compressor) -> None:
    sizes = {}
    for memory in ("kv-exact", "kv-exact:int8", "kv-exact:int4", "kv-pruned"):
        with _store(tmp_path / memory.replace(":", "-"), compressor, memory, fidelity="none") as store:
            info = store.info()["memory"]
            tokens = store.info()["counts"]["tokens"]
            sizes[memory] = info["bytes_per_chunk"]
            assert info["bytes_per_token"] == pytest.approx(info["bytes_per_chunk"] * 3 / tokens)
    assert 0.45 < sizes["kv-exact:int8"] / sizes["kv-exact"] < 0.62
    assert 0.2 < sizes["kv-exact:int4"] / sizes["kv-exact"] < 0.45
    assert 0.2 < sizes["kv-pruned"] / sizes["kv-exact"] < 0.35


def test_any_compressor_over_the_same_base_reads_kv_memory_another_model_is_refused(
    tmp_path: Path, compressor
) -> None:
    from memrag.compressor import Compressor, CompressorConfig
    from memrag.testing import randomize_lora, tiny_base_model

    _store(tmp_path / "s", compressor, "kv-exact", fidelity="none").close()
    base = compressor.peft_model.get_base_model()
    # Another compressor (other LoRA weights) over another copy of the same base model.
    same_base = tiny_base_model(seed=0)
    other = Compressor(same_base, CompressorConfig(base_model=same_base.name, segment_length=16, lora_rank=4, lora_alpha=8), seed=5)
    randomize_lora(other, seed=5)
    assert other.fingerprint != compressor.fingerprint and base is not None
    with MemoryStore.open(tmp_path / "s", other) as store:
        assert isinstance(store.get(["fox"])[0].slots, KVSlots)
    different = tiny_base_model(seed=3)
    foreign = Compressor(different, CompressorConfig(base_model=different.name, segment_length=16, lora_rank=4, lora_alpha=8), seed=0)
    with pytest.raises(CompressorMismatchError, match=r"kv-exact memory of base model .*tiny-gemma3-3"):
        MemoryStore.open(tmp_path / "s", foreign)


def test_a_shard_that_does_not_fit_its_manifest_is_refused_naming_store_chunk_and_field(
    tmp_path: Path, compressor
) -> None:
    _store(tmp_path / "s", compressor, "kv-exact", fidelity="none").close()
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["memory"]["head_dim"] = manifest["memory"]["head_dim"] // 2
    manifest["memory"]["row_bytes"] -= 1
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    # The manifest contradicts itself: refused on open, named by verify.
    with pytest.raises(StoreCorruptError, match=r"manifest.json: memory.row_bytes is .* take"):
        MemoryStore.open(tmp_path / "s", read_only=True)
    from memrag.store import verify_store

    report = verify_store(tmp_path / "s")
    assert not report.ok and "manifest" in report.parts()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"kind": "kv"}, "memory.kind is 'kv' but memory.settings.kind is 'kv-exact'"),
        ({"kind": "kv-pruned", "settings": {"kind": "kv-pruned", "kv_dtype": "int8"}}, "holds 'kv-exact' rows"),
        ({"settings": {"kind": "kv-exact", "kv_dtype": "float16"}}, "as float16 take"),
    ],
)
def test_an_edited_manifest_is_refused_naming_it_and_the_shards(tmp_path: Path, compressor, edit, expected) -> None:
    from memrag.store import verify_store

    _store(tmp_path / "s", compressor, "kv-exact:int8", fidelity="none").close()
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["memory"].update(edit)
    if "settings" in edit and edit["settings"]["kind"] == "kv-pruned":
        manifest["memory"]["settings"]["pruning"] = {}
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreCorruptError, match=expected):
        MemoryStore.open(tmp_path / "s", read_only=True)
    report = verify_store(tmp_path / "s")
    assert not report.ok and "manifest" in report.parts() and expected.split("'")[0] in str(report.problems[0])


def test_mixing_memory_kinds_in_one_store_is_refused(tmp_path: Path, compressor) -> None:
    with _store(tmp_path / "s", compressor, "kv-exact", fidelity="none") as store:
        other = MemoryStore.create(tmp_path / "o", compressor=compressor, embedder="hashing:64", memory="kv-pruned", fidelity="none")
        from memrag.store.processing import ChunkInput

        batch = other.processor.process([ChunkInput("x", "Another text about bridges.")])
        with pytest.raises(ValueError, match="kv-pruned memory cannot go into .* which holds kv-exact"):
            store.write(batch)
        other.close()


@pytest.mark.parametrize("bad", ["kv-pruned:0", "kv-pruned:1.5", "kv-pruned:-0.2"])
def test_keep_ratio_outside_zero_one_is_refused(tmp_path: Path, compressor, bad: str) -> None:
    with pytest.raises(ValueError, match="keep_ratio must be in"):
        MemoryStore.create(tmp_path / "s", compressor=compressor, embedder="hashing:64", memory=bad)
    assert not (tmp_path / "s").exists()


def test_pruned_memory_is_scored_and_low_fidelity_chunks_are_served_as_text(
    tmp_path: Path, compressor
) -> None:
    with _store(tmp_path / "s", compressor, "kv-pruned", fidelity_threshold=1.0) as store:
        records = store.get(["paris", "tower", "fox"])
        assert all(r.fidelity is not None and 0 < r.fidelity <= 1 for r in records)
        assert all(r.use_text and r.context() == r.text for r in records)
        store.set_fidelity_threshold(0.0)
        assert all(isinstance(r.context(), KVSlots) for r in store.get(["paris", "tower", "fox"]))
    with _store(tmp_path / "e", compressor, "kv-exact") as exact:
        assert all(r.fidelity is None for r in exact.get(["paris", "fox"]))


def test_cli_builds_and_describes_a_pruned_int8_store(tmp_path: Path, saved_compressor: Path) -> None:
    from typer.testing import CliRunner

    from memrag.cli import app

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    runner = CliRunner()
    store = tmp_path / "store"
    result = runner.invoke(
        app,
        ["index", "build", "--corpus", str(corpus), "--store", str(store), "--compressor", str(saved_compressor),
         "--embedder", "hashing:64", "--memory", "kv-pruned", "--keep-ratio", "0.5", "--kv-dtype", "int8", "-q"],
    )
    assert result.exit_code == 0, result.output
    info = runner.invoke(app, ["index", "info", str(store)])
    assert info.exit_code == 0, info.output
    line = next(line for line in info.output.splitlines() if line.strip().startswith("memory "))
    assert line.strip().startswith("memory kv-pruned (") and "kv_dtype int8" in line and "keep_ratio 0.5" in line
    assert "bytes per chunk" in info.output
    bad = runner.invoke(
        app,
        ["index", "build", "--corpus", str(corpus), "--store", str(tmp_path / "bad"), "--compressor",
         str(saved_compressor), "--memory", "kv-exact", "--keep-ratio", "0.5", "-q"],
    )
    assert bad.exit_code != 0 and "--keep-ratio needs --memory kv-pruned" in bad.output


def test_a_chunk_longer_than_the_context_is_refused_by_id_and_nothing_is_written(
    tmp_path: Path, compressor
) -> None:
    limit = compressor.causal_lm.config.max_position_embeddings
    with _store(tmp_path / "s", compressor, "kv-exact", fidelity="none") as store:
        with pytest.raises(ValueError, match=r"chunk 'long' has \d+ tokens.*context \(" + str(limit)):
            store.add(["short text", "word " * (limit + 1)], ids=["short", "long"])
        assert len(store) == 3 and "short" not in store


def test_a_prompt_longer_than_the_context_is_refused(tmp_path: Path, compressor) -> None:
    limit = compressor.causal_lm.config.max_position_embeddings
    with _store(tmp_path / "s", compressor, "kv-exact", fidelity="none") as store:
        memory = store.get(["tower"])[0].context()
        with pytest.raises(ValueError, match=r"prompt takes \d+ positions .* context \(" + str(limit)):
            compressor.build([[memory] * (limit // memory.span + 1) + ["Question?"]])


def test_a_damaged_kv_shard_is_found_and_its_memory_recomputed(tmp_path: Path, compressor) -> None:
    from memrag.store.repair import repair_store
    from memrag.store.verify import verify_store

    with _store(tmp_path / "s", compressor, "kv-pruned:0.5:int8", fidelity="none") as store:
        before = {r.id: r.slots for r in store.get(["paris", "tower", "fox"])}
    (shard,) = (tmp_path / "s" / "shards").glob("*.safetensors")
    shard.write_bytes(shard.read_bytes()[:100])
    report = verify_store(tmp_path / "s")
    assert not report.ok and report.parts() == {"shard"}
    result = repair_store(tmp_path / "s", compressor=compressor)
    assert result.recompressed == 3 and result.after.ok
    with MemoryStore.open(tmp_path / "s", read_only=True) as store:
        for record in store.get(list(before)):
            assert torch.equal(record.slots.offsets, before[record.id].offsets)
            torch.testing.assert_close(record.slots.keys, before[record.id].keys)


@pytest.mark.parametrize("memory", ["kv", "kv:int8"])
def test_trained_kv_slots_round_trip_through_a_store(tmp_path: Path, memory: str) -> None:
    from memrag.testing import tiny_compressor

    kv_compressor = tiny_compressor(seed=0, slot_kind="kv")
    spec = resolve_memory_spec(memory)
    with _store(tmp_path / "s", kv_compressor, memory, fidelity="none") as store:
        assert store.memory.kind == "kv" and store.fingerprint == kv_compressor.fingerprint
        (record,) = store.get(["tower"])
        stored = record.slots
        (made,) = kv_compressor.compress([TEXTS[1]])
        assert isinstance(stored, KVSlots) and stored.kind == "kv"
        assert stored.num_slots == made.num_slots and torch.equal(stored.offsets, made.offsets)
        tolerance = {"float16": 1e-3, "int8": 8e-3}[spec.kv_dtype]
        for name in ("keys", "values"):
            a, b = getattr(stored, name).float(), getattr(made, name).float()
            assert float((a - b).abs().max() / b.abs().max()) < tolerance, name
        prompt = qa_parts([record.context()], "When was the tower completed?")
        assert kv_compressor.generate([prompt], GenerationOptions(max_new_tokens=4))[0].num_tokens > 0
    other = tiny_compressor(seed=1, slot_kind="kv")
    with pytest.raises(CompressorMismatchError):
        MemoryStore.open(tmp_path / "s", other)
    with MemoryStore.open(tmp_path / "s", kv_compressor) as store:
        (record,) = store.get(["fox"])
        assert kv_compressor.build([qa_parts([record.context()], "What jumps?")]).cache is not None


def test_trained_memory_needs_a_compressor_of_its_slot_kind(tmp_path: Path, compressor) -> None:
    from memrag.testing import tiny_compressor

    with pytest.raises(ValueError, match="slot_kind='kv'"):
        MemoryStore.create(tmp_path / "a", compressor=compressor, embedder="hashing:64", memory="kv")
    with pytest.raises(ValueError, match="slot_kind='embedding'"):
        MemoryStore.create(tmp_path / "b", compressor=tiny_compressor(slot_kind="kv"), embedder="hashing:64", memory="embedding")


def test_trained_kv_slots_are_scored_by_reconstructing_the_chunk_from_them(tmp_path: Path) -> None:
    from memrag.store.fidelity import FidelityScorer
    from memrag.testing import tiny_compressor

    kv_compressor = tiny_compressor(seed=0, slot_kind="kv", kv_positions="subset")
    with _store(tmp_path / "s", kv_compressor, "kv", fidelity="reconstruct", fidelity_threshold=1.0) as store:
        assert store.manifest.options.fidelity == "reconstruct"
        records = store.get(["paris", "tower", "fox"])
        assert all(r.fidelity is not None and 0 < r.fidelity <= 1 for r in records)
        assert all(r.use_text for r in records)
        # The stored score is the scorer's, from the slots as stored (float16).
        scorer = FidelityScorer(kv_compressor)
        (again,) = scorer.score([TEXTS[1]], [records[1].slots])
        assert again == pytest.approx(records[1].fidelity, rel=1e-4)


def test_a_store_without_a_named_compressor_gets_the_shipped_default_for_its_memory(
    tmp_path: Path, compressor, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memrag.compressor import Compressor
    from memrag.compressor.shipped import DEFAULT_COMPRESSOR, DEFAULT_EMBEDDING_COMPRESSOR

    asked: list[str] = []

    def from_pretrained(name, **_):
        asked.append(name)
        return compressor

    monkeypatch.setattr(Compressor, "from_pretrained", staticmethod(from_pretrained))
    # (This directory's conftest makes "embedding" the default memory.)
    for memory, expected in (("embedding", DEFAULT_EMBEDDING_COMPRESSOR), ("kv-exact", DEFAULT_COMPRESSOR), (None, DEFAULT_EMBEDDING_COMPRESSOR)):
        MemoryStore.create(tmp_path / f"s-{memory}", embedder="hashing:64", memory=memory, fidelity="none").close()
        assert asked[-1] == expected, memory


def test_agreement_scores_exact_memory_as_the_text_and_other_memory_lower(compressor) -> None:
    from memrag.store.fidelity import AgreementScorer, cloze_probes

    scorer = AgreementScorer(compressor, probes=3)
    own, other = build_memory(compressor, resolve_memory_spec("kv-exact"), [TEXTS[1], TEXTS[2]])
    measured = scorer.measure([TEXTS[1], TEXTS[1]], [own, other])
    # The chunk's own cache (computed without the prompt around it) is close to the text; the
    # memory of another chunk is not.
    assert measured[0]["kl"] < 1e-3 and measured[1]["kl"] > 2 * measured[0]["kl"]
    assert measured[0]["top1"] > measured[1]["top1"]
    scores = scorer.score([TEXTS[1], TEXTS[1]], [own, other])
    assert 0 < scores[1] < scores[0] <= 1.0
    # Probes quote the chunk and ask for the words that follow, spread over it.
    probes = cloze_probes(TEXTS[1], 3)
    assert len(probes) == 3 and all(answer in TEXTS[1] for _, answer in probes)
    assert cloze_probes("word", 3) == []


def test_k_v_stores_are_gated_by_agreement_by_default(tmp_path: Path) -> None:
    from memrag.store.manifest import DEFAULT_FIDELITY_THRESHOLDS
    from memrag.testing import tiny_compressor

    kv_compressor = tiny_compressor(seed=0, slot_kind="kv", kv_positions="subset")
    with _store(tmp_path / "kv", kv_compressor, "kv") as store:
        options = store.manifest.options
        assert options.fidelity == "agreement"
        assert options.fidelity_threshold == DEFAULT_FIDELITY_THRESHOLDS["agreement"]
        records = store.get(["paris", "tower", "fox"])
        assert all(r.fidelity is not None and 0 < r.fidelity <= 1 for r in records)
        assert [r.use_text for r in records] == [r.fidelity < options.fidelity_threshold for r in records]
    with _store(tmp_path / "emb", kv_compressor, "kv-exact") as store:
        assert all(r.fidelity is None for r in store.get(["paris"]))  # exact memory loses nothing
    with pytest.raises(ValueError, match="fidelity must be auto or one of"):
        _store(tmp_path / "bad", kv_compressor, "kv", fidelity="guess")


def test_a_store_of_other_rate_and_codec_slots_is_refused_naming_both(tmp_path: Path) -> None:
    from memrag.testing import tiny_compressor

    rate8 = tiny_compressor(seed=0, slot_kind="kv", kv_positions="subset", compression_rate=8)
    _store(tmp_path / "s", rate8, "kv:int4", fidelity="none").close()
    rate4 = tiny_compressor(seed=0, slot_kind="kv", kv_positions="subset", compression_rate=4)
    with pytest.raises(CompressorMismatchError) as caught:
        MemoryStore.open(tmp_path / "s", rate4)
    message = str(caught.value)
    assert "kv int4 slots of compressor" in message and "at compression rate 8" in message and "compression rate 4" in message
    assert rate8.fingerprint in message and rate4.fingerprint in message


@pytest.mark.parametrize("memory", ["kv-exact:int4", "kv-exact:k8v4", "kv-exact:int4r", "kv-exact:int4c", "kv-exact:tc2"])
def test_a_4bit_shard_failing_its_checksum_is_reported_with_its_chunks(tmp_path: Path, compressor, memory: str) -> None:
    from memrag.store.verify import verify_store

    _store(tmp_path / "s", compressor, memory, fidelity="none").close()
    (shard,) = (tmp_path / "s" / "shards").glob("*.safetensors")
    data = bytearray(shard.read_bytes())
    data[-40] ^= 0xFF  # inside the last chunk's rows
    shard.write_bytes(bytes(data))
    report = verify_store(tmp_path / "s")
    assert not report.ok and report.parts() == {"shard"}
    (finding,) = report.problems
    assert set(finding.chunk_ids) == {"paris", "tower", "fox"} and finding.affected == 3
    assert "fox" in finding.message and "fail their checksum" in finding.message


def test_an_int4c_store_keeps_its_calibration_for_appends_and_refuses_an_edited_one(
    tmp_path: Path, compressor
) -> None:
    """The calibration is measured at creation and recorded in the manifest: chunks appended
    after reopening are coded with the recorded figures (here replaced by other valid ones, so
    a processor that measured its own would decode wrongly), and a damaged calibration is
    refused on open and reported by verify instead of decoding every chunk wrongly."""
    import dataclasses

    from memrag.memory.calibration import KVCalibration
    from memrag.store import verify_store

    _store(tmp_path / "s", compressor, "kv-exact:int4c", fidelity="none").close()
    path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(path.read_text())
    measured = KVCalibration.from_text(manifest["memory"]["kv_calibration"])
    other = dataclasses.replace(measured, key_centre=measured.key_centre + 0.5, key_scale=2 * measured.key_scale)
    manifest["memory"]["kv_calibration"] = other.to_text()
    path.write_text(json.dumps(manifest))
    with MemoryStore.open(tmp_path / "s", compressor) as store:
        store.add(["Gustave Eiffel's company built the tower in two years."], ids=["eiffel"])
        (record,) = store.get(["eiffel"])
        (made,) = build_memory(compressor, resolve_memory_spec("kv-exact"), [record.text])
        for name in ("keys", "values"):
            a, b = getattr(record.slots, name).float(), getattr(made, name).float()
            assert float((a - b).abs().max() / b.abs().max()) < 0.2, name
    assert json.loads(path.read_text())["memory"]["kv_calibration"] == other.to_text()
    manifest = json.loads(path.read_text())
    shape, digest, payload = manifest["memory"]["kv_calibration"].split(":")
    manifest["memory"]["kv_calibration"] = f"{shape}:{digest}:{'B' if payload[0] == 'A' else 'A'}{payload[1:]}"
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreCorruptError, match="kv_calibration|calibration does not match its checksum"):
        MemoryStore.open(tmp_path / "s", read_only=True)
    report = verify_store(tmp_path / "s")
    assert not report.ok and "manifest" in report.parts()
    assert "checksum" in str(report.problems[0])


def test_a_transform_coded_store_keeps_its_model_for_appends_and_refuses_an_edited_one(
    tmp_path: Path, compressor
) -> None:
    """The transform codec's model is fitted at creation and recorded in the manifest: an
    append after reopening codes with the recorded model (the same bytes as the first build's
    codec), and an edited model is refused on open, naming the manifest, and reported by
    verify."""
    from memrag.memory.codec import kv_codec
    from memrag.store import verify_store

    _store(tmp_path / "s", compressor, "kv-exact:tc2", fidelity="none").close()
    path = tmp_path / "s" / "manifest.json"
    recorded = json.loads(path.read_text())["memory"]["kv_calibration"]
    assert recorded.startswith("tc1:")
    with MemoryStore.open(tmp_path / "s", compressor) as store:
        store.add(["Gustave Eiffel's company built the tower in two years."], ids=["eiffel"])
        (record,) = store.get(["eiffel"])
        (made,) = build_memory(compressor, resolve_memory_spec("kv-exact"), [record.text])
        codec = kv_codec(made.num_layers, made.keys.shape[2], made.keys.shape[3], "tc2", recorded)
        expected = codec.decode(codec.encode(made), span=made.span, kind=made.kind)
        assert torch.equal(record.slots.keys, expected.keys) and torch.equal(record.slots.values, expected.values)
    assert json.loads(path.read_text())["memory"]["kv_calibration"] == recorded
    manifest = json.loads(path.read_text())
    version, digest, payload = recorded.split(":", 2)
    manifest["memory"]["kv_calibration"] = f"{version}:{digest}:{payload[:100]}"
    path.write_text(json.dumps(manifest))
    with pytest.raises(StoreCorruptError, match="manifest.json.*(malformed|checksum)|(malformed|checksum).*manifest.json"):
        MemoryStore.open(tmp_path / "s", read_only=True)
    report = verify_store(tmp_path / "s")
    assert not report.ok and "manifest" in report.parts()
