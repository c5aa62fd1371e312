r"""Prepares TFDS datasets in ArrayRecord format, so `tfds.data_source(name)` can read them.

  python scripts/prepare_data.py --datasets=tiny_shakespeare,mnist
  python scripts/prepare_data.py --datasets=mnist,fashion_mnist --manual_dir=../shared/raw

Offline, --manual_dir holds the raw download files under the names they have in their URLs
(input.txt, train-images-idx3-ubyte.gz, cifar-10-binary.tar.gz, ...), either directly or in a
subdirectory per dataset (DIR/<name>/). TFDS takes such a file instead of downloading it, after
checking its size and SHA-256 against the checksums it registers for the dataset. Datasets
already prepared in --data_dir are skipped. TensorFlow is needed for this step only.
"""

import importlib.util
import os
import sys

from absl import app, flags

DATASETS = ("tiny_shakespeare", "mnist", "fashion_mnist", "cifar10")

_DATASETS = flags.DEFINE_list("datasets", ["tiny_shakespeare"],
                              f"Comma-separated datasets to prepare: {', '.join(DATASETS)}.")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "TFDS data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Offline: directory of raw download files, directly or in <dir>/<name>/.")
_DOWNLOAD_DIR = flags.DEFINE_string(
    "download_dir", None, "Downloads and extractions, one subdirectory per dataset "
    "(default <data_dir>/downloads).")


def import_tfds():
  """tensorflow_datasets, with a clear error when TensorFlow (needed to prepare) is missing."""
  if importlib.util.find_spec("tensorflow") is None:
    sys.exit("prepare_data.py needs TensorFlow to prepare TFDS datasets: "
             "pip install tensorflow-cpu")
  import tensorflow_datasets as tfds
  return tfds


def manual_dir_for(name: str, manual_dir: str | None) -> str | None:
  """`<manual_dir>/<name>` when that directory exists, else `manual_dir` itself."""
  if manual_dir is None:
    return None
  per_dataset = os.path.join(manual_dir, name)
  return per_dataset if os.path.isdir(per_dataset) else manual_dir


def prepare(names, data_dir: str, download_dir: str, manual_dir: str | None = None) -> dict:
  """Prepares each dataset in ArrayRecord format; returns {name: {split: num_examples}}."""
  tfds = import_tfds()
  builders = [tfds.builder(name, data_dir=data_dir) for name in names]
  if manual_dir is not None:
    check_manual_files([b for b in builders if not b.is_prepared()], manual_dir)
  sizes = {}
  for i, builder in enumerate(builders, 1):
    name = builder.name
    tag = f"[{i}/{len(names)}] {name} {builder.version}"
    if builder.is_prepared():
      print(f"{tag}: already prepared in {builder.data_dir}, skipped", flush=True)
    else:
      print(f"{tag}: preparing into {builder.data_dir}", flush=True)
      # TFDS extracts a file taken from manual_dir into <download_dir>/extracted/GZIP.<file name>,
      # keyed by the file name alone, and reuses any extraction already there. MNIST and
      # Fashion-MNIST share their four file names, so with one download dir for both, the second
      # one silently reuses the first one's extractions (a "fashion_mnist" of MNIST images).
      # Hence one download dir per dataset.
      config = tfds.download.DownloadConfig(manual_dir=manual_dir_for(name, manual_dir))
      builder.download_and_prepare(download_dir=os.path.join(download_dir, name),
                                   download_config=config, file_format="array_record")
    sizes[name] = {split: info.num_examples for split, info in builder.info.splits.items()}
    print(f"{tag}: {_splits_text(sizes[name])}", flush=True)
  return sizes


def check_manual_files(builders, manual_dir: str):
  """Exits naming every raw file missing from `manual_dir`, before anything is prepared.

  TFDS looks a file up as <manual_dir>/<registered file name> (the URL's basename) and downloads
  it when absent: offline, that means minutes of retries and a connection-error traceback.
  """
  problems = []
  for builder in builders:
    directory = manual_dir_for(builder.name, manual_dir)
    missing = {url: info.filename for url, info in (builder.url_infos or {}).items()
               if not os.path.exists(os.path.join(directory, info.filename))}
    if missing:
      problems.append(f"{builder.name} needs {', '.join(missing.values())} in {directory} "
                      f"(from {', '.join(missing)})")
  if problems:
    sys.exit("prepare_data.py: missing raw files: " + "; ".join(problems))


def _splits_text(splits: dict) -> str:
  return ", ".join(f"{split}={n}" for split, n in splits.items())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  names = _DATASETS.value
  unknown = [n for n in names if n not in DATASETS]
  if unknown or not names:
    problem = f"unknown dataset {', '.join(map(repr, unknown))}" if unknown else "no dataset given"
    sys.exit(f"prepare_data.py: {problem}; choose from {', '.join(DATASETS)}")
  data_dir = os.path.expanduser(
      _DATA_DIR.value or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")
  download_dir = os.path.expanduser(_DOWNLOAD_DIR.value or os.path.join(data_dir, "downloads"))
  manual_dir = _MANUAL_DIR.value and os.path.expanduser(_MANUAL_DIR.value)
  sizes = prepare(names, data_dir, download_dir, manual_dir)
  print(f"Ready in {data_dir}: "
        + "; ".join(f"{name} ({_splits_text(s)})" for name, s in sizes.items()))


if __name__ == "__main__":
  app.run(main)
