r"""Prepares TFDS datasets in ArrayRecord format, so `tfds.data_source(name)` can read them.

  python scripts/prepare_data.py --datasets=tiny_shakespeare,mnist
  python scripts/prepare_data.py --datasets=mnist,fashion_mnist --manual_dir=../shared/raw

Offline, --manual_dir holds the raw download files under the names they have in their URLs
(input.txt, train-images-idx3-ubyte.gz, cifar-10-binary.tar.gz, ...), either directly or in a
subdirectory per dataset (DIR/<name>/). TFDS takes such a file instead of downloading it, after
checking its size and SHA-256 against the checksums it registers for the dataset. Datasets
already prepared in --data_dir are skipped. With internet, train.py prepares a missing dataset
by itself; this script is for offline machines and for preparing several at once.
"""

import importlib.util
import os

from absl import flags

from latent_attention import cli
from latent_attention.data import prepare

_DATASETS = flags.DEFINE_list("datasets", ["tiny_shakespeare"],
                              f"Comma-separated datasets to prepare: "
                              f"{', '.join(prepare.DATASETS)}.")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Offline: directory of raw download files, directly or in <dir>/<name>/.")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples_per_split", None, "Keep only the first N examples of each split (a quick "
    "smoke test of the pipeline; not for training).", lower_bound=1)
_DOWNLOAD_DIR = flags.DEFINE_string(
    "download_dir", None, "Downloads and extractions, one subdirectory per dataset "
    "(default <data_dir>/downloads).")


def main(argv):
  del argv
  names = _DATASETS.value
  unknown = [n for n in names if n not in prepare.DATASETS]
  if unknown or not names:
    problem = f"unknown dataset {', '.join(map(repr, unknown))}" if unknown else "no dataset given"
    raise ValueError(f"{problem}; choose from {', '.join(prepare.DATASETS)}")
  if importlib.util.find_spec("tensorflow") is None:
    raise ModuleNotFoundError("preparing TFDS datasets needs TensorFlow: pip install "
                              "tensorflow-cpu (make installs it)")
  import tensorflow_datasets as tfds
  data_dir = prepare.default_data_dir(_DATA_DIR.value)
  download_dir = os.path.expanduser(_DOWNLOAD_DIR.value or os.path.join(data_dir, "downloads"))
  manual_dir = _MANUAL_DIR.value and os.path.expanduser(_MANUAL_DIR.value)
  builders = [tfds.builder(name, data_dir=data_dir) for name in names]
  if manual_dir is not None:
    problems = prepare.missing_manual_files([b for b in builders if not b.is_prepared()],
                                            manual_dir)
    if problems:
      raise FileNotFoundError("missing raw files: " + "; ".join(problems))
  sizes = prepare.prepare(builders, download_dir, manual_dir,
                          log=lambda line: print(line, flush=True),
                          max_examples_per_split=_MAX_EXAMPLES.value)
  print(f"Ready in {data_dir}: "
        + "; ".join(f"{name} ({prepare.splits_text(s)})" for name, s in sizes.items()))


if __name__ == "__main__":
  cli.run(main)
