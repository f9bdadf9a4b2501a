"""jaxrec.serving.quantize: row-wise 8/4-bit tables, int8 / bfloat16 kernels, artifacts."""

import json
import zipfile

import jax
import numpy as np
import pytest

from jaxrec.layers.embeddings import EmbeddingConfig
from jaxrec.models.registry import ModelConfig
from jaxrec.serving import artifact
from jaxrec.serving import quantize as q
from jaxrec.serving.artifact import ServingModel
from jaxrec.serving.export import export_run
from jaxrec.train import run_dir


@pytest.mark.parametrize("bits", [8, 4])
def test_rows_round_trip_within_half_a_step(bits):
  rng = np.random.default_rng(0)
  table = rng.normal(0, 0.05, (50, 7)).astype(np.float32)  # odd width: int4 pads a nibble
  table[3] = 0.25  # a constant row: scale 0, every value is the bias
  stored = q.quantize_rows(table, bits)
  assert stored.dtype == np.uint8 and stored.shape == (50, q.code_bytes(7, bits) + 4)
  back = np.asarray(q.dequantize_rows(stored, 7, bits))
  step = (table.max(1) - table.min(1)) / ((1 << bits) - 1)
  err = np.abs(back - table)
  assert np.all(err <= step[:, None] / 2 + 1e-3 * np.abs(table).max())
  np.testing.assert_allclose(back[3], 0.25)
  # Row extremes are codes 0 and 2**bits - 1, so each row uses its full range.
  i = np.argmax(table[0])
  assert abs(back[0, i] - table[0, i]) < 1e-3


def test_int8_rows_round_trip_within_half_a_step_of_a_near_ideal_scale():
  rng = np.random.default_rng(0)
  table = rng.normal(0, 0.05, (200, 16)).astype(np.float32)
  table[3] = 0.0  # an all-zero row stays zero
  table[4] = -0.25  # a constant row
  table[5] *= 1e4  # a row near the top of the range
  words, byte = q.quantize_rows_int8(table)
  assert words.dtype == np.uint32 and words.shape == (200, 4)
  assert byte.dtype == np.uint8 and byte.shape == (200,)
  codes = words.astype("<u4").view(np.int8)  # little-endian: code j is byte j of the row
  scale = np.ldexp(1 + (byte & 7) / 8, (byte >> 3).astype(int) - 24).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(q.dequantize_rows_int8(words, byte, 16)),
                                codes * scale[:, None])
  back = codes * scale[:, None]
  assert np.all(np.abs(back - table) <= scale[:, None] / 2)
  assert np.abs(codes).max() <= 127 and np.all(back[3] == 0)
  ideal = np.abs(table).max(1) / 127
  nonzero = ideal > 0
  assert np.all(scale[nonzero] >= ideal[nonzero])
  assert np.all(scale[nonzero] <= 1.125 * ideal[nonzero])


def test_int8_codes_pack_four_to_a_word_low_byte_first():
  table = np.array([[1.0, -1.0, 127.0, -127.0, 0.0, 64.0]], np.float32)  # scale 1: codes = x
  words, byte = q.quantize_rows_int8(table)
  assert q.scale_from_byte(byte)[0] == 1.0
  assert words.tolist() == [[1 | 0xFF << 8 | 127 << 16 | 0x81 << 24, 64 << 8]]  # padded with 0
  np.testing.assert_array_equal(np.asarray(q.dequantize_rows_int8(words, byte, 6)), table)


def test_int8_gather_by_codes_or_by_words_gives_the_same_rows(monkeypatch):
  table = np.random.default_rng(4).normal(0, 0.05, (30, 6)).astype(np.float32)
  stored = [jax.numpy.asarray(x) for x in q.quantize_rows_int8(table)]
  ids = jax.numpy.asarray([[0, 29], [7, 30]], np.int32)  # 30: a pad slot, past the table
  by_codes = np.asarray(q.gather_rows(stored, ids, 6, "int8"))  # a small table: code by code
  monkeypatch.setattr(q, "CACHED_CODES_BYTES", 0)
  by_words = np.asarray(q.gather_rows(stored, ids, 6, "int8"))
  want = np.asarray(q.dequantize_rows_int8(*stored, 6))
  np.testing.assert_array_equal(by_codes, by_words)
  np.testing.assert_array_equal(by_codes[0], want[[0, 29]])
  np.testing.assert_array_equal(by_codes[1], [want[7], np.zeros(6)])


