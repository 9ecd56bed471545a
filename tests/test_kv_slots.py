"""Trained K/V slots (``slot_kind="kv"``): positions, splicing, training, distillation, save/load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from training_fixtures import make_trainer, train_log
from transformers import DynamicCache

from memrag.compressor import Compressor, CompressorConfig
from memrag.compressor.kv_encoder import encoder_rows, scored_positions
from memrag.data.examples import QAExample
from memrag.generation import cache_argument
from memrag.memory.capture import capture_kv
from memrag.memory.kv import KVSlots
from memrag.memory.pruning import REPEAT_PROMPT, PruningConfig, score_and_capture, select_positions
from memrag.memory.salience import salient_rows
from memrag.scoring import TargetLogits
from memrag.splice import left_padded
from memrag.testing import randomize_lora, tiny_base_model, tiny_compressor
from memrag.training.objectives import Distillation, QAObjective, top_k_kl

POSITIONS = ["memory", "subset"]
DOC_A = "alpha beta gamma delta Paris"
DOC_B = "tower river bridge 1889 museum built"
QUESTION = "\nQuestion: what?"


def _kv(kv_positions: str, seed: int = 0, segment_length: int = 16) -> Compressor:
    return tiny_compressor(seed=seed, slot_kind="kv", kv_positions=kv_positions, segment_length=segment_length)


def _ids(compressor: Compressor, text: str) -> list[int]:
    return list(compressor.tokenizer(text, add_special_tokens=False)["input_ids"])


def _slots_computed_at(compressor: Compressor, text: str, start: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The slots' keys and values as the model itself caches them with slot ``j`` at ``start + j``.

    For each slot the encoder runs with its positions shifted so that the slot's row sits at
    ``start + j``, and the model applies its rotary embedding itself: no memrag rotation is
    involved (a shift changes no relative position inside the encoder).
    """
    row, pick = encoder_rows(compressor, _ids(compressor, text))
    inputs, mask = left_padded([row])
    keys: list[list[torch.Tensor]] = []
    values: list[list[torch.Tensor]] = []
    for slot, index in enumerate(pick):
        shift = start + slot - index
        cache = DynamicCache()
        with torch.no_grad(), compressor.encoder_mode():
            compressor.causal_lm.model(
                inputs_embeds=inputs,
                attention_mask=mask,
                position_ids=torch.arange(shift, shift + row.shape[0]).unsqueeze(0),
                cache=cache,
                use_cache=True,
            )
        for layer, entry in enumerate(cache.layers):
            if slot == 0:
                keys.append([])
                values.append([])
            keys[layer].append(entry.keys[:, :, index : index + 1])
            values[layer].append(entry.values[:, :, index : index + 1])
    return [torch.cat(k, dim=2) for k in keys], [torch.cat(v, dim=2) for v in values]


def _direct_logits(compressor: Compressor, docs: list[str]) -> torch.Tensor:
    """Last-position logits of ``[BOS] Passage: <slots of each doc> <question>``, cache built by hand."""
    tokenizer = compressor.tokenizer
    prefix = [tokenizer.bos_token_id, *_ids(compressor, "Passage: ")]
    decoder = compressor.causal_lm
    cache = DynamicCache()
    with torch.no_grad(), compressor.decoder_mode():
        decoder.model(input_ids=torch.tensor([prefix]), cache=cache, use_cache=True)
    keys = [[layer.keys] for layer in cache.layers]
    values = [[layer.values] for layer in cache.layers]
    position = len(prefix)
    for doc in docs:
        doc_keys, doc_values = _slots_computed_at(compressor, doc, position)
        for layer in range(len(keys)):
            keys[layer].append(doc_keys[layer])
            values[layer].append(doc_values[layer])
        position += doc_keys[0].shape[2]
    full = DynamicCache()
    for layer in range(len(keys)):
        full.update(torch.cat(keys[layer], dim=2), torch.cat(values[layer], dim=2), layer)
    tail = _ids(compressor, QUESTION)
    with torch.no_grad(), compressor.decoder_mode():
        output = decoder(
            input_ids=torch.tensor([tail]),
            attention_mask=torch.ones((1, position + len(tail)), dtype=torch.long),
            position_ids=torch.arange(position, position + len(tail)).unsqueeze(0),
            **{cache_argument(decoder): full},
        )
    return output.logits[0, -1]


