"""scripts/prepare_data.py, run offline from the raw files in ../shared/raw.

Each preparation is checked against the reference prepared copy in ../shared/tensorflow_datasets.
"""

import hashlib
import pathlib
import subprocess
import sys

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


def image_digest(name, split, data_dir, n=8):
  """SHA-256 of the first `n` images of a split."""
  src = source(name, split, data_dir)
  return hashlib.sha256(b"".join(src[i]["image"].tobytes() for i in range(n))).hexdigest()


@needs_raw
def test_tiny_shakespeare_matches_reference(tmp_path):
  # The raw file lies directly in --manual_dir here (no per-dataset subdirectory).
  args = ["--datasets=tiny_shakespeare", f"--manual_dir={RAW / 'tiny_shakespeare'}",
          f"--data_dir={tmp_path}"]
  run = prepare(*args)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "train=1, validation=1, test=1" in run.stdout
  for split in ("train", "validation", "test"):
    prepared = source("tiny_shakespeare", split, tmp_path)
    reference = source("tiny_shakespeare", split, REFERENCE)
    assert len(prepared) == len(reference) == 1
    assert prepared[0]["text"] == reference[0]["text"], split
  again = prepare(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "already prepared" in again.stdout


@needs_raw
def test_fashion_mnist_is_not_mnist(tmp_path):
  # The pitfall: both in one call with one --download_dir base, whose extractions TFDS keys by
  # file name alone, and MNIST and Fashion-MNIST share their file names.
  run = prepare("--datasets=mnist,fashion_mnist", f"--manual_dir={RAW}",
                f"--data_dir={tmp_path / 'data'}", f"--download_dir={tmp_path / 'downloads'}")
  assert run.returncode == 0, run.stderr[-3000:]
  assert "mnist (train=60000, test=10000); fashion_mnist (train=60000, test=10000)" in run.stdout
  for split in ("train", "test"):
    prepared = {name: image_digest(name, split, tmp_path / "data")
                for name in ("mnist", "fashion_mnist")}
    assert prepared["fashion_mnist"] != prepared["mnist"], split
    for name, digest in prepared.items():
      assert digest == image_digest(name, split, REFERENCE), (name, split)


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