def test_int8_scale_byte_decodes_exactly():
  bytes_ = np.array([0, 24 << 3, 24 << 3 | 4, 255], np.uint8)
  want = [2.0**-24, 1.0, 1.5, 240.0]
  np.testing.assert_array_equal(q.scale_from_byte(bytes_), want)
  np.testing.assert_array_equal(np.asarray(q.scale_from_byte(jax.numpy.asarray(bytes_))), want)
  assert q.MAX_INT8_VALUE == 240 * 127


def test_int4_packs_two_codes_per_byte_low_nibble_first():
  table = np.array([[0.0, 15.0, 3.0, 7.0]], np.float32)  # bias 0, scale 1: codes are the values
  stored = q.quantize_rows(table, 4)
  assert list(stored[0, :2]) == [0 | 15 << 4, 3 | 7 << 4]
  np.testing.assert_array_equal(np.asarray(q.dequantize_rows(stored, 4, 4)), table)


def test_kernel_int8_is_symmetric_per_output_column():
  kernel = np.array([[1.0, -0.5], [-2.0, 0.25]], np.float32)
  codes, scale = q.quantize_kernel(kernel)
  np.testing.assert_allclose(scale, [2 / 127, 0.5 / 127])
  np.testing.assert_array_equal(codes, [[64, -127], [-127, 64]])


@pytest.mark.parametrize("tables", ["int8", "int8-affine", "int4"])
def test_bad_table_values_are_refused_in_one_line(tables):
  table = np.zeros((5, 4), np.float32)
  table[2, 1] = np.nan
  variables = {"tables": {"embedding": table}, "params": {}}
  with pytest.raises(ValueError) as e:
    q.pack(variables, q.QuantizeConfig(tables))
  assert str(e.value) == "table 'embedding': row 2 holds a non-finite value: it cannot be quantized"
  table[2, 1] = 1e6
  with pytest.raises(ValueError, match=r"table 'embedding': row 2 holds \|x\| = 1e\+06 > "):
    q.pack(variables, q.QuantizeConfig(tables))
  with pytest.raises(ValueError, match="mlp weight format"):
    q.QuantizeConfig(mlp="int2")


def _run(tmp_path):
  spec = run_dir.ModelSpec(ModelConfig(bottom_mlp=(8, 4), top_mlp=(8, 1)),
                           EmbeddingConfig(dim=4, first_order=True), tuple(range(3, 29)))
  model = spec.build()
  return run_dir.Run(model=model, variables=model.init(jax.random.key(0)), spec=spec,
                     vocabulary=None, step=0, workdir=str(tmp_path))


@pytest.mark.parametrize("tables, mlp, tol", [("float32", "float32", 1e-6),
                                              ("int8", "int8", 0.02),
                                              ("int8", "bfloat16", 0.02),
                                              ("int8-affine", "int8", 0.02),
                                              ("int4", "int8", 0.1)])
def test_quantized_artifact_predicts_close_to_float32(tmp_path, tables, mlp, tol):
  run = _run(tmp_path)
  path = str(tmp_path / "m.npz")
  meta = export_run(run, path, platforms=("cpu",), quantize=q.QuantizeConfig(tables, mlp))
  assert meta["quantization"] == {"tables": tables, "mlp": mlp,
                                  "rows": q.ROW_LAYOUTS.get(tables, "float32")}
  served = ServingModel.load(path)
  rng = np.random.default_rng(1)
  dense = rng.exponential(2.0, (64, 13)).astype(np.float32)
  cat = np.stack([rng.integers(0, n, 64) for n in run.spec.vocab_sizes], 1).astype(np.int32)
  want = np.asarray(jax.nn.sigmoid(run.model.apply(run.variables, dense, cat)))
  got = served.predict(dense, cat)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=tol, rtol=0)
  if tables != "float32":
    assert np.abs(got - want).max() > 0  # really quantized


@pytest.mark.parametrize("tables, mlp, gather_words", [("int8", "int8", False),
                                                      ("int8", "int8", True),
                                                      ("int8", "bfloat16", False)])
