"""Orbax checkpoints: train state, Grain iterator state, config and dataset metadata together.

Saves are asynchronous; a step directory appears only once complete (Orbax writes to a temporary
directory and renames), so an interrupted save never corrupts the last good checkpoint. A step
damaged later (a truncated copy, a full disk) is detected on restore: training resumes from the
newest readable step and moves the damaged ones aside (`set_aside`), never deleting them.
A save that fails (a full disk) raises `SaveError` at the next `save`, `wait` or `close`: one line
naming the step and the last complete checkpoint, where a rerun resumes.
"""

import errno
import json
import os
import re
import weakref

import grain.python as grain
import jax
import orbax.checkpoint as ocp
from etils import epath

ITEMS = ("state", "data", "config", "metadata")


UNREADABLE = "checkpoints_unreadable"


def manager(workdir: str, keep: int = 3, every: int = 0, read_only: bool = False):
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir={workdir} is a file, not a directory; give the run's "
                             "directory (train.py creates it when missing)")
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                           save_interval_steps=0, max_to_keep=None)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=max(every, 1))
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options, item_names=ITEMS)


class SaveError(OSError):
  """A checkpoint could not be written (a full disk, say): its partial files are never resumed
  from; a rerun resumes from the last complete checkpoint."""


# Per manager: [the step of its newest save, whether that save's failure has been raised].
_saves = weakref.WeakKeyDictionary()


def save(mngr, step: int, state, data_iter, config, metadata: dict, force=False) -> bool:
  """Starts an asynchronous save of `step`, once the previous save is complete (a failed one
  raises `SaveError` here)."""
  wait(mngr)
  try:
    saved = mngr.save(step, force=force, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.PyGrainCheckpointSave(data_iter),
        config=ocp.args.JsonSave(config.to_dict()),
        metadata=ocp.args.JsonSave(metadata)))
  except (OSError, ValueError) as e:  # Tensorstore reports a full disk as a ValueError.
    raise _save_error(mngr, step, e) from e
  if saved:
    _saves[mngr] = [step, False]
  return saved


def wait(mngr) -> None:
  """Blocks until the manager's asynchronous save is complete; raises `SaveError` if it failed
  (once: Orbax raises a failed save again at every later wait)."""
  try:
    mngr.wait_until_finished()
  except (OSError, ValueError) as e:
    pending = _saves.setdefault(mngr, [None, False])
    if not pending[1]:
      pending[1] = True
      raise _save_error(mngr, pending[0], e) from e


def close(mngr) -> None:
  """`wait`, then closes the manager (left open after a failed save: Orbax's close would raise
  its error again)."""
  wait(mngr)
  if not _saves.get(mngr, [None, False])[1]:
    mngr.close()


def _save_error(mngr, step, error) -> SaveError:
  code = getattr(error, "errno", None) or next(
      (int(m) for m in re.findall(r"os_error_code='?(\d+)", str(error))), None)
  why = os.strerror(code) if code else reason(error)
  try:
    done = [s for s in mngr.all_steps(read=True) if s != step]
  except Exception:  # pylint: disable=broad-except  (the message must not fail in turn)
    done = []
  fix = "free space" if code in (errno.ENOSPC, errno.EDQUOT) else "fix that"
  then = (f"the last complete checkpoint is step {max(done)}: {fix} and rerun to resume from it"
          if done else f"no checkpoint is complete yet: {fix} and rerun to start afresh")
  what = "a checkpoint" if step is None else f"checkpoint step {step}"
  out = SaveError(f"{what} could not be saved in {mngr.directory} ({why}); {then}")
  out.errno = code
  return out


def restore(mngr, step: int, abstract_state, data_iter=None):
  """The state at `step` (sharded like `abstract_state`), restoring `data_iter` in place."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data"] = grain.PyGrainCheckpointRestore(data_iter)
  return mngr.restore(step, args=ocp.args.Composite(**items))["state"]


def restore_params(mngr, step: int, abstract_params):
  """Only the parameters at `step`, as `abstract_params` (shapes and shardings), which may name
  a subset of the saved ones; the optimizer state, whatever its structure, is not read."""
  item = {"params": abstract_params}
  out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True)))
  return out["state"]["params"]


def check_process_count(mngr, step: int) -> None:
  """Raises unless the checkpoint's data positions were saved by this run's process count
  (Grain saves one per process; another count would otherwise fail deep in Grain, or be taken
  for an unreadable checkpoint)."""
  data = os.path.join(str(mngr.directory), str(step), "data")
  saved = {int(m.group(1)) for m in map(re.compile(r"process_\d+-of-(\d+)\.json").fullmatch,
                                        os.listdir(data) if os.path.isdir(data) else ()) if m}
  if saved and saved != {jax.process_count()}:
    raise ValueError(f"checkpoint step {step} in {mngr.directory} was saved by {min(saved)} "
                     f"processes, this run has {jax.process_count()}: resume with "
                     f"--num_processes={min(saved)} (each process's data position is saved)")


def read_json(mngr, step: int) -> tuple[dict, dict]:
  """The (config dict, dataset metadata) saved at `step`."""
  out = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore(),
                                                   metadata=ocp.args.JsonRestore()))
  return out["config"], out["metadata"]


def param_metadata(workdir: str, step: int):
  """Shapes and dtypes of the saved parameters (read from the checkpoint's metadata only)."""
  path = epath.Path(os.path.abspath(workdir)) / "checkpoints" / str(step) / "state"
  return ocp.StandardCheckpointHandler().metadata(path)["params"]


def reason(error: BaseException, limit: int = 160) -> str:
  """A one-line summary of why a checkpoint could not be read."""
  text = " ".join(f"{type(error).__name__}: {error}".split())
  return text if len(text) <= limit else text[:limit - 3] + "..."


def set_aside(workdir: str, steps) -> list[str]:
  """Moves unreadable step directories to <workdir>/checkpoints_unreadable/ (never deletes)."""
  moved = []
  for step in steps:
    src = os.path.join(workdir, "checkpoints", str(step))
    dst = os.path.join(workdir, UNREADABLE, str(step))
    n = 1
    while os.path.exists(dst):
      dst, n = os.path.join(workdir, UNREADABLE, f"{step}.{n}"), n + 1
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    os.replace(src, dst)
    moved.append(dst)
  return moved


class WorkdirError(ValueError):
  """The workdir has no usable checkpoint."""


def checked_step(workdir: str, mngr, step: int | None) -> int:
  """`step`, or the latest, after checking that it exists: one clear error otherwise."""
  if not epath.Path(workdir).exists():
    raise WorkdirError(f"--workdir={workdir} does not exist")
  steps = mngr.all_steps()
  if not steps:
    raise WorkdirError(f"--workdir={workdir} holds no checkpoint (expected "
                       f"{os.path.join(workdir, 'checkpoints')}/<step>/); train first")
  if step is None:
    return max(steps)
  if step not in steps:
    raise WorkdirError(f"--step={step} is not saved in {workdir}; saved steps: "
                       f"{', '.join(map(str, sorted(steps)))}")
  return step


def abstract(tree, shardings):
  """Shapes and dtypes of `tree` placed like `shardings` (a tree of the same structure): what
  to restore into, whatever layout the checkpoint was saved from."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
                      shardings)


def dump_json(path: str, obj) -> None:
  """Writes JSON atomically (temp file + rename), so a crash never leaves half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)
