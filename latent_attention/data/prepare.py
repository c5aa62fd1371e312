"""Preparing TFDS datasets in ArrayRecord format, so `tfds.data_source(name)` can read them.

Used by scripts/prepare_data.py and, when a dataset is missing and its download host answers, by
the input pipeline itself (`ensure_prepared`). TFDS's builders import TensorFlow to prepare (not
to read), which is why `tensorflow-cpu` is a dependency.
"""

import os
import urllib.request

from absl import logging

DATASETS = ("tiny_shakespeare", "mnist", "fashion_mnist", "cifar10")


class DatasetMissingError(FileNotFoundError):
  """A TFDS dataset is not prepared in the data dir and could not be prepared."""


def default_data_dir(data_dir: str | None = None) -> str:
  return os.path.expanduser(data_dir or os.environ.get("TFDS_DATA_DIR")
                            or "~/tensorflow_datasets")


def manual_dir_for(name: str, manual_dir: str | None) -> str | None:
  """`<manual_dir>/<name>` when that directory exists, else `manual_dir` itself."""
  if manual_dir is None:
    return None
  per_dataset = os.path.join(manual_dir, name)
  return per_dataset if os.path.isdir(per_dataset) else manual_dir


def missing_manual_files(builders, manual_dir: str) -> list[str]:
  """One line per dataset whose raw files are not all in `manual_dir`.

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
  return problems


def prepare(builders, download_dir: str, manual_dir: str | None = None, log=print,
            max_examples_per_split: int | None = None) -> dict:
  """Prepares each TFDS builder in ArrayRecord format; returns {name: {split: num_examples}}.

  `max_examples_per_split` keeps only the first examples of each split (smoke tests).
  """
  import tensorflow_datasets as tfds
  sizes = {}
  for i, builder in enumerate(builders, 1):
    name = builder.name
    tag = f"[{i}/{len(builders)}] {name} {builder.version}"
    if builder.is_prepared():
      log(f"{tag}: already prepared in {builder.data_dir}, skipped")
    else:
      log(f"{tag}: preparing into {builder.data_dir}")
      # TFDS extracts a file taken from manual_dir into <download_dir>/extracted/GZIP.<file name>,
      # keyed by the file name alone, and reuses any extraction already there. MNIST and
      # Fashion-MNIST share their four file names, so with one download dir for both, the second
      # one silently reuses the first one's extractions (a "fashion_mnist" of MNIST images).
      # Hence one download dir per dataset.
      config = tfds.download.DownloadConfig(manual_dir=manual_dir_for(name, manual_dir),
                                            max_examples_per_split=max_examples_per_split)
      builder.download_and_prepare(download_dir=os.path.join(download_dir, name),
                                   download_config=config, file_format="array_record")
    sizes[name] = {split: info.num_examples for split, info in builder.info.splits.items()}
    log(f"{tag}: {splits_text(sizes[name])}")
  return sizes


def splits_text(splits: dict) -> str:
  return ", ".join(f"{split}={n}" for split, n in splits.items())


def reachable(urls, timeout: float = 5.0) -> bool:
  """Whether the first download URL answers; offline, TFDS would retry for minutes instead."""
  if not urls:
    return False
  try:
    with urllib.request.urlopen(urllib.request.Request(urls[0], method="HEAD"), timeout=timeout):
      return True
  except OSError:
    return False


def ensure_prepared(name: str, data_dir: str | None = None):
  """The TFDS builder of `name`, prepared first (download + ArrayRecord) when it is not yet.

  Offline, or in a multi-process run (where processes would race on one data dir), a missing
  dataset is a one-line error that says how to prepare it from raw files.
  """
  import tensorflow_datasets as tfds  # heavy import, only for TFDS-backed datasets.
  data_dir = default_data_dir(data_dir)
  builder = tfds.builder(name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  how = (f"prepare it from the raw download files with `python scripts/prepare_data.py "
         f"--datasets={name} --data_dir={data_dir} --manual_dir=DIR`, or point TFDS_DATA_DIR "
         "at a prepared copy")
  import jax
  if jax.process_count() > 1:
    raise DatasetMissingError(f"TFDS dataset {name!r} is not prepared in {data_dir}; in a "
                              f"multi-process run, {how} before launching")
  urls = list(builder.url_infos or {})
  if not reachable(urls):
    source = ", ".join(urls) or "its source"
    raise DatasetMissingError(f"TFDS dataset {name!r} is not prepared in {data_dir} and "
                              f"cannot be downloaded (no answer from {source}); {how}")
  logging.info("TFDS dataset %r is not prepared in %s: downloading and preparing it once",
               name, data_dir)
  prepare([builder], os.path.join(data_dir, "downloads"), log=logging.info)
  return builder