def test_artifact_predicts_as_the_dequantized_float32_model(tmp_path, monkeypatch, tables, mlp,
                                                            gather_words):
  if gather_words:  # as large tables are gathered
    monkeypatch.setattr(q, "CACHED_CODES_BYTES", 0)
  run = _run(tmp_path)
  packed = q.pack(run.variables, q.QuantizeConfig(tables, mlp))
  dequantized = {"params": packed.params(packed.arrays),
                 "tables": {name: q.dequantize_table_rows(stored, width, fmt)
                            for name, fmt, width, stored in packed.stored_tables(packed.arrays)}}
  path = str(tmp_path / "m.npz")
  meta = export_run(run, path, platforms=("cpu",), quantize=q.QuantizeConfig(tables, mlp))
  assert meta["format"] == "jaxrec-serving/2" and meta["prepare_stablehlo_bytes"] > 0
  rng = np.random.default_rng(2)
  dense = rng.exponential(2.0, (300, 13)).astype(np.float32)
  cat = np.stack([rng.integers(0, n, 300) for n in run.spec.vocab_sizes], 1).astype(np.int32)
  want = np.asarray(jax.nn.sigmoid(run.model.apply(dequantized, dense, cat)))
  np.testing.assert_allclose(ServingModel.load(path).predict(dense, cat), want,
                             rtol=1e-6, atol=1e-7)


def test_format_1_artifacts_written_uncompressed_still_load(tmp_path):
  run = _run(tmp_path)
  path, old = str(tmp_path / "m.npz"), str(tmp_path / "old.npz")
  # float32 params: no prepare function, as in format 1 (whose f took every weight as stored)
  export_run(run, path, platforms=("cpu",), quantize=q.QuantizeConfig("int8-affine", "float32"))
  with np.load(path) as z:
    members = {k: z[k] for k in z.files}
  assert "prepare" not in members
  meta = json.loads(members["meta"].tobytes())
  members["meta"] = artifact.pack_json({**meta, "format": "jaxrec-serving/1"})
  with open(old, "wb") as f:  # the earlier writer: np.savez, affine int8 rows
    np.savez(f, **members)
  with zipfile.ZipFile(path) as z:  # the current writer deflates all but the weights
    kinds = {i.filename: i.compress_type for i in z.infolist()}
  assert kinds["meta.npy"] == kinds["exported.npy"] == zipfile.ZIP_DEFLATED
  assert kinds["weights/00000.npy"] == zipfile.ZIP_STORED
  rng = np.random.default_rng(3)
  dense = rng.exponential(2.0, (16, 13)).astype(np.float32)
  cat = np.stack([rng.integers(0, n, 16) for n in run.spec.vocab_sizes], 1).astype(np.int32)
  np.testing.assert_array_equal(ServingModel.load(old).predict(dense, cat),
                                ServingModel.load(path).predict(dense, cat))


def test_packed_sizes():
  variables = {"tables": {"embedding": np.zeros((1000, 16), np.float32),
                          "first_order": np.zeros((1000, 1), np.float32)},
               "params": {"dense": {"kernel": np.zeros((64, 32), np.float32),
                                    "bias": np.zeros((32,), np.float32)}}}
  sizes = {c: q.pack(variables, q.QuantizeConfig(*c)).nbytes
           for c in [("float32", "float32"), ("int8", "int8"), ("int8-affine", "int8"),
                     ("int4", "bfloat16")]}
  assert sizes[("float32", "float32")] == 4 * (16_000 + 1000 + 64 * 32 + 32)
  assert sizes[("int8", "int8")] == 17_000 + 4000 + 64 * 32 + 4 * 32 + 4 * 32
  assert sizes[("int8-affine", "int8")] == 20_000 + 4000 + 64 * 32 + 4 * 32 + 4 * 32
  assert sizes[("int4", "bfloat16")] == 12_000 + 4000 + 2 * 64 * 32 + 4 * 32
  assert [q.row_bytes(16, f) for f in q.TABLE_FORMATS] == [64, 17, 20, 12]
  assert [q.row_bytes(6, f) for f in q.TABLE_FORMATS] == [24, 9, 10, 7]
