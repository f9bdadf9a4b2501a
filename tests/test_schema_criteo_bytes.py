"""`--schema=criteo` preprocessing writes exactly the arrays it wrote before schemas existed.

The golden digests were taken from the preprocessing code before the schema layer
was added, on a seeded raw Criteo file generated here (no dependency on the synthetic
generator, whose rows may change).
"""

import hashlib
import os

import numpy as np
import pytest

from jaxrec.data import preprocess, schema

GOLDEN = {
    "random": {
        "train/dense.npy": "0bd2ee55d7da6058",
        "train/cat.npy": "f706f50d82611931",
        "train/label.npy": "242899ae2c8627d5",
        "validation/dense.npy": "6c0d39a808839d84",
        "validation/cat.npy": "a9dd2a20963a837d",
        "validation/label.npy": "ae21d06f98d0c1ba",
        "test/dense.npy": "7a24ae1c38b55aa2",
        "test/cat.npy": "8183fad849e1a914",
        "test/label.npy": "22f66e34fb81fc80",
        "vocab.npz": "5a5869cae95ac0be",
    },
    "kaggle_cap": {
        "train/dense.npy": "6534820a3f5e3fb2",
        "train/cat.npy": "bc41ac3efd865600",
        "train/label.npy": "43e8268f83078f04",
        "validation/dense.npy": "d3be82a42a66d0e6",
        "validation/cat.npy": "7046fe885eaa9827",
        "validation/label.npy": "ac225ddd3228f34d",
        "test/dense.npy": "145100c6c4256634",
        "test/cat.npy": "cc46f029ffd27057",
        "test/label.npy": "9130b53631e25f93",
        "vocab.npz": "1c538c630b6e39b0",
    },
}
OPTIONS = {"random": dict(split="random:0.8,0.1,0.1", min_frequency=2),
           "kaggle_cap": dict(split="kaggle", min_frequency=1, max_rows_per_table=64,
                              dense_dtype="float16")}


def write_raw_criteo(path: str, rows: int = 3000, seed: int = 3) -> None:
  """Seeded Criteo lines: skewed hex keys, missing fields, negative and large counts."""
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(rows):
      label = str(int(rng.random() < 0.25))
      dense = [("" if rng.random() < 0.2 else str(int(rng.integers(-3, 10**rng.integers(1, 6)))))
               for _ in range(13)]
      cats = [("" if rng.random() < 0.1 else
               f"{int(rng.zipf(1.5 + j / 20)) * 2654435761 % 2**32:08x}")
              for j in range(26)]
      f.write("\t".join([label, *dense, *cats]) + "\n")


def digests(out: str) -> dict:
  result = {}
  for split in preprocess.SPLITS:
    for name in ("dense", "cat", "label"):
      with open(os.path.join(out, split, f"{name}.npy"), "rb") as f:
        result[f"{split}/{name}.npy"] = hashlib.sha256(f.read()).hexdigest()[:16]
  with np.load(os.path.join(out, "vocab.npz")) as z:
    h = hashlib.sha256()
    for key in sorted(set(z.files) - {"hash_only"}):  # a flag added later (hash:N vocabularies)
      h.update(key.encode())
      h.update(np.ascontiguousarray(z[key]).tobytes())
  result["vocab.npz"] = h.hexdigest()[:16]
  return result


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_criteo_schema_writes_the_same_bytes(tmp_path, case):
  raw = str(tmp_path / "raw.tsv")
  write_raw_criteo(raw)
  kwargs = dict(OPTIONS[case])
  kwargs["schema"] = schema.load("criteo")
  config = preprocess.PreprocessConfig(inputs=(raw,), output_dir=str(tmp_path / case), **kwargs)
  preprocess.preprocess(config, report=lambda m: None)
  assert digests(config.output_dir) == GOLDEN[case]
