"""Embedding-strategy flags shared by `experiments.train` and `experiments.model_size`.

Importing this module defines the flags; `embedding_config_from_flags` turns
them into a validated `EmbeddingConfig` (ValueError with a one-line message
naming the flag otherwise).
"""

from __future__ import annotations

from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_enum("embedding", "full", ["full", "hash", "qr", "mixed_dim"],
                  "Embedding strategy: one row per category, hashing trick, quotient-remainder"
                  " compositional tables, or mixed dimensions.")
flags.DEFINE_integer("hash_buckets", 0,
                     "--embedding=hash: rows per table (smaller tables stay whole).")
flags.DEFINE_integer("qr_collisions", 4,
                     "--embedding=qr: categories per quotient row (c; tables get ceil(n/c) + c"
                     " rows).")
flags.DEFINE_enum("qr_operation", "mult", ["mult", "add", "concat"],
                  "--embedding=qr: how quotient and remainder rows combine.")
flags.DEFINE_integer("qr_threshold", 200,
                     "--embedding=qr: only tables with more rows than this are split.")
flags.DEFINE_float("md_temperature", 0.3,
                   "--embedding=mixed_dim: alpha of the power rule d_i ~ n_i^-alpha (0 = all d).")
flags.DEFINE_integer("md_threshold", 200,
                     "--embedding=mixed_dim: only tables with more rows than this get narrower.")
flags.DEFINE_bool("md_round_dims", False,
                  "--embedding=mixed_dim: round widths to the nearest power of 2.")


def embedding_config_from_flags(dim: int, first_order: bool = False):
  """Validated embedding flags -> EmbeddingConfig of width `dim`."""
  from jaxrec.layers.embeddings import EmbeddingConfig

  if FLAGS.embedding == "hash" and FLAGS.hash_buckets < 1:
    raise ValueError(f"--embedding=hash needs --hash_buckets >= 1, got {FLAGS.hash_buckets}")
  if FLAGS.hash_buckets < 0:
    raise ValueError(f"--hash_buckets={FLAGS.hash_buckets}: must be >= 0")
  if FLAGS.qr_collisions < 1:
    raise ValueError(f"--qr_collisions={FLAGS.qr_collisions}: must be >= 1")
  if FLAGS.qr_threshold < 0 or FLAGS.md_threshold < 0:
    raise ValueError("--qr_threshold and --md_threshold must be >= 0")
  if FLAGS.md_temperature < 0:
    raise ValueError(f"--md_temperature={FLAGS.md_temperature}: must be >= 0")
  if FLAGS.embedding == "qr" and FLAGS.qr_operation == "concat" and dim < 2:
    raise ValueError("--qr_operation=concat splits --embedding_dim between two tables: needs >= 2")
  return EmbeddingConfig(
      kind=FLAGS.embedding, dim=dim, hash_buckets=FLAGS.hash_buckets or None,
      first_order=first_order, qr_collisions=FLAGS.qr_collisions,
      qr_operation=FLAGS.qr_operation, qr_threshold=FLAGS.qr_threshold,
      md_temperature=FLAGS.md_temperature, md_threshold=FLAGS.md_threshold,
      md_round_dims=FLAGS.md_round_dims)