def _spliced_logits(compressor: Compressor, docs: list[str]) -> torch.Tensor:
    """The same prompt through memrag's one splice path (:meth:`Compressor.build`)."""
    slots = compressor.compress(docs)
    batch = compressor.build([["Passage: ", *slots, QUESTION]])
    cached = batch.cache.get_seq_length()
    with torch.no_grad(), compressor.decoder_mode() as decoder:
        output = decoder(
            inputs_embeds=batch.inputs_embeds[:, cached:],
            attention_mask=batch.attention_mask,
            position_ids=batch.position_ids[:, cached:],
            **{cache_argument(decoder): batch.cache},
        )
    return output.logits[0, -1]


@pytest.mark.parametrize("kv_positions", POSITIONS)
def test_slots_moved_to_a_position_equal_slots_computed_there_in_either_order(kv_positions: str) -> None:
    compressor = _kv(kv_positions, segment_length=32)  # one segment per document
    for docs in ([DOC_A], [DOC_A, DOC_B], [DOC_B, DOC_A]):
        direct = _direct_logits(compressor, docs)
        spliced = _spliced_logits(compressor, docs)
        torch.testing.assert_close(spliced, direct, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(_spliced_logits(compressor, [DOC_A, DOC_B]), _spliced_logits(compressor, [DOC_B, DOC_A]))


def test_kv_slots_have_the_configured_shape_kind_and_fingerprint() -> None:
    for kv_positions in POSITIONS:
        compressor = _kv(kv_positions)
        (slots,) = compressor.compress([DOC_B * 4])  # 2+ segments of 16 tokens
        tokens = len(_ids(compressor, DOC_B * 4))
        segments = math.ceil(tokens / 16)
        assert isinstance(slots, KVSlots) and slots.kind == "kv"
        assert slots.num_tokens == tokens and slots.fingerprint == compressor.fingerprint
        expected = sum(math.ceil(min(16, tokens - 16 * s) / 4) for s in range(segments))
        assert slots.num_slots == slots.span == expected
        assert slots.keys.shape[1:] == (2, 1, 16)
        assert torch.equal(slots.offsets[:, 0], torch.arange(expected))


def test_subset_slots_of_an_untrained_adapter_are_the_decoders_own_keys_and_values() -> None:
    base = tiny_base_model(seed=3)
    compressor = Compressor(base, CompressorConfig(base_model=base.name, segment_length=64, slot_kind="kv", kv_positions="subset"), seed=3)
    ids = _ids(compressor, DOC_B)
    (slots,) = compressor.compress([DOC_B])
    with compressor.decoder_mode() as decoder:
        (exact,) = capture_kv(decoder, [ids], context=[compressor.tokenizer.bos_token_id])
    kept = torch.tensor(compressor.config.slot_positions(len(ids)))
    torch.testing.assert_close(slots.keys, exact.keys[kept], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slots.values, exact.values[kept], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("selection", ["prefill", "kvzip"])
def test_scored_subset_slots_of_an_untrained_adapter_are_the_pruned_memorys_positions(selection: str) -> None:
    base = tiny_base_model(seed=3)
    config = CompressorConfig(
        base_model=base.name, segment_length=64, slot_kind="kv", kv_positions="subset", kv_selection=selection
    )
    compressor = Compressor(base, config, seed=3)
    ids = _ids(compressor, DOC_B)
    (slots,) = compressor.compress([DOC_B])
    tokenizer = compressor.tokenizer
    repeat = _ids(compressor, REPEAT_PROMPT) if selection == "kvzip" else []
    with compressor.decoder_mode() as decoder:
        ((exact, scores),) = score_and_capture(
            decoder, [ids], PruningConfig(selection=selection, keep_ratio=0.25),
            context=[tokenizer.bos_token_id], repeat_ids=repeat, pad_token_id=tokenizer.pad_token_id,
        )
    kept = select_positions(scores, PruningConfig(selection=selection, keep_ratio=0.25))
    assert kept.shape == (math.ceil(len(ids) / 4), exact.keys.shape[1])
    if selection == "kvzip":  # (prefill scores favour the first positions in every layer here)
        assert len({tuple(kept[:, layer].tolist()) for layer in range(kept.shape[1])}) > 1  # per layer
    layers = torch.arange(kept.shape[1])
    torch.testing.assert_close(slots.keys, exact.keys[kept, layers], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slots.values, exact.values[kept, layers], rtol=1e-5, atol=1e-5)
    assert torch.equal(slots.offsets[:, 0], torch.arange(kept.shape[0]))


def test_a_salient_selection_keeps_the_names_and_numbers_in_every_layer_within_half_the_slots() -> None:
    text = "In 1889 the Eiffel Tower in Paris opened; 300 metres tall, it drew Gustave Eiffel 2 million visitors."
    positions, fingerprints = {}, set()
    for selection in ("kvzip", "kvzip-salient"):
        base = tiny_base_model(seed=3)
        config = CompressorConfig(
            base_model=base.name, segment_length=64, slot_kind="kv", kv_positions="subset", kv_selection=selection
        )
        compressor = Compressor(base, config, seed=3)
        ids = _ids(compressor, text)
        (positions[selection],) = scored_positions(compressor, [ids])
        fingerprints.add(compressor.fingerprint)
    salient = salient_rows(compressor.tokenizer, ids)
    cap = max(1, compressor.config.slots_for(len(ids)) // 2)
    assert len(salient) > cap  # the cap binds: the best-scored salient tokens are forced
    def kept_in_every_layer(selection: str) -> set[int]:
        return set.intersection(*(set(positions[selection][:, layer].tolist()) for layer in range(2)))

    forced = kept_in_every_layer("kvzip-salient") & set(salient)
    assert len(forced) >= cap
    assert not forced <= kept_in_every_layer("kvzip")  # the attention scores alone drop some of them
    assert positions["kvzip-salient"].shape == positions["kvzip"].shape
    assert len(fingerprints) == 2


def test_kv_selection_is_validated_and_only_a_scored_one_changes_the_fingerprint() -> None:
    stride = _kv("subset")
    assert "kv_selection" not in stride.config.identity()  # fingerprints made before it stay valid
    scored = tiny_compressor(seed=0, slot_kind="kv", kv_positions="subset", kv_selection="kvzip")
    assert scored.fingerprint != stride.fingerprint
    assert not stride.config.scores_positions and scored.config.scores_positions
    salient = CompressorConfig(slot_kind="kv", kv_positions="subset", kv_selection="kvzip-salient")
    assert (salient.position_scoring, salient.forces_salient) == ("kvzip", True)
    assert (scored.config.position_scoring, scored.config.forces_salient) == ("kvzip", False)
    with pytest.raises(ValueError, match="kv_selection must be one of"):
        CompressorConfig(slot_kind="kv", kv_positions="subset", kv_selection="random")
    with pytest.raises(ValueError, match="needs slot_kind='kv' and kv_positions='subset'"):
        CompressorConfig(slot_kind="kv", kv_positions="memory", kv_selection="prefill")


def test_slots_of_another_compressor_are_refused() -> None:
    mine, other = _kv("memory", seed=0), _kv("memory", seed=1)
    (slots,) = other.compress([DOC_A])
    with pytest.raises(ValueError, match="made by compressor"):
        mine.build([["Passage: ", slots, QUESTION]])


@pytest.mark.parametrize("kv_positions", POSITIONS)
def test_save_load_round_trips_with_the_fingerprint_check(kv_positions: str, tmp_path: Path) -> None:
    compressor = _kv(kv_positions)
    compressor.save_pretrained(tmp_path / "c")
    loaded = Compressor.from_pretrained(tmp_path / "c", base=tiny_base_model(seed=0))
    assert loaded.config.slot_kind == "kv" and loaded.config.kv_positions == kv_positions
    assert loaded.fingerprint == compressor.fingerprint
    torch.testing.assert_close(loaded.compress([DOC_A])[0].keys, compressor.compress([DOC_A])[0].keys)
    config = json.loads((tmp_path / "c" / "memrag_config.json").read_text())
    config["kv_positions"] = "subset" if kv_positions == "memory" else "memory"
    (tmp_path / "c" / "memrag_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="fingerprint"):
        Compressor.from_pretrained(tmp_path / "c", base=tiny_base_model(seed=0))


def test_kv_positions_do_not_change_an_embedding_compressors_fingerprint() -> None:
    a = tiny_compressor(seed=0)
    b = tiny_compressor(seed=0, kv_positions="subset")
    assert a.fingerprint == b.fingerprint
    with pytest.raises(ValueError, match="kv_positions"):
        CompressorConfig(slot_kind="kv", kv_positions="everywhere")


# --------------------------------------------------------------------------- distillation
def test_top_k_kl_is_zero_for_the_teacher_itself_and_positive_otherwise() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 50)
    labels = torch.tensor([[5, 6, -100], [7, 8, 9]])
    teacher = TargetLogits(logits, labels)
    assert torch.allclose(top_k_kl(teacher, teacher, 50), torch.zeros(2), atol=1e-6)
    student = TargetLogits(logits + torch.randn(2, 3, 50), labels)
    kl = top_k_kl(teacher, student, 8)
    assert (kl > 0).all()
    masked = top_k_kl(teacher, TargetLogits(student.logits, torch.full_like(labels, -100)), 8)
    assert torch.equal(masked, torch.zeros(2))


@pytest.mark.parametrize("slot_kind", ["embedding", "kv"])
def test_distillation_adds_a_kl_term_with_gradients(slot_kind: str) -> None:
    compressor = tiny_compressor(seed=0, slot_kind=slot_kind)  # type: ignore[arg-type]
    examples = [
        QAExample(id="a", question="What is it?", answers=["a test"], contexts=["alpha beta Paris", "tower river"], gold_index=0),
        QAExample(id="b", question="Who?", answers=["bridge"], contexts=["tower river bridge"], gold_index=0),
    ]
    plain = QAObjective()(compressor, examples)
    distilled = QAObjective(distillation=Distillation(weight=0.5, top_k=8))(compressor, examples)
    kl_sum, kl_tokens = distilled.parts["kl"]
    assert kl_sum > 0 and kl_tokens == distilled.num_tokens
    assert distilled.parts["qa"] == pytest.approx(plain.parts["qa"], rel=1e-5)
    torch.testing.assert_close(distilled.loss_sum, plain.loss_sum + 0.5 * kl_sum, rtol=1e-4, atol=1e-4)
    distilled.loss_sum.backward()
    lora = [p.grad for n, p in compressor.peft_model.named_parameters() if "lora_" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in lora)


# --------------------------------------------------------------------------- training
def _trainer(kind: str, tmp_path: Path, compressor: Compressor, **overrides):
    # Distillation on; a constant rate, so a longer resumed run keeps the same rates.
    return make_trainer(
        kind, tmp_path, compressor, distill_weight=0.5, distill_top_k=8, schedule="constant", **overrides
    )


@pytest.mark.parametrize("kv_positions", POSITIONS)
@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_kv_training_with_distillation_resumes_exactly(kind: str, kv_positions: str, tmp_path: Path) -> None:
    straight = _trainer(kind, tmp_path / "a", _kv(kv_positions), max_steps=3, save_every=1)
    straight.train()
    expected = train_log(tmp_path / "a" / "run")
    assert all("loss_kl" in r and math.isfinite(r["loss"]) for r in expected)

    first = _trainer(kind, tmp_path / "b", _kv(kv_positions), max_steps=2, save_every=1)
    first.train()
    fresh = _kv(kv_positions)
    randomize_lora(fresh, seed=7)  # the checkpoint's weights must replace these
    resumed = _trainer(kind, tmp_path / "b", fresh, max_steps=3, save_every=1)
    resumed.train(resume=True)
    got = train_log(tmp_path / "b" / "run")
    assert [r["step"] for r in got] == [1, 2, 3]
    assert [r["loss"] for r in got] == pytest.approx([r["loss"] for r in expected], rel=1e-5, abs=1e-6)
    assert resumed.compressor.fingerprint == straight.compressor.fingerprint
    loaded = Compressor.from_pretrained(tmp_path / "b" / "run" / "final", base=tiny_base_model(seed=0))
    assert loaded.fingerprint == straight.compressor.fingerprint


@pytest.mark.parametrize("kv_positions", [*POSITIONS, "subset:kvzip"])
def test_kv_training_lowers_the_loss_on_what_it_trains_on(kv_positions: str, tmp_path: Path) -> None:
    positions, _, selection = kv_positions.partition(":")
    compressor = tiny_compressor(seed=0, slot_kind="kv", kv_positions=positions, kv_selection=selection or "stride")
    examples = [
        QAExample(id="a", question="What is first?", answers=["alpha beta"], contexts=["alpha beta gamma delta"], gold_index=0),
        QAExample(id="b", question="What is built?", answers=["tower"], contexts=["tower river bridge 1889"], gold_index=0),
    ]
    objective = QAObjective(distillation=Distillation(weight=0.5, top_k=8))
    learned = [p for n, p in compressor.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(learned, lr=3e-2)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        output = objective(compressor, examples)
        (output.loss_sum / output.num_tokens).backward()
        optimizer.step()
        compressor.invalidate_fingerprint()
        losses.append(float(output.loss_sum) / output.num_tokens)
    # The tiny random decoder reads its context weakly: a drop of ~0.2 nats is all there is.
    assert losses[-1] < losses[0] - 0.1, losses


def test_a_subset_compressor_changes_its_rate_and_still_saves_and_loads(tmp_path) -> None:
    from memrag.compressor import Compressor
    from memrag.testing import tiny_base_model, tiny_compressor
    from memrag.training.arguments import ModelArguments
    from memrag.training.recipes import build_compressor

    base_dir = tmp_path / "base"
    base = tiny_base_model(seed=1, name=str(base_dir))
    base.model.save_pretrained(base_dir)
    base.tokenizer.save_pretrained(base_dir)
    tiny_compressor(seed=1, base=base, slot_kind="kv", kv_positions="subset").save_pretrained(tmp_path / "r4")
    changed = build_compressor(ModelArguments(init_from=str(tmp_path / "r4"), compression_rate=8), "cpu")
    assert changed.config.compression_rate == 8
    assert changed.memory_embeddings.shape[0] == changed.config.num_memory_tokens
    changed.save_pretrained(tmp_path / "r8")
    loaded = Compressor.from_pretrained(tmp_path / "r8")
    assert loaded.config.compression_rate == 8 and loaded.fingerprint == changed.fingerprint
    (slots,) = loaded.compress(["Paris is the capital and most populous city of France."])
    assert slots.num_slots == loaded.config.slots_for(slots.num_tokens) == 2  # 15 tokens at rate 8
    # Slots read at memory tokens depend on the rate: refused.
    other = tiny_base_model(seed=1, name=str(base_dir))
    tiny_compressor(seed=1, base=other).save_pretrained(tmp_path / "emb")
    with pytest.raises(ValueError, match="--compression-rate 8 .*only subset K/V slots"):
        build_compressor(ModelArguments(init_from=str(tmp_path / "emb"), compression_rate=8), "cpu")
