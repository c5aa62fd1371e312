"""Command-line entry points: a user error is one line on stderr, a bug keeps its traceback.

Every script calls `cli.run(main)` instead of `absl.app.run(main)`. A bad flag, config file,
config argument, config field or workdir, a missing dataset or a non-finite loss then ends the
process with `<script>: <what is wrong, and what is allowed>` and exit status 1; `--traceback`
shows the full traceback instead. Other exceptions (bugs) propagate with their traceback.
"""

import os
import sys

import ml_collections
from absl import app, flags, logging

from latent_attention import config_files

_TRACEBACK = flags.DEFINE_bool(
    "traceback", False, "Show the full traceback of a user error (bad flag, config, workdir, "
    "data) instead of one line.")

# Raised for bad input throughout the package (config validation, workdirs, data, NaN losses).
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


def run(main, config_flag: str | None = None) -> None:
  """`app.run(main)` with one-line user errors; `config_flag` names a config_flags flag."""
  prog = os.path.basename(sys.argv[0])

  def fail(message):
    sys.exit(f"{prog}: {message}")

  def parse(argv):
    try:
      rest = flags.FLAGS(argv)
    except Exception as e:  # pylint: disable=broad-except
      if any(a in ("--traceback", "--traceback=true", "--traceback=1") for a in argv):
        raise
      fail(explain_flags(argv, config_flag) or one_line(e))
    if config_flag and not isinstance(flags.FLAGS[config_flag].value,
                                      ml_collections.ConfigDict):
      if _TRACEBACK.value:
        flags.FLAGS[config_flag].value.lock()  # re-raises the deferred load error.
      fail(explain_flags(argv, config_flag) or f"--{config_flag} could not be loaded")
    if len(rest) > 1:
      fail(f"unexpected arguments: {' '.join(rest[1:])}; flags take the form --name=value "
           f"(see {prog} --helpshort)")
    return rest

  def wrapped(argv):
    logging.set_verbosity(logging.INFO)
    quiet_library_logs()
    try:
      return main(argv)
    except USER_ERRORS as e:
      if _TRACEBACK.value:
        raise
      fail(one_line(e))

  app.run(wrapped, flags_parser=parse)


def define_distributed_flags():
  """Defines --jax_distributed, --coordinator_address, --num_processes and --process_id.

  Returns `initialize()`, for main to call before any JAX computation: with --jax_distributed
  (implied by any of the other three) it starts JAX's multi-process runtime with the values
  given; JAX detects the others on SLURM, Open MPI and Cloud TPU slices.
  """
  enable = flags.DEFINE_bool(
      "jax_distributed", False, "Run as one process of a multi-process job: call "
      "jax.distributed.initialize() first (implied by the next three flags).")
  address = flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0's coordinator service, the same "
      "for every process (default: detected on SLURM, Open MPI, a Cloud TPU slice).")
  num_processes = flags.DEFINE_integer(
      "num_processes", None, "Processes in the job (default: detected).", lower_bound=1)
  process_id = flags.DEFINE_integer(
      "process_id", None, "This process's index, 0..num_processes-1 (default: detected).",
      lower_bound=0)

  def initialize() -> None:
    given = {"coordinator_address": address.value, "num_processes": num_processes.value,
             "process_id": process_id.value}
    if not enable.value and all(v is None for v in given.values()):
      return
    check_distributed(**given)
    import jax  # pylint: disable=import-outside-toplevel  (user errors before it stay fast)
    try:
      jax.distributed.initialize(**given)
    except ValueError as e:  # JAX names a value that neither the flags nor the cluster gave.
      raise ValueError(f"--jax_distributed: {one_line(e)} No SLURM, Open MPI or Cloud TPU "
                       "environment was detected: pass --coordinator_address=host:port, "
                       "--num_processes and --process_id") from e

  return initialize


def check_distributed(coordinator_address, num_processes, process_id) -> None:
  """One-line errors for distributed flags that cannot work together."""
  if coordinator_address is not None:
    host, sep, port = coordinator_address.rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
      raise ValueError(f"--coordinator_address={coordinator_address} is invalid: expected "
                       "host:port with a port in 1..65535, e.g. 10.0.0.1:8476")
  if None not in (num_processes, process_id) and process_id >= num_processes:
    raise ValueError(f"--process_id={process_id} is invalid: must be in 0..{num_processes - 1} "
                     f"(--num_processes={num_processes})")


def explain_flags(argv, name: str | None) -> str | None:
  """What is wrong with `--name=FILE[:ARG]` and its `--name.a.b=v` overrides, or None."""
  if not name:
    return None
  spec = flag_value(argv, name)
  if spec is None:
    return None
  try:
    config = config_files.load(spec)
  except Exception as e:  # pylint: disable=broad-except
    return f"--{name}={spec}: {one_line(e)}"
  for key in override_keys(argv, name):
    problem = config_files.unknown_field(config, key)
    if problem:
      return f"--{name}.{key}: {problem}"
  return None


def flag_value(argv, name: str) -> str | None:
  """The value of `--name=V` / `--name V` in argv (the last one wins), or None."""
  value = None
  for i, arg in enumerate(argv):
    for prefix in (f"--{name}", f"-{name}"):
      if arg.startswith(prefix + "="):
        value = arg[len(prefix) + 1:]
      elif arg == prefix and i + 1 < len(argv):
        value = argv[i + 1]
  return value


def override_keys(argv, name: str) -> list[str]:
  keys = []
  for arg in argv:
    for prefix in (f"--{name}.", f"-{name}."):
      if arg.startswith(prefix):
        keys.append(arg[len(prefix):].split("=", 1)[0])
  return keys


def quiet_library_logs() -> None:
  """Drops library log lines a user cannot act on; their other warnings and errors still show.

  Orbax logs every save (INFO) and warns that a reading manager is read only, TFDS logs every
  dataset-info load, recommends OpenCV for image decoding and warns about a dataset folder not
  yet prepared (the one-line error that follows says what to do); JAX logs its TPU probe.
  """
  import logging as py_logging  # absl's handler sits on the standard logging tree.
  chatty = ("/orbax/", "/tensorflow_datasets/", "/jax/_src/xla_bridge")
  noise = ("Given directory is read only", "OpenCV is not installed", "has no dataset_info.json")

  class _Filter(py_logging.Filter):

    def filter(self, record):
      if record.levelno < py_logging.WARNING and any(p in record.pathname for p in chatty):
        return False
      return not any(n in str(record.msg) for n in noise)

  logging.get_absl_handler().addFilter(_Filter())
