"""scripts/prepare_data.py, run offline from the raw files in ../shared/raw.

Text is checked against the reference prepared copy in ../shared/tensorflow_datasets, images
against the pixels of the raw IDX files themselves.
"""

import gzip
import hashlib
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
RAW, REFERENCE = SHARED / "raw", SHARED / "tensorflow_datasets"

needs_raw = pytest.mark.skipif(
    not (RAW.is_dir() and REFERENCE.is_dir()),
    reason=f"needs the raw download files in {RAW} and the prepared copies in {REFERENCE}")


def prepare(*args):
  return subprocess.run([sys.executable, str(REPO / "scripts" / "prepare_data.py"), *args],
                        capture_output=True, text=True, cwd=REPO, check=False)


def source(name, split, data_dir):
  return tfds.data_source(name, split=split, data_dir=str(data_dir), download=False)


def image_digests(name, split, data_dir):
  """The SHA-256 of every image of a prepared split."""
  src = source(name, split, data_dir)
  return {hashlib.sha256(src[i]["image"].tobytes()).hexdigest() for i in range(len(src))}


def raw_test_digests(name):
  """The SHA-256 of every image of a raw IDX test file (16-byte header, then 28x28 uint8)."""
  with gzip.open(RAW / name / "t10k-images-idx3-ubyte.gz") as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28 * 28)
  return {hashlib.sha256(image.tobytes()).hexdigest() for image in images}


@pytest.mark.e2e
@needs_raw
def test_prepared_datasets_match_references_and_fashion_mnist_is_not_mnist(tmp_path):
  """All three in one call (each subprocess pays a TensorFlow import): tiny_shakespeare equals
  its reference; MNIST and Fashion-MNIST are each their own.

  The pitfall: both image sets in one call with one --download_dir base, whose extractions TFDS
  keys by file name alone, and MNIST and Fashion-MNIST share their file names. The raw files
  are read whole either way; only the first 32 examples per split are encoded (a full
  preparation of both is ~35 s of PNG encoding). tiny_shakespeare's raw file lies in its own
  subdirectory of --manual_dir, and is one example per split.
  """
  args = ["--datasets=tiny_shakespeare,mnist,fashion_mnist", f"--manual_dir={RAW}",
          f"--data_dir={tmp_path / 'data'}", f"--download_dir={tmp_path / 'downloads'}",
          "--max_examples_per_split=32"]
  run = prepare(*args)
  assert run.returncode == 0, run.stderr[-3000:]
  assert ("tiny_shakespeare (train=1, validation=1, test=1); mnist (train=32, test=32); "
          "fashion_mnist (train=32, test=32)") in run.stdout
  for split in ("train", "validation", "test"):
    prepared = source("tiny_shakespeare", split, tmp_path / "data")
    reference = source("tiny_shakespeare", split, REFERENCE)
    assert len(prepared) == len(reference) == 1
    assert prepared[0]["text"] == reference[0]["text"], split
  # Reading the raw files (not the 10k-image reference copies, ~4 s) keeps the test fast.
  reference = {name: raw_test_digests(name) for name in ("mnist", "fashion_mnist")}
  for name, other in (("mnist", "fashion_mnist"), ("fashion_mnist", "mnist")):
    prepared = image_digests(name, "test", tmp_path / "data")
    assert len(prepared) > 1 and prepared <= reference[name], name  # each image is its own ...
    assert not prepared & reference[other], name  # ... and none is the other dataset's.
  again = prepare(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "already prepared" in again.stdout


def test_unknown_dataset_is_a_clear_error(tmp_path):
  run = prepare("--datasets=mnist,imagenet", f"--data_dir={tmp_path / 'data'}")
  assert run.returncode != 0
  assert run.stderr.strip() == ("prepare_data.py: unknown dataset 'imagenet'; choose from "
                                "tiny_shakespeare, mnist, fashion_mnist, cifar10")
  assert not any(tmp_path.iterdir())


@needs_raw
def test_missing_raw_file_fails_before_preparing(tmp_path):
  # Without this check TFDS would try to download cifar10 and, offline, retry for minutes.
  run = prepare("--datasets=tiny_shakespeare,cifar10", f"--manual_dir={RAW}",
                f"--data_dir={tmp_path / 'data'}")
  assert run.returncode != 0
  assert "cifar10 needs cifar-10-binary.tar.gz in" in run.stderr
  assert not any(tmp_path.iterdir())
